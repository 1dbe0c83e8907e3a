"""jaxreg.transform: composition, inverse, the folder format, and the ITK/ANTs export.

References are independent of the code under test: scipy's map_coordinates evaluating the
pull map ``matrix @ (x + u(x))`` directly, nibabel for the world geometry, and SimpleITK /
antspyx reading the exported files as ITK and ANTs do.
"""

from __future__ import annotations

import json

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxreg import spatial
from jaxreg import transform as tx

FIXED_SHAPE = (20, 18, 16)
MOVING_SHAPE = (22, 19, 15)


def _rotation(angle, axes=(0, 1)):
    r = np.eye(3)
    c, s = np.cos(angle), np.sin(angle)
    i, j = axes
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _smooth(shape, seed, sigma, amplitude):
    noise = np.random.default_rng(seed).standard_normal(shape)
    field = ndimage.gaussian_filter(noise, sigma)
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


def _matrix():
    """A voxel matrix fixed → moving: small rotation and scaling about the centre, a shift."""
    m = np.eye(4)
    m[:3, :3] = _rotation(0.12) @ _rotation(-0.08, (1, 2)) @ np.diag([1.05, 0.97, 1.02])
    centre = (np.array(FIXED_SHAPE) - 1) / 2
    m[:3, 3] = (np.array(MOVING_SHAPE) - 1) / 2 - m[:3, :3] @ centre + [0.6, -0.4, 0.3]
    return m


@pytest.fixture(scope="module")
def case():
    """A 3-D transform between two oblique, anisotropic grids, and a smooth moving image."""
    fixed_affine = np.eye(4)
    fixed_affine[:3, :3] = _rotation(0.3) @ np.diag([-1.2, 1.0, 1.5])  # an x flip, like a radiological header
    fixed_affine[:3, 3] = [12.0, -8.0, 4.0]
    moving_affine = np.eye(4)
    # also flipped: a transform between two bodies never mirrors them in world space
    moving_affine[:3, :3] = _rotation(-0.2, (0, 2)) @ np.diag([-1.1, 1.3, 1.6])
    moving_affine[:3, 3] = [-5.0, 3.0, -2.0]
    velocity = np.stack([_smooth(FIXED_SHAPE, k, 3.0, 1.5) for k in range(3)], -1)
    deformation = np.asarray(spatial.integrate_velocity(velocity, steps=7))
    moving = ndimage.gaussian_filter(np.random.default_rng(9).random(MOVING_SHAPE), 1.5).astype(np.float32)
    moving = (moving - moving.min()) / (moving.max() - moving.min())
    t = tx.Transform(_matrix(), deformation, velocity, FIXED_SHAPE, fixed_affine, MOVING_SHAPE, moving_affine, 7)
    return t, moving


