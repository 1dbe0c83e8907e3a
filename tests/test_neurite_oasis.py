"""neurite-oasis: write a synthetic layout, read it back through the public reader."""

import json
import shutil

import numpy as np
import pytest

from jaxreg import io
from jaxreg.data import neurite_oasis
from jaxreg.data.learn2reg import SPLITS

SHAPE = (32, 20, 16)
SIZES = (4, 1, 2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return neurite_oasis.write_neurite_oasis(tmp_path_factory.mktemp("oasis"), num_subjects=7, shape=SHAPE, seed=3)


def _ids(n):
    return [f"OASIS_OAS1_{i:04d}_MR1" for i in range(1, n + 1)]


def _split(ds):
    return {s: ds.subjects(s) for s in SPLITS}


def test_layout_written(root):
    assert sorted(p.name for p in root.iterdir()) == _ids(7)
    image = io.load_nifti(root / _ids(7)[0] / "aligned_norm.nii.gz").array
    seg = io.load_nifti(root / _ids(7)[0] / "aligned_seg35.nii.gz").array
    assert image.shape == seg.shape == SHAPE and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and np.all(image[seg == 0] == 0)
    assert 0 < seg.max() <= 35 and len(np.unique(seg)) > 10


def test_split_disjoint_covering_and_seeded(root):
    ds = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, seed=0)
    split = _split(ds)
    assert tuple(len(split[s]) for s in SPLITS) == SIZES
    everything = [i for s in SPLITS for i in split[s]]
    assert len(set(everything)) == 7 and set(everything) == set(_ids(7)) == set(ds.subject_ids)
    # The rule, re-derived: shuffle the sorted ids with the seeded generator, cut in order.
    order = [_ids(7)[i] for i in np.random.default_rng(0).permutation(7)]
    assert split == {"train": tuple(order[:4]), "val": tuple(order[4:5]), "test": tuple(order[5:])}
    assert _split(neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, seed=0)) == split
    assert _split(neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, seed=1)) != split
    # A partial split leaves subjects out but they stay loadable.
    small = neurite_oasis.open_neurite_oasis(root, split_sizes=(2, 1, 1))
    assert sum(len(small.subjects(s)) for s in SPLITS) == 4 and len(small.subject_ids) == 7


def test_split_file_written_then_read(root, tmp_path):
    first = neurite_oasis.open_neurite_oasis(root, workdir=tmp_path / "w", split_sizes=SIZES, seed=0)
    path = tmp_path / "w" / "oasis_split.json"
    stored = json.loads(path.read_text())
    assert {s: tuple(stored[s]) for s in SPLITS} == _split(first) and stored["seed"] == 0
    assert first.split_file == path and [p.name for p in path.parent.iterdir()] == ["oasis_split.json"]
    again = neurite_oasis.open_neurite_oasis(root, workdir=tmp_path / "w", split_sizes=SIZES, seed=5)
    assert _split(again) == _split(first)
    assert _split(neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, seed=5)) != _split(first)
    stored["test"].append("OASIS_OAS1_0999_MR1")
    path.write_text(json.dumps(stored))
    with pytest.raises(FileNotFoundError, match="OASIS_OAS1_0999_MR1"):
        neurite_oasis.open_neurite_oasis(root, workdir=tmp_path / "w", split_sizes=SIZES)
    path.write_text(json.dumps({"train": "x"}))
    with pytest.raises(ValueError, match="list of subject ids"):
        neurite_oasis.open_neurite_oasis(root, workdir=tmp_path / "w", split_sizes=SIZES)


def test_pairs(root):
    ds = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, seed=2)
    train = ds.subjects("train")
    pairs = ds.pairs("train")
    assert len(pairs) == len(set(pairs)) == 4 * 3
    assert set(pairs) == {(f, m) for f in train for m in train if f != m}
    test = ds.subjects("test")
    assert ds.pairs("test") == ((test[0], test[1]),)
    assert ds.pairs("val") == ()  # one subject chains to no pair
    chained = neurite_oasis.open_neurite_oasis(root, split_sizes=(2, 4, 1), seed=2)
    val = chained.subjects("val")
    assert chained.pairs("val") == tuple((val[k], val[k + 1]) for k in range(3))


