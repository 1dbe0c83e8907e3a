"""Pipeline transforms: the augmented pair is still the same registration problem.

References: scipy's map_coordinates on the original arrays (images, labels, fields) and the
pull relation of the ground truth, checked with scipy interpolation, not with jaxreg.warp.
"""

import jax
import numpy as np
import pytest
from scipy import ndimage

from jaxreg.data import transforms
from jaxreg.data.synthetic import synthetic_pair

SHAPE = (20, 20, 20)


@pytest.fixture(scope="module")
def pair():
    raw = synthetic_pair(jax.random.key(3), SHAPE, anatomy="lung", num_points=20)
    out = {k: np.asarray(v) for k, v in raw.items()}
    rot = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out["affine"] = np.eye(4)
    out["affine"][:3, :3] = rot @ np.diag([1.5, 2.0, 2.5])
    out["affine"][:3, 3] = [5.0, -3.0, 1.0]
    out["spacing"] = np.array([1.5, 2.0, 2.5])
    return out


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)


def _sample(volume, coords, order):
    """scipy sampling of a volume (or a vector field, per component) at (*S, 3) coordinates."""
    if volume.ndim == coords.shape[-1] + 1:
        return np.stack([_sample(volume[..., c], coords, order) for c in range(volume.shape[-1])], -1)
    return ndimage.map_coordinates(volume, np.moveaxis(coords, -1, 0), order=order, mode="nearest")


def _pulled_labels(record):
    """moving_labels sampled at x + ddf(x): equals fixed_labels when ddf maps the pair."""
    return _sample(record["moving_labels"], _grid(SHAPE) + record["ddf"], 0)


def _agreement(a, b):
    inside = (a > 0) | (b > 0)
    return float(np.mean(a[inside] == b[inside]))


def _old_coordinates(old, new):
    """Where each new voxel lies in the old array, from the two affines."""
    index_map = np.linalg.inv(old["affine"]) @ new["affine"]
    return _grid(SHAPE) @ index_map[:3, :3].T + index_map[:3, 3]


def _check_points(record):
    moved = record["fixed_points"] + _sample(record["ddf"], record["fixed_points"][:, None, None, :], 1)[:, 0, 0]
    np.testing.assert_allclose(moved, record["moving_points"], atol=0.15)


def test_flip_transpose_keeps_world_and_correspondence(pair):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        out = transforms.flip_transpose(pair, rng, flip_axes=(0, 1, 2), transpose_axes=(0, 1, 2))
        coords = _old_coordinates(pair, out)
        np.testing.assert_allclose(coords, np.rint(coords), atol=1e-9)  # a pure voxel permutation
        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            np.testing.assert_array_equal(out[key], _sample(pair[key], coords, 0))
        np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), out["spacing"])
        assert _agreement(_pulled_labels(out), out["fixed_labels"]) >= 0.999
        _check_points(out)
        seen.add(tuple(np.round(out["affine"][:3, :3].ravel(), 6)))
    assert len(seen) > 1  # it is random


def test_flip_transpose_rejects_unequal_axes(pair):
    odd = dict(pair, fixed=pair["fixed"][:, :, :10], moving=pair["moving"][:, :, :10])
    with pytest.raises(ValueError, match="equal sizes"):
        transforms.flip_transpose(odd, np.random.default_rng(0), transpose_axes=(1, 2))
    with pytest.raises(ValueError, match="range"):
        transforms.flip_transpose(pair, np.random.default_rng(0), flip_axes=(3,))


def _g(x):
    """A smooth analytic image, so fixed = g(x + u(x)) needs no interpolation."""
    return np.sin(x[..., 0] / 3.0) + np.cos(x[..., 1] / 4.0) * np.sin(x[..., 2] / 5.0 + 0.3)


def _u(x):
    return 1.5 * np.stack([np.sin(x[..., 1] / 6.0), np.cos(x[..., 2] / 7.0), np.sin(x[..., 0] / 5.0)], -1)


@pytest.fixture(scope="module")
def analytic_pair(pair):
    grid = _grid(SHAPE)
    points = np.random.default_rng(5).uniform(4, 15, (30, 3))
    return {"fixed": _g(grid + _u(grid)).astype(np.float32), "moving": _g(grid).astype(np.float32),
            "ddf": _u(grid).astype(np.float32), "fixed_points": points, "moving_points": points + _u(points),
            "affine": pair["affine"], "spacing": pair["spacing"]}


@pytest.mark.parametrize("independent", [False, True])
def test_random_affine_keeps_correspondence(pair, analytic_pair, independent):
    rng = np.random.default_rng(1)
    options = {"rotation": 15.0, "scale": 0.1, "translation": 0.05, "shear": 0.05, "independent": independent}
    out = transforms.random_affine(pair, rng, **options)
    # The fixed image is the old one resampled where the new affine says its voxels are.
    coords = _old_coordinates(pair, out)
    np.testing.assert_allclose(out["fixed"], _sample(pair["fixed"], coords, 1), atol=1e-5)
    np.testing.assert_array_equal(out["fixed_labels"], _sample(pair["fixed_labels"], coords, 0))
    assert not np.allclose(out["fixed"], pair["fixed"])
    moved_apart = not np.allclose(out["moving"], _sample(pair["moving"], coords, 1), atol=1e-4)
    assert moved_apart == independent
    # On a smooth analytic pair, the transformed ground truth still maps the new pair:
    # fixed'(x) = moving'(x + u'(x)) away from the borders (where "nearest" padding differs).
    out = transforms.random_affine(analytic_pair, np.random.default_rng(1), **options)
    pulled = _sample(out["moving"], _grid(SHAPE) + out["ddf"], 1)
    interior = (slice(5, -5),) * 3
    before = np.abs(analytic_pair["fixed"] - analytic_pair["moving"])[interior].mean()
    error = np.abs(pulled - out["fixed"])[interior].mean()
    assert error < 0.03 * before + 0.02, (error, before)
    _check_points(out)


def test_normalize():
    rng = np.random.default_rng(2)
    base = {"fixed": rng.normal(3.0, 2.0, (6, 7, 8)).astype(np.float32),
            "moving": rng.gamma(2.0, 5.0, (6, 7, 8)).astype(np.float32), "ids": "x"}
    out = transforms.normalize(base, method="minmax")
    for side in ("fixed", "moving"):
        assert out[side].min() == 0.0 and out[side].max() == pytest.approx(1.0)
        ref = (base[side] - base[side].min()) / (base[side].max() - base[side].min())
        np.testing.assert_allclose(out[side], ref, atol=1e-6)
    z = transforms.normalize(base, method="zscore")
    np.testing.assert_allclose([z["fixed"].mean(), z["fixed"].std()], [0.0, 1.0], atol=1e-5)
    p = transforms.normalize(base, method="percentile")
    lo, hi = np.percentile(base["moving"], [0.5, 99.5])
    np.testing.assert_allclose(p["moving"], np.clip((base["moving"] - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out["ids"] == "x"
    with pytest.raises(ValueError, match="method"):
        transforms.normalize(base, method="hist")