def _pull_points(t):
    """Moving voxel coordinates ``matrix @ (x + u(x))`` of every fixed voxel, ``(3, *S)`` (numpy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in t.fixed_shape], indexing="ij"))
    points = grid + np.moveaxis(t.deformation.astype(np.float64), -1, 0)
    return np.einsum("ij,j...->i...", t.matrix[:3, :3], points) + t.matrix[:3, 3].reshape(3, 1, 1, 1)


def _inside(points, shape, margin=0.0):
    return np.all([(p >= margin) & (p <= s - 1 - margin) for p, s in zip(points, shape)], axis=0)


def test_total_ddf_and_apply_match_the_pull_map(case):
    t, moving = case
    points = _pull_points(t)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in FIXED_SHAPE], indexing="ij"))
    ddf = np.asarray(tx.total_ddf(t.matrix, t.deformation))
    np.testing.assert_allclose(np.moveaxis(ddf, -1, 0), points - grid, atol=2e-4)
    reference = ndimage.map_coordinates(moving.astype(np.float64), points, order=1, mode="nearest")
    np.testing.assert_allclose(np.asarray(tx.apply(t, moving)), reference, atol=1e-4)
    channels = np.stack([moving, 1 - moving], -1)
    got = np.asarray(tx.apply(t, channels, mode="constant"))
    inside = _inside(points, MOVING_SHAPE)
    np.testing.assert_allclose(got[..., 1][inside], 1 - reference[inside], atol=1e-4)
    labels = (moving > 0.5).astype(np.int16)
    nearest = ndimage.map_coordinates(labels, points, order=0, mode="nearest")
    got_labels = np.asarray(tx.apply(t, labels, order=0))
    assert got_labels.dtype == np.int16
    assert np.mean(got_labels == nearest) > 0.999  # ties at exact .5 may round either way


def test_inverse_composes_to_identity_within_a_tenth_of_a_voxel(case):
    t, moving = case
    inverse = np.asarray(tx.inverse_ddf(t.matrix, t.velocity, shape=MOVING_SHAPE, steps=7))
    assert inverse.shape == (*MOVING_SHAPE, 3)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in MOVING_SHAPE], indexing="ij"))
    fixed_points = grid + np.moveaxis(inverse, -1, 0)  # T⁻¹(y), fixed voxels
    u = [ndimage.map_coordinates(t.deformation[..., k].astype(np.float64), fixed_points, order=1, mode="nearest")
         for k in range(3)]
    forward = np.einsum("ij,j...->i...", t.matrix[:3, :3], fixed_points + np.stack(u)) + t.matrix[:3, 3].reshape(
        3, 1, 1, 1)
    residual = np.linalg.norm(forward - grid, axis=0)
    interior = _inside(fixed_points, FIXED_SHAPE, margin=2.0)  # T⁻¹(y) well inside the fixed grid
    assert interior.mean() > 0.3
    print(f"inverse residual: max {residual[interior].max():.4f}, mean {residual[interior].mean():.4f} voxel")
    assert residual[interior].max() < 0.1
    # warp(warp(x, ddf), inverse) ≈ x on the moving grid, for a slowly varying image (a linear ramp, whose
    # linear interpolation is nearly exact, so what remains is the transform's error times the slope)
    slope = np.array([0.05, 0.03, -0.02])
    ramp = np.einsum("i,i...->...", slope, grid).astype(np.float32)
    back = np.asarray(tx.apply(t, tx.apply(t, ramp), inverse=True))
    interior &= _inside(grid, MOVING_SHAPE, margin=2.0)  # and the forward warp samples inside the moving grid
    error = np.abs(back - ramp)[interior].max() / np.linalg.norm(slope)
    print(f"warp(warp(ramp, ddf), inverse): max error {error:.4f} voxel")
    assert error < 0.1


def _scipy_exp(velocity, steps=7):
    """Scaling and squaring in float64 with scipy: u ← u + u(x + u), linear, edges repeated."""
    u = velocity.astype(np.float64) / 2**steps
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in velocity.shape[:-1]], indexing="ij"))
    for _ in range(steps):
        points = grid + np.moveaxis(u, -1, 0)
        u = u + np.stack([ndimage.map_coordinates(u[..., k], points, order=1, mode="nearest")
                          for k in range(u.shape[-1])], -1)
    return u


def test_inverse_deformation_and_inverse_ddf_match_scipy(case):
    t, _ = case
    backward = np.asarray(tx.inverse_deformation(t.velocity, steps=7))
    reference = _scipy_exp(-t.velocity.astype(np.float64))
    np.testing.assert_allclose(backward, reference, atol=1e-4)
    # the inverse on the moving grid: y ↦ m⁻¹y, then x ↦ x + exp(−v)(x), all in float64 with scipy
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in MOVING_SHAPE], indexing="ij"))
    inv = np.linalg.inv(t.matrix)
    fixed_points = np.einsum("ij,j...->i...", inv[:3, :3], grid) + inv[:3, 3].reshape(3, 1, 1, 1)
    # ITK's reading of a displacement field: edges repeated up to half a voxel outside, 0 beyond
    inside = np.all([(fixed_points[k] >= -0.5) & (fixed_points[k] <= FIXED_SHAPE[k] - 0.5) for k in range(3)], axis=0)
    moved = fixed_points + inside * np.stack([
        ndimage.map_coordinates(reference[..., k], fixed_points, order=1, mode="nearest") for k in range(3)])
    assert 0.05 < inside.mean() < 0.95  # the case reads both inside and outside the fixed grid
    inverse = np.asarray(tx.inverse_ddf(t.matrix, t.velocity, shape=MOVING_SHAPE))
    np.testing.assert_allclose(np.moveaxis(inverse, -1, 0), moved - grid, atol=2e-4)
    # given exp(−v), the same field without computing it again
    shared = np.asarray(tx.inverse_ddf(t.matrix, t.velocity, shape=MOVING_SHAPE, inverse_deformation=backward))
    np.testing.assert_array_equal(shared, inverse)


def test_apply_with_the_field_given_warps_the_same(case):
    t, moving = case
    total = tx.total_ddf(t.matrix, t.deformation)
    np.testing.assert_array_equal(np.asarray(tx.apply(t, moving, ddf=total)), np.asarray(tx.apply(t, moving)))
    image = np.random.default_rng(3).random(FIXED_SHAPE).astype(np.float32)  # an image on the fixed grid
    inverse = tx.inverse_ddf(t.matrix, t.velocity, shape=MOVING_SHAPE)
    np.testing.assert_array_equal(np.asarray(tx.apply(t, image, inverse=True, ddf=inverse)),
                                  np.asarray(tx.apply(t, image, inverse=True)))
    with pytest.raises(ValueError, match=r"`ddf` must have shape \(20, 18, 16, 3\)"):
        tx.apply(t, moving, ddf=inverse)


def test_total_ddf_of_an_affine_map_alone_matches_numpy():
    m = np.array([[0.98, 0.05, 0.0, 1.5], [-0.04, 1.03, 0.02, -2.0], [0.0, 0.01, 0.97, 0.25], [0, 0, 0, 1]])
    shape = (7, 6, 5)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    np.testing.assert_allclose(np.asarray(tx.total_ddf(m, shape=shape)), grid @ m[:3, :3].T + m[:3, 3] - grid,
                               atol=1e-5)


def test_a_deformation_without_a_velocity_is_inverted_by_fixed_point_iteration():
    matrix = np.eye(4)
    constant = np.full((8, 8, 8, 3), 0.5, np.float32)  # a shift: its inverse is the opposite shift
    np.testing.assert_allclose(np.asarray(tx.inverse_ddf(matrix, None, shape=(8, 8, 8), deformation=constant)),
                               -0.5, atol=1e-6)
    shift = np.eye(4)
    shift[:3, 3] = [1.0, 2.0, -1.0]  # an affine-only transform inverts exactly
    np.testing.assert_allclose(np.asarray(tx.inverse_ddf(shift, shape=(4, 5, 6))), np.broadcast_to(
        [-1.0, -2.0, 1.0], (4, 5, 6, 3)), atol=1e-6)
    # a smooth deformation (max |∇u| about 0.3): w + u(x + w) = 0, checked with scipy's interpolation
    rng = np.random.default_rng(5)
    u = np.stack([ndimage.gaussian_filter(rng.normal(size=(16, 16, 16)), 3.0) for _ in range(3)], -1)
    u = (2.0 * u / np.abs(u).max()).astype(np.float32)
    w, residual = tx.invert_deformation(u)
    w = np.asarray(w, np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij"))
    points = grid + np.moveaxis(w, -1, 0)
    back = np.moveaxis(w, -1, 0) + np.stack([ndimage.map_coordinates(u[..., k], points, order=1, mode="nearest")
                                             for k in range(3)])
    assert np.abs(back).max() < 1e-3 and residual < 1e-3, (np.abs(back).max(), residual)
    t = tx.Transform(np.eye(4), u, None, (16, 16, 16), np.eye(4), (16, 16, 16), np.eye(4))
    image = rng.random((16, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tx.apply(t, image, inverse=True)),
                               ndimage.map_coordinates(image.astype(np.float64), points, order=1, mode="nearest"),
                               atol=1e-4)
    # a folding deformation has no inverse: the residual says so
    fold = np.zeros((16, 16, 16, 3), np.float32)
    fold[..., 0] = 3.0 * np.sin(np.linspace(0, 2 * np.pi, 16))[:, None, None]  # du/dx down to −1.3: J < 0
    assert tx.invert_deformation(fold)[1] > 0.5


def test_world_conversions_match_nibabel_geometry(case):
    t, _ = case
    world = tx.world_matrix(t.matrix, t.fixed_affine, t.moving_affine)
    x = np.array([3.0, 4.0, 5.0, 1.0])
    np.testing.assert_allclose(world @ (t.fixed_affine @ x), t.moving_affine @ (t.matrix @ x), atol=1e-9)
    lps = tx.ras_to_lps(world)
    p = t.fixed_affine @ x
    flip = np.array([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(lps @ (flip * p), flip * (world @ p), atol=1e-9)
    u = np.zeros((*FIXED_SHAPE, 3))
    u[..., 1] = 1.0  # one voxel along the second array axis = the second column of the affine, in mm
    np.testing.assert_allclose(tx.world_displacement(u, t.fixed_affine)[0, 0, 0], t.fixed_affine[:3, 1])


def test_folder_round_trip_and_bad_files(case, tmp_path):
    t, moving = case
    tx.save_transform(tmp_path / "t", t)
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"transform.json", "deformation.nii.gz", "velocity.nii.gz"}
    back = tx.load_transform(tmp_path / "t")
    np.testing.assert_allclose(back.matrix, t.matrix)
    np.testing.assert_array_equal(back.deformation, t.deformation)
    np.testing.assert_array_equal(back.velocity, t.velocity)
    assert back.fixed_shape == FIXED_SHAPE and back.moving_shape == MOVING_SHAPE
    np.testing.assert_allclose(back.moving_affine, t.moving_affine)
    np.testing.assert_array_equal(np.asarray(tx.apply(tmp_path / "t" / "transform.json", moving)),
                                  np.asarray(tx.apply(t, moving)))

    description = json.loads((tmp_path / "t" / "transform.json").read_text())

    def broken(name, **changes):
        folder = tmp_path / name
        folder.mkdir()
        for file in ("deformation.nii.gz", "velocity.nii.gz"):
            (folder / file).write_bytes((tmp_path / "t" / file).read_bytes())
        (folder / "transform.json").write_text(json.dumps({**description, **changes}))
        return folder

    with pytest.raises(ValueError, match="not a jaxreg transform"):
        tx.load_transform(broken("kind", format="something-else"))
    with pytest.raises(ValueError, match=r"matrix.*\(4, 4\)"):
        tx.load_transform(broken("matrix", matrix=np.eye(3).tolist()))
    mirrored = np.asarray(description["matrix"]) @ np.diag([1.0, -1.0, 1.0, 1.0])  # a reflection in world space
    with pytest.raises(ValueError, match="reflection in world space"):
        tx.load_transform(broken("mirror", matrix=mirrored.tolist()))
    with pytest.raises(ValueError, match="fixed grid"):
        tx.load_transform(broken("shape", fixed={"shape": [20, 18, 15], "affine": description["fixed"]["affine"]}))
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        tx.load_transform(broken("missing", velocity="absent.nii.gz"))
    with pytest.raises(ValueError, match="same folder"):
        tx.load_transform(broken("escape", velocity="../t/velocity.nii.gz"))
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "transform.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        tx.load_transform(tmp_path / "notjson")
    with pytest.raises(FileNotFoundError, match="no jaxreg transform"):
        tx.load_transform(tmp_path / "nowhere")


def test_apply_refuses_an_image_on_another_grid(case):
    t, moving = case
    with pytest.raises(ValueError, match=r"moving grid.*shape \(22, 19, 15\).*got shape \(20, 18, 16\)"):
        tx.apply(t, np.zeros(FIXED_SHAPE))
    with pytest.raises(ValueError, match="moving grid"):
        tx.apply(t, moving, affine=t.fixed_affine)
    with pytest.raises(ValueError, match="fixed grid"):
        tx.apply(t, moving, inverse=True)


def test_2d_transforms_apply_and_refuse_the_itk_export(tmp_path):
    shape = (16, 12)
    matrix = np.array([[1.0, 0.1, 0.5], [-0.1, 1.0, -0.3], [0.0, 0.0, 1.0]])
    velocity = np.stack([_smooth(shape, k, 2.0, 1.0) for k in range(2)], -1)
    t = tx.Transform(matrix, None, velocity, shape, np.eye(4), shape, np.eye(4))
    image = ndimage.gaussian_filter(np.random.default_rng(1).random(shape), 1.0).astype(np.float32)
    u = np.asarray(spatial.integrate_velocity(velocity))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    points = np.einsum("ij,j...->i...", matrix[:2, :2], grid + np.moveaxis(u, -1, 0)) + matrix[:2, 2].reshape(2, 1, 1)
    reference = ndimage.map_coordinates(image.astype(np.float64), points, order=1, mode="nearest")
    np.testing.assert_allclose(np.asarray(tx.apply(t, image)), reference, atol=1e-4)
    with pytest.raises(ValueError, match="only 3-D"):
        tx.export_itk(tmp_path / "itk", t)
    assert not (tmp_path / "itk").exists()


def _nifti(path, array, affine):
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), str(path))
    return str(path)


def test_itk_export_is_read_by_simpleitk_with_the_same_warp(case, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    t, moving = case
    files = tx.export_itk(tmp_path / "itk", t)
    assert set(files) == {"warp", "affine_mat", "affine_txt", "inverse_warp"}
    warp_file = nib.load(str(tmp_path / "itk" / "warp.nii.gz"))
    assert warp_file.shape == (*FIXED_SHAPE, 1, 3) and warp_file.get_data_dtype() == np.float32
    assert warp_file.header.get_intent()[0] == "vector" and int(warp_file.header["intent_code"]) == 1007

    fixed_image = sitk.ReadImage(_nifti(tmp_path / "fixed.nii.gz", np.zeros(FIXED_SHAPE), t.fixed_affine))
    moving_image = sitk.ReadImage(_nifti(tmp_path / "moving.nii.gz", moving, t.moving_affine))
    field = sitk.ReadImage(str(tmp_path / "itk" / "warp.nii.gz"))
    assert field.GetSize() == FIXED_SHAPE and field.GetNumberOfComponentsPerPixel() == 3
    warp = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    points = _pull_points(t)
    for file in ("affine.mat", "affine.txt"):
        affine = sitk.ReadTransform(str(tmp_path / "itk" / file))
        composite = sitk.CompositeTransform([affine, warp])  # ITK applies the last one first: A(W(p))
        # the mapped points themselves: fixed voxel → moving voxel, as ITK computes them
        for index in [(0, 0, 0), (5, 7, 3), (19, 17, 15), (10, 2, 11)]:
            q = composite.TransformPoint(fixed_image.TransformIndexToPhysicalPoint(index))
            np.testing.assert_allclose(moving_image.TransformPhysicalPointToContinuousIndex(q),
                                       points[(slice(None), *index)], atol=1e-3)
        resampled = sitk.Resample(moving_image, fixed_image, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
        itk_warped = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # SimpleITK arrays are (z, y, x)
        ours = np.asarray(tx.apply(t, moving))
        inside = _inside(points, MOVING_SHAPE)
        assert inside.mean() > 0.5
        difference = np.abs(itk_warped - ours)[inside].max()
        print(f"{file}: max |SimpleITK - jaxreg| = {difference:.2e} over {inside.sum()} voxels")
        assert difference < 1e-3

    # the inverse: A⁻¹ first, then W⁻¹, maps moving points back to fixed points
    inverse = sitk.DisplacementFieldTransform(
        sitk.Cast(sitk.ReadImage(str(tmp_path / "itk" / "inverse_warp.nii.gz")), sitk.sitkVectorFloat64))
    backward = sitk.CompositeTransform([inverse, sitk.ReadTransform(str(tmp_path / "itk" / "affine.mat")).GetInverse()])
    forward = sitk.CompositeTransform([sitk.ReadTransform(str(tmp_path / "itk" / "affine.mat")), warp])
    for index in [(8, 9, 7), (12, 6, 9)]:
        p = fixed_image.TransformIndexToPhysicalPoint(index)
        back = fixed_image.TransformPhysicalPointToContinuousIndex(backward.TransformPoint(forward.TransformPoint(p)))
        assert np.abs(np.subtract(back, index)).max() < 0.1


def test_itk_fields_are_the_deformations_in_lps_mm(case, tmp_path):
    """warp.nii.gz = F·u with x, y negated (numpy, float64); inverse_warp.nii.gz the same of scipy's exp(−v)."""
    t, _ = case
    tx.export_itk(tmp_path / "itk", t)
    to_lps_mm = np.diag([-1.0, -1.0, 1.0]) @ t.fixed_affine[:3, :3]
    warp = nib.load(str(tmp_path / "itk" / "warp.nii.gz")).get_fdata()[:, :, :, 0]
    np.testing.assert_allclose(warp, t.deformation.astype(np.float64) @ to_lps_mm.T, atol=1e-5)
    inverse = nib.load(str(tmp_path / "itk" / "inverse_warp.nii.gz")).get_fdata()[:, :, :, 0]
    np.testing.assert_allclose(inverse, _scipy_exp(-t.velocity.astype(np.float64)) @ to_lps_mm.T, atol=2e-4)
    # given exp(−v) (as jaxreg register shares it with inverse_ddf), the same file content
    files = tx.export_itk(tmp_path / "shared", t, inverse_deformation=tx.inverse_deformation(t.velocity))
    assert files["inverse_warp"] == "inverse_warp.nii.gz"
    np.testing.assert_array_equal(nib.load(str(tmp_path / "shared" / "inverse_warp.nii.gz")).get_fdata(),
                                  nib.load(str(tmp_path / "itk" / "inverse_warp.nii.gz")).get_fdata())
    with pytest.raises(ValueError, match="inverse_deformation"):
        tx.export_itk(tmp_path / "bad", t, inverse_deformation=np.zeros((4, 4, 4, 3), np.float32))


