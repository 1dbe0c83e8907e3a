"""``jaxreg.register`` on images with a grid: NIfTI paths, NiftiVolume, nibabel images (``jaxreg.images``).

References: scipy (resampling through the headers, interpolation of the deformation),
SimpleITK (``TransformPoint`` of the exported ITK transforms, ``Resample``) and closed forms.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg import images
from jaxreg import transform as tx
from test_cli import AFFINE, _pair

OPTIONS = {"levels": (1,), "steps": (30,), "affine_options": {"steps": 10}}


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    """A 16³ pair; the moving file is a cropped copy on another grid (origin moved by 2 and 1 voxels)."""
    tmp = tmp_path_factory.mktemp("images")
    fixed, moving, labels, moving_labels = _pair()
    moving_affine = AFFINE.copy()
    moving_affine[:3, 3] += AFFINE[:3, 0] * 2 + AFFINE[:3, 2]  # voxel (0, 0, 0) of the crop = voxel (2, 0, 1)
    paths = {"f": tmp / "f.nii.gz", "m": tmp / "m.nii.gz", "ml": tmp / "ml.nii.gz"}
    nib.save(nib.Nifti1Image(fixed, AFFINE), paths["f"])
    nib.save(nib.Nifti1Image(moving[2:, :, 1:], moving_affine), paths["m"])
    nib.save(nib.Nifti1Image(moving_labels[2:, :, 1:], moving_affine), paths["ml"])
    result = jaxreg.register(str(paths["f"]), paths["m"], moving_labels=str(paths["ml"]), **OPTIONS)
    return tmp, paths, result, moving_affine


def test_register_takes_paths_and_knows_the_world_transform(two_grids):
    tmp, paths, result, moving_affine = two_grids
    assert isinstance(result, images.ImageRegistration) and result.two_grids
    t = result.transform
    assert t.fixed_shape == (16, 16, 16) and t.moving_shape == (14, 16, 15)
    np.testing.assert_allclose(t.moving_affine, moving_affine)
    assert result.warped.shape == (16, 16, 16) and result.warped_labels.shape == (16, 16, 16)
    assert result.info["spacing"] == [1.5, 1.5, 2.0]  # the header's voxel sizes (the columns of AFFINE)
    # result.apply on the moving file reproduces warped (one interpolation, through the transform)
    again = result.apply(paths["m"])
    moving = nib.load(paths["m"]).get_fdata()
    disp = np.asarray(tx.total_ddf(t.matrix, t.deformation))  # in the moving file's voxels
    coords = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij")) + np.moveaxis(disp, -1, 0)
    np.testing.assert_allclose(again, ndimage.map_coordinates(moving, coords, order=1, mode="nearest"), atol=1e-4)
    labels = result.apply(paths["ml"], labels="nearest")
    want = ndimage.map_coordinates(nib.load(paths["ml"]).get_fdata(), coords, order=0, mode="grid-constant")
    assert np.mean(labels == want) > 0.999


def test_nibabel_images_and_niftivolumes_give_the_same(two_grids):
    tmp, paths, result, _ = two_grids
    volume = jaxreg.io.load_nifti(paths["m"], dtype=np.float32)
    other = jaxreg.register(nib.load(paths["f"]), volume, **OPTIONS)
    np.testing.assert_allclose(np.asarray(other.warped), np.asarray(result.warped), atol=1e-5)
    np.testing.assert_allclose(other.transform.matrix, result.transform.matrix, atol=1e-6)


def test_apply_to_points_matches_simpleitk_and_inverts(two_grids):
    sitk = pytest.importorskip("SimpleITK")
    tmp, _, result, _ = two_grids
    saved = result.save(tmp / "saved")
    assert saved["whichtoinvert"] == [True, False] and all(map(lambda p: tmp.joinpath(p).exists(),
                                                               saved["fwdtransforms"] + saved["invtransforms"]))
    field = sitk.Cast(sitk.ReadImage(saved["fwdtransforms"][0]), sitk.sitkVectorFloat64)
    forward = sitk.CompositeTransform([sitk.ReadTransform(saved["fwdtransforms"][1]),
                                       sitk.DisplacementFieldTransform(field)])
    voxels = np.random.default_rng(0).uniform(3, 12, size=(20, 3))  # inside the fixed grid
    ras = (AFFINE @ np.c_[voxels, np.ones(20)].T).T[:, :3]
    lps = ras * [-1, -1, 1]
    itk = np.array([forward.TransformPoint(tuple(p)) for p in lps])
    np.testing.assert_allclose(result.apply_to_points(lps, frame="LPS"), itk, atol=1e-3)
    np.testing.assert_allclose(result.apply_to_points(ras), itk * [-1, -1, 1], atol=1e-3)
    # and back: moving-space points to fixed space (through the inverse), the round trip within 0.1 mm
    # (0.05 of a 2 mm voxel: exp(−v) and its interpolation are discrete)
    back = result.apply_to_points(result.apply_to_points(ras), inverse=True)
    np.testing.assert_allclose(back, ras, atol=0.1)


def test_bad_images_points_and_folders_raise_one_clear_error(two_grids, tmp_path):
    _, paths, result, _ = two_grids
    with pytest.raises(FileNotFoundError, match="`fixed`: no such file"):
        jaxreg.register(str(tmp_path / "none.nii.gz"), paths["m"])
    with pytest.raises(ValueError, match="both be images with a grid"):
        jaxreg.register(paths["f"], np.zeros((16, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"`points` must be a finite \(N, 3\)"):
        result.apply_to_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="`frame`"):
        result.apply_to_points(np.zeros((4, 3)), frame="RAI")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        result.save(tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep"
    bad = tx.Transform(np.diag([-1.0, 1.0, 1.0, 1.0]), None, None, (4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4))
    with pytest.raises(ValueError, match="reflection"):
        images.apply_to_points(bad, np.zeros((2, 3)))
