"""Learn2Reg task folders: write a synthetic layout, read it back through the public reader."""

import json

import numpy as np
import pytest

from jaxreg import io
from jaxreg.data import learn2reg
from jaxreg.data.learn2reg import write_learn2reg


@pytest.fixture(scope="module")
def oasis(tmp_path_factory):
    return write_learn2reg(tmp_path_factory.mktemp("oasis"), task="OASIS", num_cases=5, num_val=2,
                           shape=(24, 20, 16), seed=1)


@pytest.fixture(scope="module")
def nlst(tmp_path_factory):
    return write_learn2reg(tmp_path_factory.mktemp("nlst"), task="NLST", num_cases=4, num_val=1,
                           shape=(24, 20, 16), seed=2)


def test_oasis_splits_and_pair_contents(oasis):
    task = learn2reg.open_task(oasis)
    assert task.name == "OASIS" and task.shape == (24, 20, 16) and not task.paired
    assert task.pairs("val") == (("./imagesTr/OASIS_0003_0000.nii.gz", "./imagesTr/OASIS_0004_0000.nii.gz"),
                                 ("./imagesTr/OASIS_0004_0000.nii.gz", "./imagesTr/OASIS_0005_0000.nii.gz"))
    # Unpaired training: every ordered pair of the subjects not used for validation.
    assert set(task.pairs("train")) == {("./imagesTr/OASIS_0001_0000.nii.gz", "./imagesTr/OASIS_0002_0000.nii.gz"),
                                        ("./imagesTr/OASIS_0002_0000.nii.gz", "./imagesTr/OASIS_0001_0000.nii.gz")}
    pair = task.load_pair(*task.pairs("val")[0])
    written = io.load_nifti(oasis / "labelsTr" / "OASIS_0003_0000.nii.gz").array
    np.testing.assert_array_equal(pair["fixed_labels"], written)
    assert pair["fixed"].shape == pair["moving"].shape == (24, 20, 16) and pair["fixed"].dtype == np.float32
    assert pair["fixed_labels"].dtype == np.int32 and pair["fixed_labels"].max() >= 2
    np.testing.assert_array_equal(pair["fixed_mask"], (written > 0).astype(np.uint8))
    np.testing.assert_allclose(pair["spacing"], [1.0, 1.0, 1.0])
    assert pair["ids"] == "0003_0004" and "fixed_points" not in pair


def test_nlst_keypoints_masks_and_spacing(nlst):
    task = learn2reg.open_task(nlst)
    assert task.paired and task.pairs("train") == tuple(
        (f"./imagesTr/NLST_{c:04d}_0000.nii.gz", f"./imagesTr/NLST_{c:04d}_0001.nii.gz") for c in (1, 2, 3))
    assert task.pairs("val") == (("./imagesTr/NLST_0004_0000.nii.gz", "./imagesTr/NLST_0004_0001.nii.gz"),)
    assert task.pairs("test") == ()
    pair = task.load_pair(*task.pairs("val")[0])
    np.testing.assert_allclose(pair["spacing"], [1.5, 1.5, 1.5])
    csv = np.loadtxt(nlst / "keypointsTr" / "NLST_0004_0001.csv", delimiter=",")
    np.testing.assert_allclose(pair["moving_points"], csv)
    assert pair["fixed_points"].shape == pair["moving_points"].shape == (64, 3)
    assert "fixed_labels" not in pair and pair["fixed_mask"].any()


def test_missing_and_malformed_inputs(tmp_path, nlst):
    with pytest.raises(FileNotFoundError, match="not found"):
        learn2reg.open_task(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"\*_dataset.json"):
        learn2reg.open_task(tmp_path)
    (tmp_path / "X_dataset.json").write_text(json.dumps({"name": "X", "tensorImageShape": {"0": [4, 4, 4]},
                                                         "training": [], "registration_val": [{"fixed": "a"}]}))
    with pytest.raises(ValueError, match="'fixed' and 'moving'"):
        learn2reg.open_task(tmp_path)
    task = learn2reg.open_task(nlst)
    with pytest.raises(ValueError, match="`split`.*'validation'"):
        task.pairs("validation")
    with pytest.raises(FileNotFoundError, match="NLST_0099_0000"):
        task.load_pair("./imagesTr/NLST_0099_0000.nii.gz", "./imagesTr/NLST_0001_0001.nii.gz")


def test_shape_mismatch_and_bad_keypoints(tmp_path):
    root = write_learn2reg(tmp_path / "t", task="NLST", num_cases=3, num_val=1, shape=(16, 16, 16), seed=0)
    io.save_nifti(root / "imagesTr" / "NLST_0001_0001.nii.gz", np.zeros((16, 16, 17), np.float32))
    task = learn2reg.open_task(root)
    with pytest.raises(ValueError, match=r"mask .*NLST_0001_0001.*image.s shape"):
        task.load_pair(*task.pairs("train")[0])
    io.save_nifti(root / "masksTr" / "NLST_0001_0001.nii.gz", np.ones((16, 16, 17), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        task.load_pair(*task.pairs("train")[0])
    (root / "keypointsTr" / "NLST_0002_0000.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="3 coordinates"):
        task.load_pair(*task.pairs("train")[1])
