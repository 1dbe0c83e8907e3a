"""NIfTI geometry read as ITK reads it (``jaxreg.io.nifti_geometry`` / ``load_nifti``).

Files are built here with an exact header (codes, sform, qform, pixdim), checked field by
field, then read with jaxreg and compared with hand computations and with SimpleITK
(ITK's physical x, y are nibabel's negated: RAS = diag(-1, -1, 1) @ LPS).
"""

import warnings

import nibabel as nib
import numpy as np
import pytest

from jaxreg import io
from jaxreg.data import preprocess

ACDC_PIXDIM = (1.40625, 1.40625, 10.0)


def _rotation(angles):
    out = np.eye(3)
    for axis, degrees in enumerate(angles):
        c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def _affine(rotation, sizes, origin):
    a = np.eye(4)
    a[:3, :3] = np.asarray(rotation) @ np.diag(sizes)
    a[:3, 3] = origin
    return a


OBLIQUE = _affine(_rotation((10, 20, -30)), (1.2, 0.9, 3.0), (10.0, -20.0, 5.0))
OTHER = _affine(_rotation((0, 0, 15)), (1.2, 0.9, 3.0), (1.0, 2.0, 3.0))
SHEARED = OBLIQUE.copy()
SHEARED[0, 1] += 0.5
ACDC_SFORM = np.diag([-1.0, -1.0, 1.0, 1.0])


