"""Stacks of pairs: ``register``, ``optimize`` and ``optimize_affine`` with ``batch=True``.

References: each pair registered by its own call (a batch must not couple its pairs), known
affine maps applied with scipy's affine_transform, scipy's map_coordinates for warping.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg.optimize import optimize
from jaxreg.optimize_affine import optimize_affine

SHAPE = (28, 32)


def _image(seed=0, shape=SHAPE):
    """A textured disc on a zero background (2-D)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    radius = np.sqrt((((grid - (np.array(shape)[:, None, None] - 1) / 2)) ** 2).sum(0))
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5)
    image = (texture / texture.std() * 0.4 + 1.5) * (radius < 9) + (radius < 4)
    return ndimage.gaussian_filter(image, 0.7).astype(np.float32)


def _shifted(image, shift, order=1):
    """``moving(x) = image(x + shift)`` (scipy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in image.shape], indexing="ij"))
    coords = grid + np.asarray(shift, np.float64)[:, None, None]
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest").astype(image.dtype)


def _stack(shifts):
    """Three fixed images (different textures) and their moving images, shifted by different amounts,
    so that the pairs converge differently."""
    fixed = np.stack([_image(seed) for seed in range(len(shifts))])
    moving = np.stack([_shifted(f, s) for f, s in zip(fixed, shifts)])
    return fixed, moving


SHIFTS = [(2.0, -1.0), (-1.5, 0.5), (0.5, 2.5)]
FAST = {"levels": (2, 1), "steps": (20, 15)}


@pytest.mark.slow
@pytest.mark.parametrize("transform", ["svf", "ddf"])
def test_optimize_batch_gives_each_pair_its_own_call(transform):
    fixed, moving = _stack(SHIFTS)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 3:-3] = True
    batch = optimize(fixed, moving, batch=True, transform=transform, fixed_mask=mask, **FAST)
    assert batch.ddf.shape == (3, *SHAPE, 2) and batch.losses.shape == (3, 35)
    assert (batch.velocity is None) == (transform == "ddf")
    for i in range(3):
        alone = optimize(fixed[i], moving[i], transform=transform, fixed_mask=mask, **FAST)
        np.testing.assert_allclose(np.asarray(batch.ddf[i]), np.asarray(alone.ddf), atol=1e-3)  # float rounding only
        np.testing.assert_allclose(batch.losses[i], alone.losses, rtol=1e-4, atol=1e-6)
        # and the pair was registered: the centre moved most of the way to −shift (moving(x + ddf) = fixed(x))
        centre = np.asarray(batch.ddf[i])[10:18, 12:20].mean(axis=(0, 1))
        assert np.linalg.norm(centre + SHIFTS[i]) < 0.5 * np.linalg.norm(SHIFTS[i]), (i, centre)


def _rotation(degrees):
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_affine_batch_recovers_each_known_map():
    maps = []
    for degrees, shift in [(8.0, (1.0, -1.5)), (-6.0, (-2.0, 0.5)), (3.0, (0.5, 2.0))]:
        a = _rotation(degrees)
        c = (np.array(SHAPE) - 1) / 2
        m = np.eye(3)
        m[:2, :2], m[:2, 2] = a, c - a @ c + np.asarray(shift)
        maps.append(m)
    fixed = np.stack([_image(seed) for seed in range(3)])
    # moving(m · [x, 1]) = fixed(x): scipy resamples fixed through the inverse map
    moving = np.stack([ndimage.affine_transform(f, np.linalg.inv(m)[:2, :2], np.linalg.inv(m)[:2, 2], order=3)
                       for f, m in zip(fixed, maps)]).astype(np.float32)
    result = optimize_affine(fixed, moving, batch=True, transform="rigid", levels=(1,), steps=80)
    assert result.matrix.shape == (3, 3, 3) and result.losses.shape == (3, 80)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE], indexing="ij"))
    inside = np.sqrt(((grid - (np.array(SHAPE)[:, None, None] - 1) / 2) ** 2).sum(0)) < 9
    points = np.vstack([grid[:, inside], np.ones(inside.sum())])
    for i, truth in enumerate(maps):
        error = np.linalg.norm((result.matrix[i] @ points - truth @ points)[:2], axis=0)
        assert error.max() < 0.5, (i, error.max())
        alone = optimize_affine(fixed[i], moving[i], transform="rigid", levels=(1,), steps=80)
        np.testing.assert_allclose(result.matrix[i], alone.matrix, atol=2e-3)


@pytest.mark.slow
def test_register_batch_matches_single_pairs_and_warps_like_scipy():
    fixed, moving = _stack(SHIFTS[:2])
    labels = np.stack([(_shifted(f, s, order=0) > 1.2).astype(np.int32) for f, s in zip(fixed, SHIFTS[:2])])
    options = {"affine_options": {"levels": (1,), "steps": 20}, **FAST}
    batch = jaxreg.register(fixed, moving, batch=True, moving_labels=labels, **options)
    assert batch.ddf.shape == (2, *SHAPE, 2) and batch.warped.shape == (2, *SHAPE)
    assert batch.matrix.shape == (2, 3, 3) and batch.world_matrix().shape == (2, 3, 3)
    assert batch.info["losses"].shape == (2, 35) and batch.info["affine_losses"].shape == (2, 20)
    for i in range(2):
        ddf = np.asarray(batch.ddf[i], np.float64)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
        coords = grid + np.moveaxis(ddf, -1, 0)
        np.testing.assert_allclose(np.asarray(batch.warped[i]),
                                   ndimage.map_coordinates(moving[i], coords, order=1, mode="nearest"), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(batch.warped_labels[i]),
                                      ndimage.map_coordinates(labels[i], coords, order=0, mode="nearest"))
        alone = jaxreg.register(fixed[i], moving[i], moving_labels=labels[i], **options)
        # 55 optimiser steps amplify float rounding: the batched and the single programs differ by up
        # to 5.1e-3 voxels (one voxel of 1792, compiled at XLA's optimisation level 0); 1 % of a voxel
        np.testing.assert_allclose(ddf, np.asarray(alone.ddf), atol=1e-2)
        np.testing.assert_allclose(batch.matrix[i], alone.matrix, atol=1e-3)


@pytest.mark.parametrize("fixed, moving, kwargs, match", [
    (np.ones((2, 16, 16)), np.ones((3, 16, 16)), {}, "stacks"),
    (np.ones((16, 16)), np.ones((16, 16)), {}, "stacks"),
    (np.stack([np.eye(16), np.eye(16)]), np.stack([np.eye(16)[::-1], np.full((16, 16), np.nan)]), {}, "pair 1"),
    (np.stack([np.eye(16)] * 2), np.stack([np.eye(16)[::-1]] * 2), {"moving_labels": np.ones((16, 16))},
     "moving_labels"),
    (np.stack([np.eye(16)] * 2), np.stack([np.eye(16)[::-1]] * 2), {"fixed_mask": np.ones((3, 16, 16))},
     "fixed_mask"),
])
def test_bad_stacks_raise_a_clear_error(fixed, moving, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxreg.register(fixed, moving, batch=True, **kwargs)


def test_a_mask_that_is_empty_for_one_pair_is_refused():
    fixed, moving = _stack(SHIFTS[:2])
    mask = np.ones((2, *SHAPE), bool)
    mask[1] = False
    with pytest.raises(ValueError, match="all zero for some pair"):
        optimize(fixed, moving, batch=True, fixed_mask=mask, **FAST)
