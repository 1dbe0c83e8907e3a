"""Tests of jaxreg.io: NIfTI round trips, header checks, atomic writes, Learn2Reg files."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from jaxreg import io as jio


def test_nifti_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[0.7, 0, 0, -10], [0, 1.5, 0, 3], [0, 0, 2.0, 1], [0, 0, 0, 1]])
    for name, array in [
        ("img.nii.gz", rng.normal(size=(5, 6, 7)).astype(np.float32)),
        ("img.nii", rng.normal(size=(4, 3, 2, 2))),
        ("lab.nii.gz", rng.integers(0, 36, size=(5, 4, 3))),  # int64 -> stored as int32
        ("mask.nii.gz", rng.uniform(size=(3, 4, 5)) > 0.5),  # bool -> uint8
    ]:
        path = tmp_path / name
        jio.save_nifti(path, array, affine)
        vol = jio.load_nifti(path)
        np.testing.assert_array_equal(vol.array, array)
        np.testing.assert_allclose(vol.affine, affine, rtol=1e-6)
        assert vol.spacing == (np.float32(0.7), np.float32(1.5), np.float32(2.0))
        as_float = jio.load_nifti(path, dtype=np.float64).array
        assert as_float.dtype == np.float64
        np.testing.assert_array_equal(as_float, nib.load(path).get_fdata())
    assert jio.load_nifti(tmp_path / "lab.nii.gz").array.dtype == np.int32
    assert jio.load_nifti(tmp_path / "mask.nii.gz").array.dtype == np.uint8
    jio.save_nifti(tmp_path / "eye.nii.gz", np.zeros((2, 2, 2), np.float16))  # float16 -> float32, identity
    vol = jio.load_nifti(tmp_path / "eye.nii.gz")
    assert vol.array.dtype == np.float32 and (vol.affine == np.eye(4)).all()


def _written_by_nibabel(tmp_path, image_of):
    """The bytes ``nib.save`` writes for an uncompressed ``.nii`` of a fresh image."""
    nib.save(image_of(), tmp_path / "reference.nii")
    return (tmp_path / "reference.nii").read_bytes()


@pytest.mark.parametrize("array", [
    np.random.default_rng(2).normal(size=(9, 8, 7, 3)).astype(np.float32),  # a field
    np.random.default_rng(3).integers(-5, 300, size=(9, 8, 7)).astype(np.int16),  # labels
    np.random.default_rng(4).normal(size=(5, 4, 3)),  # float64
])
def test_nii_gz_is_one_gzip_stream_of_the_bytes_nib_save_writes(tmp_path, array):
    affine = np.array([[0.0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.5, 0, -5], [0, 0, 0, 1]])
    jio.save_nifti(tmp_path / "x.nii.gz", array, affine)
    raw = (tmp_path / "x.nii.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # gzip
    assert gzip.decompress(raw) == _written_by_nibabel(tmp_path, lambda: nib.Nifti1Image(array, affine))
    back = nib.load(tmp_path / "x.nii.gz")  # nibabel's own reader (not jaxreg's)
    assert back.get_data_dtype() == array.dtype
    np.testing.assert_array_equal(np.asarray(back.dataobj), array)
    np.testing.assert_allclose(back.affine, affine)


def test_save_image_keeps_the_header_and_itk_reads_it(tmp_path):
    field = np.random.default_rng(5).normal(size=(6, 5, 4, 1, 3)).astype(np.float32)
    affine = np.diag([1.2, 0.9, 2.5, 1.0])

    def image():
        img = nib.Nifti1Image(field, affine)
        img.header.set_intent("vector")
        img.set_qform(affine, code=1)
        return img

    jio.save_image(tmp_path / "warp.nii.gz", image())
    assert gzip.decompress((tmp_path / "warp.nii.gz").read_bytes()) == _written_by_nibabel(tmp_path, image)
    sitk = pytest.importorskip("SimpleITK")
    read = sitk.ReadImage(str(tmp_path / "warp.nii.gz"))
    assert read.GetNumberOfComponentsPerPixel() == 3 and read.GetSpacing() == pytest.approx((1.2, 0.9, 2.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), field[:, :, :, 0].transpose(2, 1, 0, 3))


def test_isal_writes_and_the_stdlib_fallback_writes_the_same_nifti(tmp_path, monkeypatch):
    pytest.importorskip("isal")
    assert jio._igzip_threaded is not None  # the fast writer is the one in use
    array = np.random.default_rng(6).normal(size=(10, 9, 8, 3)).astype(np.float32)
    jio.save_nifti(tmp_path / "isal.nii.gz", array)
    monkeypatch.setattr(jio, "_igzip_threaded", None)  # as without isal
    jio.save_nifti(tmp_path / "stdlib.nii.gz", array)
    assert (gzip.decompress((tmp_path / "isal.nii.gz").read_bytes())
            == gzip.decompress((tmp_path / "stdlib.nii.gz").read_bytes()))
    np.testing.assert_array_equal(jio.load_nifti(tmp_path / "isal.nii.gz").array, array)


def test_disp_round_trip_is_what_the_evaluator_reads(tmp_path):
    rng = np.random.default_rng(1)
    ddf = rng.normal(size=(6, 5, 4, 3))
    path = tmp_path / jio.disp_filename(101, 101, task_long=True)
    jio.save_disp(path, ddf)
    back = jio.load_disp(path)
    assert back.shape == (6, 5, 4, 3) and back.dtype == np.float64
    np.testing.assert_array_equal(back, ddf.astype(np.float32))
    # the official evaluation: nib.load(path).get_fdata(), shape compared to (D, H, W, 3)
    np.testing.assert_array_equal(nib.load(path).get_fdata(), back)
    jio.save_disp(path, ddf, dtype=np.float64)
    np.testing.assert_array_equal(jio.load_disp(path), ddf)


def test_disp_filename_rule():
    assert jio.disp_filename(1, 2) == "disp_0001_0002.nii.gz"
    assert jio.disp_filename("0395", 396) == "disp_0395_0396.nii.gz"
    long = jio.disp_filename(101, 101, task_long=True)
    assert long == "disp_0101_0000_0101_0001.nii.gz"
    assert jio.disp_filename(3, 3, task_long=True, fixed_modality=0, moving_modality=0) == (
        "disp_0003_0000_0003_0000.nii.gz"
    )
    # the evaluator takes case and modality ids from the image names by position
    fixed, moving = "./imagesTr/NLST_0101_0000.nii.gz", "./imagesTr/NLST_0101_0001.nii.gz"
    expected = f"disp_{fixed[-16:-12]}_{fixed[-11:-7]}_{moving[-16:-12]}_{moving[-11:-7]}.nii.gz"
    assert long == expected
    for bad, name in [((10000, 1), "fixed_id"), ((1, -1), "moving_id"), (("12a4", 1), "fixed_id"), ((True, 1), "fixed_id")]:
        with pytest.raises(ValueError, match=name):
            jio.disp_filename(*bad)
    with pytest.raises(ValueError, match="moving_modality"):
        jio.disp_filename(1, 2, task_long=True, moving_modality="1")


def test_load_keypoints(tmp_path):
    path = tmp_path / "NLST_0101_0000.csv"
    path.write_text("56.00000,66.00000,95.00000\n141.00000,131.00000,70.00000\n116.5,91.25,145.0\n")
    pts = jio.load_keypoints(path)
    assert pts.dtype == np.float64
    np.testing.assert_array_equal(pts, [[56, 66, 95], [141, 131, 70], [116.5, 91.25, 145]])
    np.testing.assert_array_equal(pts, np.loadtxt(path, delimiter=","))  # the evaluator's reader
    one = tmp_path / "one.csv"
    one.write_text("1,2,3\n")
    assert jio.load_keypoints(one).shape == (1, 3)
    for text in ["x,y,z\n1,2,3\n", "1,2\n3,4\n", "", "1,2,nan\n"]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match="load_keypoints"):
            jio.load_keypoints(bad)
    with pytest.raises(ValueError, match="max_points"):
        jio.load_keypoints(path, max_points=2)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        jio.load_keypoints(tmp_path / "missing.csv")


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "disp_0001_0002.nii.gz"
    old = np.ones((3, 3, 3, 3))
    jio.save_disp(path, old)
    before = path.read_bytes()
    real_save = jio._write_nifti  # what writes the (temporary) file
    seen = []

    def failing_save(img, filename):
        seen.append(os.fspath(filename))
        real_save(img, filename)
        with open(filename, "r+b") as f:  # half-written, then the process "crashes"
            f.truncate(10)
        raise RuntimeError("disk full")

    monkeypatch.setattr(jio, "_write_nifti", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        jio.save_disp(path, np.zeros((3, 3, 3, 3)))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # the temporary file is gone
    # the temporary file sits next to the target and keeps the .nii.gz extension
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0].endswith(".nii.gz") and seen[0] != str(path)
    monkeypatch.setattr(jio, "_write_nifti", real_save)
    np.testing.assert_array_equal(jio.load_disp(path), old)


def _write_header_only(path, shape, dtype):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 64)


def test_header_is_checked_before_reading(tmp_path):
    huge = tmp_path / "huge.nii"
    _write_header_only(huge, (20000, 20000, 20000), np.float32)  # 32 TB claimed, 64 bytes present
    with pytest.raises(ValueError, match="max_elements"):
        jio.load_nifti(huge)
    cplx = tmp_path / "cplx.nii"
    _write_header_only(cplx, (2, 2, 2), np.complex64)
    with pytest.raises(ValueError, match="dtype"):
        jio.load_nifti(cplx)
    small = tmp_path / "small.nii.gz"
    jio.save_nifti(small, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="max_elements"):
        jio.load_nifti(small, max_elements=63)
    with pytest.raises(ValueError, match=r"\(D, H, W, 3\)"):
        jio.load_disp(small)  # a 3-D image is not a displacement file


def test_corrupt_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(500))
    with pytest.raises(ValueError, match="garbage.nii.gz"):
        jio.load_nifti(garbage)
    good = tmp_path / "trunc.nii"
    jio.save_nifti(good, np.ones((8, 8, 8), np.float32))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.nii"):
        jio.load_nifti(good)
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        jio.load_nifti(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        jio.load_disp(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match="directory"):
        jio.save_nifti(tmp_path / "no_dir" / "x.nii.gz", np.zeros((2, 2, 2)))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p: jio.save_nifti(p / "x.mgz", np.zeros((2, 2, 2))), "path"),
        (lambda p: jio.load_nifti(p / "x.npy"), "path"),
        (lambda p: jio.load_disp(p / "disp_0001_0002.npz"), "path"),
        (lambda p: jio.save_nifti(p / "x.nii.gz", np.zeros((2, 2), complex)), "array"),
        (lambda p: jio.save_nifti(p / "x.nii.gz", np.zeros((2, 0, 2))), "array"),
        (lambda p: jio.save_nifti(p / "x.nii.gz", np.full((2, 2), 2**40)), "array"),
        (lambda p: jio.save_nifti(p / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(3)), "affine"),
        (lambda p: jio.save_disp(p / "d.nii.gz", np.zeros((4, 4, 4, 2))), "ddf"),
        (lambda p: jio.save_disp(p / "d.nii.gz", np.zeros((4, 4, 3))), "ddf"),
        (lambda p: jio.save_disp(p / "d.nii.gz", np.full((4, 4, 4, 3), np.nan)), "ddf"),
        (lambda p: jio.save_disp(p / "d.nii.gz", np.zeros((4, 4, 4, 3)), dtype=np.int16), "dtype"),
        (lambda p: jio.load_nifti(p / "x.nii.gz", dtype=np.int32), "dtype"),
    ],
)
def test_bad_arguments_are_named(tmp_path, call, name):
    with pytest.raises(ValueError, match=f"`?{name}`?"):
        call(tmp_path)
    assert not any(f.startswith(".") for f in os.listdir(tmp_path))  # no temporary files left