def write(path, *, pixdim, sform=None, sform_code=0, qform=None, qform_code=0, shape=(6, 5, 4), data=None):
    """Writes a NIfTI file with exactly this header and checks the fields that reach the disk."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32 if data is None else data.dtype)
    if qform is not None:
        header.set_qform(qform, code=qform_code, strip_shears=False)
    header["qform_code"] = qform_code
    if sform is not None:
        header.set_sform(sform, code=sform_code)
    header["sform_code"] = sform_code
    header.set_zooms(tuple(pixdim) + (1.0,) * (len(shape) - len(pixdim)))
    if data is None:
        data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nib.save(nib.Nifti1Image(data, None, header), path)
    back = nib.load(path).header
    assert int(back["sform_code"]) == sform_code and int(back["qform_code"]) == qform_code
    np.testing.assert_array_equal(back["pixdim"][1 : 1 + len(pixdim)], np.float32(pixdim))
    if sform is not None:
        np.testing.assert_allclose(back.get_sform(), sform, atol=1e-6)
    return path


def write_acdc_style(path, shape=(6, 5, 4), data=None):
    """The public ACDC header: sform code 2 without voxel size, qform code 0, spacing in pixdim."""
    return write(path, pixdim=ACDC_PIXDIM, sform=ACDC_SFORM, sform_code=2, shape=shape, data=data)


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", io.NiftiGeometryWarning)
        return io.load_nifti(path)


# --- the ACDC header --------------------------------------------------------------------


def test_acdc_header_spacing_and_affine_by_hand(tmp_path):
    path = write_acdc_style(tmp_path / "frame.nii.gz")
    assert np.allclose(np.linalg.norm(nib.load(path).affine[:3, :3], axis=0), 1.0)  # nibabel: 1 mm voxels
    with pytest.warns(io.NiftiGeometryWarning) as record:
        volume = io.load_nifti(path)
    message = str(record[0].message)
    assert str(path) in message and "1 x 1 x 1 mm" in message and "1.40625 x 1.40625 x 10 mm" in message
    assert "using pixdim" in message
    assert volume.spacing == (np.float32(1.40625), np.float32(1.40625), np.float32(10.0))
    # Direction diag(-1, -1, 1) from the sform, voxel size from pixdim, origin 0.
    expected = np.array([[-1.40625, 0, 0, 0], [0, -1.40625, 0, 0], [0, 0, 10.0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(volume.affine, expected)
    with pytest.warns(io.NiftiGeometryWarning, match="a NIfTI header"):  # no path given
        geometry = io.nifti_geometry(nib.load(path).header)
    assert geometry.source == "sform" and geometry.spacing == volume.spacing
    np.testing.assert_array_equal(geometry.affine, expected)


def test_warning_once_per_file(tmp_path):
    first, second = write_acdc_style(tmp_path / "a.nii"), write_acdc_style(tmp_path / "b.nii")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            io.load_nifti(first)
            io.load_nifti(second)
    messages = [str(w.message) for w in caught if issubclass(w.category, io.NiftiGeometryWarning)]
    assert len(messages) == 2
    assert str(first) in messages[0] and str(second) in messages[1]


def test_acdc_header_resampled_shape_by_hand(tmp_path):
    # 10 slices of 10 mm, 20 x 16 in-plane voxels of 1.40625 mm, to (1.5, 1.5, 3.15) mm.
    volume = _read(write_acdc_style(tmp_path / "frame.nii", shape=(20, 16, 10)))
    out, affine = preprocess.resample_to_spacing(volume.array, volume.affine, (1.5, 1.5, 3.15))
    # round(20 * 1.40625 / 1.5) = round(18.75) = 19, round(16 * 1.40625 / 1.5) = round(15.0) = 15,
    # round(10 * 10 / 3.15) = round(31.75) = 32 (nibabel's 1 mm would give round(3.17) = 3 slices).
    assert out.shape == (19, 15, 32)
    # Same field of view: 28.125 mm / 19, 22.5 mm / 15, 100 mm / 32 = 3.125 mm.
    np.testing.assert_allclose(preprocess.spacing_of(affine), [28.125 / 19, 1.5, 3.125], rtol=1e-12)
    # The first voxel edge stays put: x edge at -(-0.5 * 1.40625) = 0.703125 mm, likewise for the others.
    np.testing.assert_allclose(affine @ [-0.5, -0.5, -0.5, 1], volume.affine @ [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(affine @ [-0.5, -0.5, -0.5, 1], [0.703125, 0.703125, -5.0, 1.0])


# --- files whose sform and pixdim agree read as before -----------------------------------


@pytest.mark.parametrize("case", ["save_nifti", "oblique_sform", "sform_and_qform", "qform_only", "scanner_sform"])
def test_agreeing_headers_give_nibabels_affine_exactly(tmp_path, case):
    path = tmp_path / "img.nii.gz"
    if case == "save_nifti":
        io.save_nifti(path, np.zeros((4, 5, 6), np.float32), _affine(np.eye(3), (0.7, 1.5, 2.0), (-10, 3, 1)))
    elif case == "oblique_sform":
        write(path, pixdim=(1.2, 0.9, 3.0), sform=OBLIQUE, sform_code=2)
    elif case == "sform_and_qform":
        write(path, pixdim=(1.2, 0.9, 3.0), sform=OBLIQUE, sform_code=2, qform=OBLIQUE, qform_code=1)
    elif case == "qform_only":
        write(path, pixdim=(1.2, 0.9, 3.0), qform=OTHER @ np.diag([1, -1, 1, 1]), qform_code=1)
    else:
        write(path, pixdim=(1.2, 0.9, 3.0), sform=OTHER, sform_code=1, qform=OTHER, qform_code=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", io.NiftiGeometryWarning)
        volume = io.load_nifti(path)
    image = nib.load(path)
    np.testing.assert_array_equal(volume.affine, image.affine)
    assert volume.affine.dtype == np.float64
    assert volume.spacing == image.header.get_zooms()[:3]


def test_no_form_is_itks_identity_at_origin_zero(tmp_path):
    # Neither code set: ITK's identity direction (LPS) at origin 0, i.e. diag(-dx, -dy, dz) in RAS.
    # (nibabel would centre the volume and flip only x.)
    path = write(tmp_path / "img.nii", pixdim=(2.0, 3.0, 4.0))
    geometry = io.nifti_geometry(nib.load(path))
    assert geometry.source == "pixdim"
    np.testing.assert_array_equal(geometry.affine, np.diag([-2.0, -3.0, 4.0, 1.0]))


def test_disagreeing_forms_warn_and_follow_itk(tmp_path):
    # sform code 2 differing from a qform code 1: the qform is used.
    path = write(tmp_path / "a.nii", pixdim=(1.2, 0.9, 3.0), sform=OTHER, sform_code=2, qform=OBLIQUE, qform_code=1)
    with pytest.warns(io.NiftiGeometryWarning, match="using the qform") as record:
        geometry = io.nifti_geometry(nib.load(path), path=path)
    assert str(path) in str(record[0].message) and "origin (1, 2, 3) mm vs (10, -20, 5) mm" in str(record[0].message)
    assert geometry.source == "qform"
    np.testing.assert_allclose(geometry.affine, OBLIQUE, atol=1e-5)
    # A scanner sform (code 1) wins over a different qform.
    path = write(tmp_path / "b.nii", pixdim=(1.2, 0.9, 3.0), sform=OTHER, sform_code=1, qform=OBLIQUE, qform_code=1)
    with pytest.warns(io.NiftiGeometryWarning, match="using the sform"):
        geometry = io.nifti_geometry(nib.load(path), path=path)
    assert geometry.source == "sform"
    np.testing.assert_allclose(geometry.affine, OTHER, atol=1e-6)
    # A sheared sform with a qform: the qform.
    path = write(tmp_path / "c.nii", pixdim=(1.2, 0.9, 3.0), sform=SHEARED, sform_code=2, qform=OBLIQUE, qform_code=1)
    with pytest.warns(io.NiftiGeometryWarning, match="shear"):
        assert io.nifti_geometry(nib.load(path), path=path).source == "qform"
    # A sheared sform alone (ITK refuses the file): kept as stored, silently.
    path = write(tmp_path / "d.nii", pixdim=(1.2, 1.24477, 3.0), sform=SHEARED, sform_code=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", io.NiftiGeometryWarning)
        geometry = io.nifti_geometry(nib.load(path), path=path)
    np.testing.assert_allclose(geometry.affine, SHEARED, atol=1e-6)


def test_2d_and_vector_images(tmp_path):
    sform = _affine(_rotation((0, 0, 90)), (1, 1, 1), (5, 6, 7))
    flat = _read(write(tmp_path / "flat.nii", pixdim=ACDC_PIXDIM[:2], sform=sform, sform_code=2, shape=(6, 5)))
    assert flat.spacing == (np.float32(1.40625),) * 2
    np.testing.assert_allclose(flat.affine, [[0, -1.40625, 0, 5], [1.40625, 0, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1]],
                               atol=1e-12)
    # An ANTs warp: (X, Y, Z, 1, 3), spacing of the 3 spatial axes.
    warp = _read(write(tmp_path / "warp.nii", pixdim=ACDC_PIXDIM, sform=sform, sform_code=2, shape=(6, 5, 4, 1, 3)))
    assert warp.spacing == tuple(np.float32(v) for v in ACDC_PIXDIM)
    np.testing.assert_allclose(warp.affine[:3, 2], [0, 0, 10.0])


def test_not_a_nifti_header():
    with pytest.raises(ValueError, match="`image` must be a NIfTI image or header"):
        io.nifti_geometry(np.eye(4))


# --- agreement with ITK -----------------------------------------------------------------


CASES = {
    "acdc": dict(pixdim=ACDC_PIXDIM, sform=_affine(np.diag([-1, -1, 1]), (1, 1, 1), (12.5, -3.0, 40.0)), sform_code=2),
    "acdc_with_qform": dict(pixdim=ACDC_PIXDIM, sform=ACDC_SFORM, sform_code=2,
                            qform=_affine(np.diag([-1, -1, 1]), ACDC_PIXDIM, (0, 0, 0)), qform_code=1),
    "unscaled_scanner_sform_vs_qform": dict(pixdim=(1.2, 0.9, 3.0), sform=_affine(_rotation((0, 0, 15)), (1, 1, 1),
                                                                                 (1, 2, 3)),
                                            sform_code=1, qform=OBLIQUE, qform_code=1),
    "qform_only": dict(pixdim=(1.2, 0.9, 3.0), qform=OBLIQUE @ np.diag([1, 1, -1, 1]), qform_code=1),
    "both_agree": dict(pixdim=(1.2, 0.9, 3.0), sform=OBLIQUE, sform_code=2, qform=OBLIQUE, qform_code=1),
    "oblique_sform_only": dict(pixdim=(1.2, 0.9, 3.0), sform=OBLIQUE, sform_code=4),
    "oblique_sform_unscaled": dict(pixdim=(1.2, 0.9, 3.0), sform=_affine(_rotation((10, 20, -30)), (1, 1, 1),
                                                                          (10, -20, 5)), sform_code=2),
    "sform_2_vs_qform": dict(pixdim=(1.2, 0.9, 3.0), sform=OTHER, sform_code=2, qform=OBLIQUE, qform_code=1),
    "scanner_sform_vs_qform": dict(pixdim=(1.2, 0.9, 3.0), sform=OTHER, sform_code=1, qform=OBLIQUE, qform_code=1),
    "sheared_sform_with_qform": dict(pixdim=(1.2, 0.9, 3.0), sform=SHEARED, sform_code=2, qform=OBLIQUE, qform_code=1),
    "no_form": dict(pixdim=(2.0, 3.0, 4.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_geometry_as_simpleitk(tmp_path, case):
    sitk = pytest.importorskip("SimpleITK")
    path = write(tmp_path / f"{case}.nii.gz", **CASES[case])
    volume = _read(path)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's own "unexpected scales in sform"
    try:
        image = sitk.ReadImage(str(path))
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(True)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    spacing = np.array(image.GetSpacing())
    direction = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3)
    origin = lps_to_ras @ np.array(image.GetOrigin())
    np.testing.assert_allclose(volume.spacing, spacing, rtol=1e-7)
    np.testing.assert_allclose(volume.affine[:3, :3] / np.asarray(volume.spacing, np.float64), direction, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 3], origin, atol=1e-5)
    np.testing.assert_array_equal(volume.affine[3], [0, 0, 0, 1])