def test_itk_export_is_applied_by_ants_like_jaxreg(case, tmp_path):
    ants = pytest.importorskip("ants")
    t, moving = case
    tx.export_itk(tmp_path / "itk", t)
    fixed = ants.image_read(_nifti(tmp_path / "fixed.nii.gz", np.zeros(FIXED_SHAPE), t.fixed_affine))
    moving_image = ants.image_read(_nifti(tmp_path / "moving.nii.gz", moving, t.moving_affine))
    # antsApplyTransforms -r fixed -i moving -t warp.nii.gz -t affine.mat
    warped = ants.apply_transforms(fixed, moving_image, transformlist=[str(tmp_path / "itk" / "warp.nii.gz"),
                                                                       str(tmp_path / "itk" / "affine.mat")],
                                   interpolator="linear").numpy()
    inside = _inside(_pull_points(t), MOVING_SHAPE, margin=0.5)
    difference = np.abs(warped - np.asarray(tx.apply(t, moving)))[inside].max()
    print(f"max |ANTs - jaxreg| = {difference:.2e}")
    assert difference < 1e-3
    # the inverse: antsApplyTransforms -r moving -i fixed -t [affine.mat,1] -t inverse_warp.nii.gz
    image = ndimage.gaussian_filter(np.random.default_rng(4).random(FIXED_SHAPE), 1.5)
    back = ants.apply_transforms(moving_image, ants.image_read(_nifti(tmp_path / "image.nii.gz", image, t.fixed_affine)),
                                 transformlist=[str(tmp_path / "itk" / "affine.mat"),
                                                str(tmp_path / "itk" / "inverse_warp.nii.gz")],
                                 whichtoinvert=[True, False], interpolator="linear").numpy()
    inverse = np.asarray(tx.inverse_ddf(t.matrix, t.velocity, shape=MOVING_SHAPE))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in MOVING_SHAPE], indexing="ij"))
    inside = _inside(grid + np.moveaxis(inverse, -1, 0), FIXED_SHAPE, margin=0.5)
    assert inside.mean() > 0.3
    difference = np.abs(back - np.asarray(tx.apply(t, image, inverse=True)))[inside].max()
    print(f"inverse: max |ANTs - jaxreg| = {difference:.2e}")
    assert difference < 1e-3


def test_from_registration_without_affine_fields():
    """A result without ``matrix`` (trained models): identity matrix, the ddf as the deformation."""
    ddf = jax.numpy.ones((6, 6, 6, 3)) * 0.5

    class Result:
        def __init__(self):
            self.ddf, self.info = ddf, {}

    t = tx.from_registration(Result())
    np.testing.assert_array_equal(t.matrix, np.eye(4))
    np.testing.assert_allclose(np.asarray(tx.total_ddf(t.matrix, t.deformation)), 0.5)
    assert t.velocity is None and t.moving_shape == (6, 6, 6)
