"""Rigid/affine stage, physical spacing and the affine displacement helper.

References are independent of the code under test: scipy.ndimage.affine_transform and
uniform_filter, scipy's Rotation, closed-form matrices and derivatives.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from jaxreg import _objective as obj
from jaxreg import optimize as optimize_module
from jaxreg import losses, spatial
from jaxreg.optimize import optimize
from jaxreg.optimize_affine import AffineResult, affine_levels, optimize_affine


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))


def _textured_object(shape, seed=0):
    """A textured ellipsoid on a zero background, well inside the grid."""
    g = _grid(shape)
    c = (np.array(shape) - 1) / 2
    r2 = sum(((g[k] - c[k]) / (0.32 * shape[k] * (1 + 0.08 * k))) ** 2 for k in range(len(shape)))
    texture = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5)
    image = (texture / texture.std() * 0.5 + 1.5) * (r2 < 1) + 1.0 * (r2 < 0.3)
    return ndi.gaussian_filter(image, 0.7).astype(np.float32), r2 < 1


def _moving_for(fixed, matrix, order=3):
    """``moving`` such that ``moving(matrix · [x, 1]) = fixed(x)`` (scipy, cubic)."""
    inv = np.linalg.inv(matrix)
    n = fixed.ndim
    return ndi.affine_transform(fixed, inv[:n, :n], inv[:n, n], order=order).astype(np.float32)


def _homogeneous(a, t):
    n = len(t)
    m = np.eye(n + 1)
    m[:n, :n], m[:n, n] = a, t
    return m


def _about_centre(a, shift, shape):
    c = (np.array(shape, float) - 1) / 2
    return _homogeneous(a, c - a @ c + np.asarray(shift, float))


# ----------------------------------------------------------------------------- spatial.affine_ddf
@pytest.mark.parametrize("shape", [(9, 12), (7, 8, 6)])
def test_affine_ddf_warps_like_scipy_affine_transform(shape):
    rng = np.random.default_rng(3)
    image = rng.random(shape).astype(np.float32)
    n = len(shape)
    a = np.eye(n) + 0.1 * rng.normal(size=(n, n))
    t = rng.normal(size=n)
    ddf = np.asarray(spatial.affine_ddf(_homogeneous(a, t), shape))
    np.testing.assert_allclose(ddf + np.moveaxis(_grid(shape), 0, -1),
                               np.moveaxis(np.einsum("ij,j...->i...", a, _grid(shape)), 0, -1) + t, atol=1e-5)
    got = np.asarray(spatial.warp(image, ddf, mode="nearest"))
    want = ndi.affine_transform(image, a, t, order=1, mode="nearest")
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the (ndim, ndim + 1) form is the same map
    np.testing.assert_allclose(np.asarray(spatial.affine_ddf(_homogeneous(a, t)[:n], shape)), ddf, atol=1e-6)


def test_affine_ddf_rejects_a_matrix_of_the_wrong_size():
    with pytest.raises(ValueError, match="`matrix`"):
        spatial.affine_ddf(np.eye(3), (4, 4, 4))


# ----------------------------------------------------------------------------- recovery of known maps
@pytest.fixture(scope="module")
def volume():
    return _textured_object((28, 28, 28))


@pytest.mark.parametrize("transform", ["rigid", "affine"])
def test_recovers_a_known_3d_map_within_half_a_degree_and_half_a_voxel(volume, transform):
    fixed, inside = volume
    rotation = Rotation.from_rotvec(np.deg2rad(10.0) * np.array([1.0, 0.4, -0.2]) / np.linalg.norm([1.0, 0.4, -0.2]))
    linear = rotation.as_matrix() if transform == "rigid" else rotation.as_matrix() @ np.diag([1.06, 0.95, 1.0])
    truth = _about_centre(linear, (1.5, -2.0, 1.0), fixed.shape)
    moving = _moving_for(fixed, truth)
    result = optimize_affine(fixed, moving, transform=transform)
    assert isinstance(result, AffineResult) and result.matrix.shape == (4, 4) and result.matrix.dtype == np.float64
    points = np.vstack([_grid(fixed.shape)[:, inside], np.ones(inside.sum())])
    error = np.linalg.norm((result.matrix @ points - truth @ points)[:3], axis=0)
    assert error.max() < 0.5, error.max()
    if transform == "rigid":
        residual = result.matrix[:3, :3] @ truth[:3, :3].T
        angle = np.rad2deg(Rotation.from_matrix(residual).magnitude())
        assert angle < 0.5, angle
        np.testing.assert_allclose(result.matrix[:3, :3] @ result.matrix[:3, :3].T, np.eye(3), atol=1e-5)
    # before: the identity is far off (several voxels)
    assert np.linalg.norm((truth @ points - points)[:3], axis=0).max() > 3


def test_rigid_on_an_anisotropic_grid_is_a_rotation_in_mm():
    """A 2-D image with 1 x 2 mm pixels, moved by a rotation of 8 degrees in mm."""
    spacing = (1.0, 2.0)
    fine, _ = _textured_object((64, 64), seed=1)
    fixed = fine[:, ::2].copy()  # the same object sampled at 2 mm along axis 1
    angle = np.deg2rad(8.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.diag(spacing)
    truth = _about_centre(np.linalg.inv(scale) @ rot @ scale, (1.0, -0.5), fixed.shape)  # voxel form
    moving = _moving_for(fixed, truth)
    result = optimize_affine(fixed, moving, transform="rigid", spacing=spacing)
    world = result.world[:2, :2]
    np.testing.assert_allclose(world @ world.T, np.eye(2), atol=1e-5)  # a rotation in mm
    found = np.rad2deg(np.arctan2(world[1, 0], world[0, 0]))
    assert abs(found - 8.0) < 0.5, found
    np.testing.assert_allclose(np.diag([1.0, 2.0, 1.0]) @ result.matrix @ np.diag([1.0, 0.5, 1.0]), result.world,
                               atol=1e-6)
    # Without the spacing the best "rigid" map of the voxel grid is not this rotation.
    wrong = optimize_affine(fixed, moving, transform="rigid")
    assert abs(np.rad2deg(np.arctan2(wrong.world[1, 0], wrong.world[0, 0])) - 8.0) > 1.0


def test_optimize_dispatches_affine_and_returns_the_dense_field(volume):
    fixed, _ = volume
    truth = _about_centre(np.eye(3), (2.0, 0.0, -1.0), fixed.shape)
    moving = _moving_for(fixed, truth)
    result = optimize(fixed, moving, transform="rigid", levels=(2,), steps=(60,))
    assert result.velocity is None and result.matrix.shape == (4, 4)
    np.testing.assert_allclose(result.matrix[:3, 3], [2.0, 0.0, -1.0], atol=0.3)
    np.testing.assert_allclose(np.asarray(result.ddf), np.asarray(spatial.affine_ddf(result.matrix, fixed.shape)),
                               atol=1e-5)
    assert result.levels == (2,) and result.losses.shape == (60,)


def test_centre_of_mass_start_finds_a_large_shift():
    fixed, _ = _textured_object((48, 48), seed=2)
    truth = _about_centre(np.eye(2), (9.0, -7.0), fixed.shape)
    moving = _moving_for(fixed, truth)
    result = optimize_affine(fixed, moving, transform="rigid", levels=(2, 1), steps=(40, 20))
    np.testing.assert_allclose(result.matrix[:2, 2], [9.0, -7.0], atol=0.5)


# ----------------------------------------------------------------------------- spacing
@pytest.mark.parametrize("spacing, factor, expected", [
    ((1.0, 1.0, 1.0), 4, (4, 4, 4)),
    ((1.0, 1.0, 5.0), 8, (8, 8, 2)),   # 8 mm: 5 mm x 2 = 10 is nearer than 5 x 1 = 5 (|2| < |3|)
    ((1.0, 1.0, 5.0), 4, (4, 4, 1)),
    ((1.4, 1.4, 10.0), 4, (4, 4, 1)),  # a cardiac stack: its 10 mm axis is not shrunk
    ((1.4, 1.4, 10.0), 16, (16, 16, 2)),
    ((2.0, 1.0), 2, (1, 2)),           # axis 0 is at 2 mm already
])
def test_shrink_factors_follow_the_ants_rule(spacing, factor, expected):
    assert obj.shrink_factors(factor, spacing) == expected
    # brute force: the finest axis gets `factor`, every other the f in 1..factor nearest in mm
    target = min(spacing) * factor
    brute = tuple(min(range(1, factor + 1), key=lambda f: (abs(s * f - target), f)) for s in spacing)
    assert brute == expected


def test_auto_levels_do_not_shrink_a_thick_slice_axis():
    assert optimize_module.auto_levels((216, 256, 10), (1.4, 1.4, 10.0)) == (16, 8, 4, 2)
    assert optimize_module.auto_levels((160, 192, 144)) == optimize_module.auto_levels((160, 192, 144), (2.0,) * 3)
    assert affine_levels((160, 192, 144)) == (8, 4)
    assert affine_levels((32, 32)) == (2, 1)


def test_isotropic_spacing_gives_exactly_the_voxel_result():
    rng = np.random.default_rng(1)
    fixed = ndi.gaussian_filter(rng.normal(size=(20, 24, 16)), 1.5).astype(np.float32)
    moving = ndi.shift(fixed, (1.0, -1.0, 0.5), mode="nearest").astype(np.float32)
    options = {"levels": (2, 1), "steps": (15, 10)}
    plain = np.asarray(optimize(fixed, moving, **options).ddf)
    np.testing.assert_array_equal(np.asarray(optimize(fixed, moving, spacing=(2.5, 2.5, 2.5), **options).ddf), plain)
    anisotropic = np.asarray(optimize(fixed, moving, spacing=(1.0, 1.0, 3.0), **options).ddf)
    assert np.abs(anisotropic - plain).max() > 1e-3


def test_per_axis_lncc_window_matches_box_sums_of_scipy():
    rng = np.random.default_rng(4)
    f = rng.random((12, 10, 8)).astype(np.float32)
    w = (f + 0.5 * rng.random((12, 10, 8))).astype(np.float32)
    windows = (5, 3, 1)
    n = float(np.prod(windows))
    box = lambda x: ndi.uniform_filter(x.astype(np.float64), size=windows, mode="constant") * n
    sf, sw = box(f), box(w)
    cross = box(f * w) - sf * sw / n
    vf, vw = box(f * f) - sf * sf / n, box(w * w) - sw * sw / n
    want = 1.0 - np.mean(np.minimum(cross**2, vf * vw) / (vf * vw + 1e-5))
    got = float(losses.lncc(f, w, window=windows))
    assert got == pytest.approx(want, abs=1e-4)
    assert obj.axis_windows(5, (1.0, 1.0, 5.0)) == (5, 5, 1)
    assert obj.axis_windows(5, (1.0, 2.0)) == (5, 3)
    assert obj.axis_windows(5, None) == 5


def test_diffusion_in_mm_of_a_linear_field_matches_the_closed_form():
    """u = B x in voxels on a grid with relative spacing r: the mm gradient is r_k B_ka / r_a, and the
    regulariser is its mean square over axes and components (VoxelMorph's Σ / ndim²)."""
    rel = (1.0, 2.0, 4.0)
    b = np.array([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [0.02, 0.1, 0.2]])
    field = np.einsum("ij,j...->...i", b, _grid((6, 5, 4))).astype(np.float32)
    got = float(optimize_module._regularize(field, rel, "diffusion"))
    r = np.asarray(rel)
    want = np.sum((r[:, None] * b / r[None, :]) ** 2) / 9
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 0.0), (1.0, -2.0), (1.0, float("nan")), (1.0, float("inf")), (1.0,) * 3,
                                     "1x1"])
def test_bad_spacing_raises_one_clear_error(spacing):
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="`spacing`"):
        optimize(image, image, spacing=spacing)
    with pytest.raises(ValueError, match="`spacing`"):
        optimize_affine(image, image, spacing=spacing)


@pytest.mark.parametrize("kwargs, name", [
    ({"transform": "svf"}, "transform"),
    ({"init": "moments"}, "init"),
    ({"similarity": "ncc"}, "similarity"),
    ({"levels": (64,), "steps": (5,)}, "levels"),
])
def test_affine_bad_options_raise(kwargs, name):
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=f"`{name}`"):
        optimize_affine(image, image, **kwargs)
