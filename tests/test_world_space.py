"""Registration in world coordinates: each image on its own grid (``jaxreg.images``, issue: two grids).

The images are one textured body (Gaussian blobs inside a ball) sampled at known world positions on
two grids of other shapes, voxel sizes, axis orders, orientations and origins; the true map between
them is a known translation in mm. References: that closed form, scipy's ``map_coordinates``, and
the arrays' path on one grid.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg import images

_RNG = np.random.default_rng(0)
_DIRECTIONS = _RNG.normal(size=(120, 3))
CENTRES = 24 + _DIRECTIONS / np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True) * 13 * _RNG.uniform(
    0, 1, size=(120, 1)) ** (1 / 3)
WIDTHS = _RNG.uniform(2.5, 5, size=120)

FIXED_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 24³ voxels of 2 mm: world [0, 46] mm on each axis
FIXED_SHAPE = (24, 24, 24)


def body(points):
    """The body's intensity at world points ``(..., 3)`` mm."""
    return sum(np.exp(-np.sum((points - c) ** 2, -1) / (2 * w * w)) * (1 + 0.3 * (k % 4))
               for k, (c, w) in enumerate(zip(CENTRES, WIDTHS)))


def sample(shape, affine, shift):
    """The body moved by ``shift`` mm, on the grid ``shape``/``affine``."""
    voxels = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    return body(voxels @ affine[:3, :3].T + affine[:3, 3] - shift).astype(np.float32)


def oblique_grid(origin):
    """A moving grid of 2 × 3 × 2.5 mm voxels, its axes permuted and one flipped: voxel axis 0 runs
    along −y, axis 1 along z, axis 2 along x."""
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, 2.5], [-2.0, 0, 0], [0, 3.0, 0]]
    affine[:3, 3] = origin
    return affine


def error_mm(result, shift, moving_shape, moving_affine):
    """Distances (mm) of the registration's map from the true one, ``p ↦ p + shift``, at fixed voxels
    4..19 that lie inside the moving grid."""
    voxels = np.stack(np.meshgrid(*[np.arange(4, 20)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    world = voxels @ FIXED_AFFINE[:3, :3].T + FIXED_AFFINE[:3, 3]
    inside = (np.linalg.inv(moving_affine) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    world = world[np.all((inside >= 1) & (inside <= np.array(moving_shape) - 2), axis=1)]
    return np.linalg.norm(result.apply_to_points(world) - (world + shift), axis=1)


def _register(moving_shape, moving_affine, shift, **options):
    fixed = nib.Nifti1Image(sample(FIXED_SHAPE, FIXED_AFFINE, np.zeros(3)), FIXED_AFFINE)
    moving = sample(moving_shape, moving_affine, shift)
    return jaxreg.register(fixed, nib.Nifti1Image(moving, moving_affine), **options), moving


def test_a_shift_that_takes_the_body_out_of_the_fixed_view_is_found():
    """The moving scan's larger field of view holds the whole body, moved 20/−16/14 mm so that a third
    of it lies outside the fixed view. Resampled onto the fixed grid first, the registration loses
    that part (2.8 mm mean, 5.7 mm largest error); read on its own grid, it does not."""
    shift = np.array([20.0, -16.0, 14.0])
    shape, affine = (40, 30, 28), oblique_grid([8.0, 40.0, 4.0])
    result, _ = _register(shape, affine, shift, affine=False, transform="rigid")
    assert result.two_grids and result.info["grids"] == "world"
    error = error_mm(result, shift, shape, affine)
    assert error.size > 2000
    assert error.mean() < 1.0 and error.max() < 1.5, (error.mean(), error.max())


@pytest.fixture(scope="module")
def crop():
    """The moving scan is a small oblique crop (10 × 9 × 12 voxels) that cuts through the body."""
    shift = np.array([3.0, -3.0, 2.0])
    shape, affine = (10, 9, 12), oblique_grid([12.0, 36.0, 10.0])
    labels = (sample(shape, affine, shift) > 0.8).astype(np.int32) + (sample(shape, affine, shift) > 1.6)
    fixed = nib.Nifti1Image(sample(FIXED_SHAPE, FIXED_AFFINE, np.zeros(3)), FIXED_AFFINE)
    moving = sample(shape, affine, shift)
    result = jaxreg.register(fixed, nib.Nifti1Image(moving, affine), moving_labels=labels, affine=False,
                             transform="rigid")
    return result, shift, shape, affine, moving, labels


def test_the_similarity_counts_only_where_the_moving_image_exists(crop):
    """Resampled onto the fixed grid, the crop is surrounded by zeros that the similarity matches
    against the body (2.3 mm mean error); weighted by where the crop exists, the shift is found."""
    result, shift, shape, affine, _, _ = crop
    error = error_mm(result, shift, shape, affine)
    assert error.size > 500
    assert error.mean() < 1.2, error.mean()


def test_outputs_read_the_moving_image_on_its_own_grid(crop):
    """``ddf`` points into the moving array's voxels: ``warped`` and ``warped_labels`` are scipy's
    interpolation of the moving arrays there (labels: nearest, 0 outside)."""
    result, _, shape, _, moving, labels = crop
    ddf = np.asarray(result.ddf)
    assert ddf.shape == FIXED_SHAPE + (3,) and result.warped.shape == FIXED_SHAPE
    coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in FIXED_SHAPE], indexing="ij")) \
        + np.moveaxis(ddf, -1, 0)
    np.testing.assert_allclose(np.asarray(result.warped), ndimage.map_coordinates(moving, coords, order=1,
                                                                                  mode="nearest"), atol=1e-4)
    want = ndimage.map_coordinates(labels, coords, order=0, mode="grid-constant")
    assert np.mean(np.asarray(result.warped_labels) == want) > 0.999


@pytest.mark.slow
def test_a_grid_shifted_by_whole_voxels_gives_the_one_grid_deformation():
    """A moving scan on the fixed grid's axes, 4 voxels further out on every side, registered through
    the two-level pyramid (each image shrunk on its own grid): the deformation is that of the same
    content cut to the fixed grid and registered as arrays, away from the border, up to what the
    larger view changes (the intensity percentiles, content instead of repeated edges; measured:
    0.043 voxel mean, 0.54 largest difference)."""
    shift = np.array([2.0, -2.0, 2.0])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -8.0
    options = {"affine": False, "levels": (2, 1), "steps": 30}
    result, moving = _register((32, 32, 32), affine, shift, **options)
    fixed = sample(FIXED_SHAPE, FIXED_AFFINE, np.zeros(3))
    one_grid = jaxreg.register(fixed, moving[4:28, 4:28, 4:28], spacing=2.0, **options)
    interior = (slice(4, 20),) * 3
    difference = np.abs(np.asarray(result.ddf)[interior] - 4.0 - np.asarray(one_grid.ddf)[interior])
    assert difference.mean() < 0.08 and np.percentile(difference, 99) < 0.4, (difference.mean(), difference.max())
