"""The built-in synthetic dataset: determinism, a ground truth that really maps the pair."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi

import jaxreg
from jaxreg.data.synthetic import ANATOMIES, synthetic_pair

SHAPES = [(32, 32, 32), (48, 48)]


def _np_dice(a, b):
    scores = []
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        scores.append(2 * np.sum(x & y) / (np.sum(x) + np.sum(y)))
    return float(np.mean(scores))


def _np_scipy_warp_labels(labels, ddf):
    grid = np.indices(ddf.shape[:-1]).astype(np.float64)
    coords = grid + np.moveaxis(np.asarray(ddf, np.float64), -1, 0)
    return ndi.map_coordinates(labels, coords, order=0, mode="nearest")


def _np_jacobian_det(ddf):
    ndim = ddf.shape[-1]
    grads = np.stack([np.stack(np.gradient(ddf[..., c]), -1) for c in range(ndim)], -2)
    return np.linalg.det(grads + np.eye(ndim))


@pytest.mark.parametrize("anatomy", ANATOMIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pair_is_deterministic_and_ground_truth_maps_it(anatomy, shape):
    key = jax.random.key(3)
    pair = {k: np.asarray(v) for k, v in synthetic_pair(key, shape, anatomy=anatomy).items()}
    again = {k: np.asarray(v) for k, v in synthetic_pair(key, shape, anatomy=anatomy).items()}
    other = synthetic_pair(jax.random.key(4), shape, anatomy=anatomy)
    assert pair.keys() == again.keys()
    for k in pair:
        np.testing.assert_array_equal(pair[k], again[k])
    assert not np.array_equal(pair["moving"], np.asarray(other["moving"]))

    ndim = len(shape)
    assert pair["fixed"].shape == pair["moving"].shape == shape
    assert pair["ddf"].shape == (*shape, ndim)
    assert pair["fixed_labels"].dtype == np.int32

    # The true field maps the moving labels onto the fixed ones (scipy warp, not ours).
    restored = _np_scipy_warp_labels(pair["moving_labels"], pair["ddf"])
    assert _np_dice(pair["fixed_labels"], restored) >= 0.95
    # ... and registration is not trivial: before it, overlap is clearly lower.
    initial = _np_dice(pair["fixed_labels"], pair["moving_labels"])
    assert initial < 0.9, initial
    # The images follow the labels: warping with the truth brings moving much closer to fixed.
    warped = ndi.map_coordinates(pair["moving"], np.indices(shape) + np.moveaxis(pair["ddf"], -1, 0),
                                 order=1, mode="nearest")
    before = np.mean((pair["moving"] - pair["fixed"]) ** 2)
    after = np.mean((warped - pair["fixed"]) ** 2)
    assert after < 0.7 * before, (before, after)
    # Diffeomorphic ground truth: no folding (numpy Jacobian, independent of jaxreg.metrics).
    assert _np_jacobian_det(pair["ddf"]).min() > 0


def test_lung_keypoints_follow_the_field():
    pair = synthetic_pair(jax.random.key(0), (32, 32, 32), anatomy="lung", num_points=20)
    fp, mp, ddf = (np.asarray(pair[k]) for k in ("fixed_points", "moving_points", "ddf"))
    assert fp.shape == mp.shape == (20, 3)
    ref = fp + np.stack([ndi.map_coordinates(ddf[..., k], fp.T, order=1) for k in range(3)], -1)
    np.testing.assert_allclose(mp, ref, atol=1e-4)
    labels = np.asarray(pair["fixed_labels"])
    assert np.all(labels[tuple(fp.astype(int).T)] > 0)  # drawn inside the lungs
    # Breathing moves points mostly along axis 0.
    motion = np.abs(mp - fp).mean(axis=0)
    assert motion[0] > motion[1] and motion[0] > motion[2]
    # TRE of the truth is 0; of the identity it is the motion itself.
    assert float(jnp.max(jaxreg.metrics.tre(fp, mp, ddf))) < 1e-4
    assert float(jnp.mean(jaxreg.metrics.tre(fp, mp, jnp.zeros_like(ddf)))) > 1.0


def test_cardiac_uses_acdc_labels_and_es_is_smaller():
    pair = synthetic_pair(jax.random.key(1), (16, 48, 48), anatomy="cardiac", max_disp=0.0)
    fixed, moving = np.asarray(pair["fixed_labels"]), np.asarray(pair["moving_labels"])
    assert set(np.unique(moving)) == {0, 1, 2, 3}
    # With only the physiological motion, the ES (moving) LV cavity is smaller than ED (fixed).
    assert np.sum(moving == 3) < np.sum(fixed == 3)


def test_bad_arguments():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`anatomy`.*'liver'"):
        synthetic_pair(key, (32, 32), anatomy="liver")
    with pytest.raises(ValueError, match=r"`shape`.*\(8, 8\)"):
        synthetic_pair(key, (8, 8))
    with pytest.raises(ValueError, match=r"`motion`"):
        synthetic_pair(key, (32, 32), motion=2.0)