def test_load_pair_matches_files(root):
    ds = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES)
    fixed_id, moving_id = ds.pairs("train")[0]
    pair = ds.load_pair(fixed_id, moving_id)
    for side, sid in (("fixed", fixed_id), ("moving", moving_id)):
        image = io.load_nifti(root / sid / "aligned_norm.nii.gz")
        seg = io.load_nifti(root / sid / "aligned_seg35.nii.gz").array
        np.testing.assert_array_equal(pair[side], image.array)
        np.testing.assert_array_equal(pair[f"{side}_labels"], seg)
        assert pair[side].dtype == np.float32 and pair[f"{side}_labels"].dtype == np.int32
    np.testing.assert_array_equal(pair["affine"], io.load_nifti(root / fixed_id / "aligned_norm.nii.gz").affine)
    np.testing.assert_allclose(pair["spacing"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(pair["moving_spacing"], [1.0, 1.0, 1.0])
    assert pair["spacing"].dtype == np.float64 and pair["ids"] == f"{fixed_id}_{moving_id}"
    one = ds.load_image(fixed_id)
    np.testing.assert_array_equal(one["image"], pair["fixed"])


def test_resampling_shape_values_labels_and_affine(root):
    sid = _ids(7)[2]
    original = io.load_nifti(root / sid / "aligned_norm.nii.gz").array
    seg = io.load_nifti(root / sid / "aligned_seg35.nii.gz").array
    out = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, shape=(16, 16, 16)).load_image(sid)
    assert out["image"].shape == out["labels"].shape == (16, 16, 16) and out["image"].dtype == np.float32
    assert set(np.unique(out["labels"])) <= set(np.unique(seg)) and out["labels"].dtype == np.int32
    # The field of view is kept: the outer voxel edges map to the same world points (identity affine).
    np.testing.assert_allclose(out["affine"] @ [-0.5, -0.5, -0.5, 1], [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(out["affine"] @ [15.5, 15.5, 15.5, 1], [*(np.array(SHAPE) - 0.5), 1])
    np.testing.assert_allclose(out["spacing"], np.array(SHAPE) / 16)
    # Halving axes 0 and 1 puts each new voxel centre between two old ones: linear
    # interpolation there is the mean of each 2x2 block.
    half = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, shape=(16, 10, 16)).load_image(sid)
    blocks = original.reshape(16, 2, 10, 2, 16).mean(axis=(1, 3))
    np.testing.assert_allclose(half["image"], blocks, atol=1e-6)


def test_label_subset_keeps_values(root):
    sid = _ids(7)[0]
    seg = io.load_nifti(root / sid / "aligned_seg35.nii.gz").array
    out = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, labels=[2, 5]).load_image(sid)
    np.testing.assert_array_equal(out["labels"], np.where((seg == 2) | (seg == 5), seg, 0))
    assert set(np.unique(out["labels"])) <= {0, 2, 5} and (out["labels"] == 5).any()


def test_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        neurite_oasis.open_neurite_oasis(tmp_path / "nowhere")
    (tmp_path / "empty" / "OASIS_OAS1_0001_MR1").mkdir(parents=True)  # a folder without aligned_norm
    with pytest.raises(FileNotFoundError, match="no OASIS_OAS1"):
        neurite_oasis.open_neurite_oasis(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"needs 414 subjects.* has 7"):
        neurite_oasis.open_neurite_oasis(root)
    for bad in ((4, -1, 2), (4, 1)):
        with pytest.raises(ValueError, match="`split_sizes`"):
            neurite_oasis.open_neurite_oasis(root, split_sizes=bad)
    with pytest.raises(ValueError, match="`shape`"):
        neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, shape=(16, 16))
    with pytest.raises(ValueError, match="`labels`"):
        neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES, labels=[0, 2])
    ds = neurite_oasis.open_neurite_oasis(root, split_sizes=SIZES)
    with pytest.raises(ValueError, match="`split`.*'validation'"):
        ds.pairs("validation")
    with pytest.raises(ValueError, match="`subject_id`.*OASIS_OAS1_0999_MR1"):
        ds.load_pair("OASIS_OAS1_0999_MR1", _ids(7)[0])
    with pytest.raises(ValueError, match="`num_subjects`"):
        neurite_oasis.write_neurite_oasis(tmp_path / "w", num_subjects=0)


def test_missing_image_and_shape_mismatch(root, tmp_path):
    copy = shutil.copytree(root, tmp_path / "copy")
    ds = neurite_oasis.open_neurite_oasis(copy, split_sizes=SIZES)
    a, b, c = _ids(3)
    (copy / a / "aligned_norm.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"{a}/aligned_norm.nii.gz"):
        ds.load_pair(a, b)
    io.save_nifti(copy / c / "aligned_norm.nii.gz", np.zeros((32, 20, 17), np.float32))
    io.save_nifti(copy / c / "aligned_seg35.nii.gz", np.zeros((32, 20, 17), np.int16))
    with pytest.raises(ValueError, match="same shape"):
        ds.load_pair(b, c)
    io.save_nifti(copy / c / "aligned_seg35.nii.gz", np.zeros((32, 20, 16), np.int16))
    with pytest.raises(ValueError, match="image's shape"):
        ds.load_image(c)
