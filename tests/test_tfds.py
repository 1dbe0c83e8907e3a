"""TFDS builders: prepare from synthetic layouts, read back with random access, compare to the
folder readers record by record."""

import numpy as np
import pytest

from jaxreg.data import acdc, learn2reg, sources, tfds_builders


def _assert_same(record, reference):
    assert set(record) == set(reference) - {"ddf"} | ({"ddf"} & set(record))
    for key, value in record.items():
        if isinstance(value, str):
            assert value == reference[key], key
        else:
            np.testing.assert_array_equal(value, np.asarray(reference[key], value.dtype), err_msg=key)


def _compare_all(name, folder_reader, data_dir, splits):
    for split in splits:
        stored = tfds_builders.TfdsPairs(name, split, data_dir=data_dir)
        reference = sources.FolderPairs(folder_reader, split)
        assert len(stored) == len(reference) > 0, split
        for index in range(len(stored)):
            _assert_same(stored[index], reference[index])


def test_learn2reg_oasis_stores_images_and_rebuilds_pairs(tmp_path):
    root = learn2reg.write_learn2reg(tmp_path / "OASIS", task="OASIS", num_cases=6, num_val=2, shape=(16, 16, 16))
    builder = tfds_builders.prepare("learn2reg_oasis", data_dir=tmp_path / "tfds", manual_dir=root)
    assert builder.info.splits["train"].num_examples == 3  # images, not the 6 ordered pairs
    assert builder.info.metadata["pairs"]["train"] == "all_ordered"
    assert builder.info.splits["val"].num_examples == 3  # 3 chained images for 2 val pairs
    _compare_all("learn2reg_oasis", learn2reg.open_task(root), tmp_path / "tfds", ["train", "val"])


def test_learn2reg_nlst_pairs_with_keypoints(tmp_path):
    root = learn2reg.write_learn2reg(tmp_path / "NLST", task="NLST", num_cases=3, num_val=1, shape=(16, 16, 16))
    tfds_builders.prepare("learn2reg_nlst", data_dir=tmp_path / "tfds", manual_dir=root)
    _compare_all("learn2reg_nlst", learn2reg.open_task(root), tmp_path / "tfds", ["train", "val"])
    with pytest.raises(ValueError, match="splits"):
        tfds_builders.TfdsPairs("learn2reg_nlst", "test", data_dir=tmp_path / "tfds")


def test_acdc_preprocessed_pairs(tmp_path):
    root = acdc.write_acdc(tmp_path / "database", num_train=2, num_test=1)
    tfds_builders.prepare("acdc", data_dir=tmp_path / "tfds", manual_dir=root)
    _compare_all("acdc", acdc.open_acdc(root), tmp_path / "tfds", ["train", "test"])
    record = tfds_builders.TfdsPairs("acdc", "test", data_dir=tmp_path / "tfds")[0]
    assert record["fixed"].shape == (32, 128, 128) and record["ids"] == "patient101_ED_ES"


def test_synthetic_with_ground_truth(tmp_path):
    config = tfds_builders.SyntheticConfig(name="tiny_lung", anatomy="lung", shape=(16, 16, 16), num_pairs=(2, 1, 0))
    tfds_builders.prepare("jaxreg_synthetic", data_dir=tmp_path / "tfds", config=config)
    stored = tfds_builders.TfdsPairs("jaxreg_synthetic/tiny_lung", "val", data_dir=tmp_path / "tfds")
    reference = sources.SyntheticPairs(1, split="val", shape=(16, 16, 16), anatomy="lung")[0]
    _assert_same(stored[0], reference)
    assert "ddf" in stored[0] and "fixed_points" in stored[0]
    # Through the config route of the pipeline.
    via_config = sources.open_source({"source": "tfds", "name": "jaxreg_synthetic/tiny_lung",
                                      "tfds_dir": str(tmp_path / "tfds")}, "train")
    assert len(via_config) == 2


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="name"):
        tfds_builders.TfdsPairs("oasis3", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_builders.TfdsPairs("learn2reg_nlst", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        tfds_builders.prepare("acdc", data_dir=tmp_path, manual_dir=tmp_path / "missing")
