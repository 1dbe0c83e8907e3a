"""Label maps and edges: zero outside, ANTs' ``genericLabel``-like interpolation, an inverse that is 0 outside.

References: ``scipy.ndimage.map_coordinates`` (order 0 with ``grid-constant``; order 1 of each
label's indicator, then the arg-max, written out as a loop over labels) and closed forms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg import cli, spatial
from jaxreg import transform as tx

SHAPE = (18, 16, 14)


def _labels(shape=SHAPE, seed=0):
    """Three blobs and a one-voxel sheet, the first blob touching the border at index 0."""
    rng = np.random.default_rng(seed)
    smooth = [ndimage.gaussian_filter(rng.normal(size=shape), 2.0) for _ in range(2)]
    labels = np.zeros(shape, np.int32)
    labels[smooth[0] > 0.1] = 1
    labels[smooth[1] > 0.15] = 2
    labels[:4] = np.where(labels[:4] == 0, 3, labels[:4])  # label 3 fills the first slabs: it touches the edge
    labels[:, :, shape[2] // 2] = 7  # a thin sheet
    return labels


def _field(shape=SHAPE, seed=1, scale=1.5):
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.normal(size=shape), 3.0) for _ in shape]
    return np.stack([f * scale / f.std() for f in fields], -1).astype(np.float32)


def _coords(ddf):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in ddf.shape[:-1]], indexing="ij"))
    return grid + np.moveaxis(np.asarray(ddf, np.float64), -1, 0)


def _generic_label_reference(labels, ddf):
    """Each nonzero label's indicator interpolated linearly (zero outside), the background's weight one minus
    their sum; the largest weight wins (background first, then labels in increasing order, on ties)."""
    coords = _coords(ddf)
    values = [v for v in np.unique(labels) if v != 0]
    weights = [ndimage.map_coordinates((labels == v).astype(np.float64), coords, order=1, mode="grid-constant")
               for v in values]
    weights = [1.0 - np.sum(weights, axis=0)] + weights
    stack = np.stack(weights)
    best = np.argmax(stack, axis=0)
    ordered = np.sort(stack, axis=0)
    clear = ordered[-1] - ordered[-2] > 1e-4  # no near-tie: float32 and float64 agree on the winner
    return np.array([0] + values)[best], clear


def test_nearest_labels_are_zero_outside_like_scipy_grid_constant():
    labels = _labels()
    ddf = _field()
    ddf[..., 0] += 3.0  # reads 3 voxels beyond the far end of axis 0 near there
    got = np.asarray(spatial.warp_labels(labels, ddf))
    want = ndimage.map_coordinates(labels, _coords(ddf), order=0, mode="grid-constant", cval=0)
    assert got.dtype == labels.dtype
    assert np.mean(got == want) > 0.999  # ties at exactly .5
    # nothing is smeared from the edge: a shift out of the image leaves background
    shifted = np.zeros(SHAPE + (3,), np.float32)
    shifted[..., 0] = -5.0
    out = np.asarray(spatial.warp_labels(labels, shifted))
    np.testing.assert_array_equal(out[:5], 0)
    np.testing.assert_array_equal(out[5:], labels[:-5])
    edge = np.asarray(spatial.warp_labels(labels, shifted, mode="nearest"))  # the former behaviour, on request
    np.testing.assert_array_equal(edge[:5], np.broadcast_to(labels[:1], edge[:5].shape))


def test_linear_labels_match_the_per_label_reference():
    labels = _labels()
    ddf = _field(seed=2)
    got = np.asarray(spatial.warp_labels(labels, ddf, interpolation="linear"))
    want, clear = _generic_label_reference(labels, ddf)
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got[clear], want[clear])
    # the same under jit, with the labels' values given
    jitted = jax.jit(lambda l, d: spatial.warp_labels(l, d, interpolation="linear", values=(1, 2, 3, 7)))
    np.testing.assert_array_equal(np.asarray(jitted(labels, ddf)), got)


def test_bad_label_options_raise():
    labels = _labels()
    with pytest.raises(ValueError, match="`interpolation`"):
        spatial.warp_labels(labels, _field(), interpolation="cubic")
    with pytest.raises(ValueError, match="`values`"):
        jax.jit(lambda l: spatial.warp_labels(l, _field(), interpolation="linear"))(labels)
    with pytest.raises(ValueError, match="`label_interpolation`"):
        jaxreg.register(np.ones((16, 16)), np.ones((16, 16)), moving_labels=np.ones((16, 16), np.int32),
                        label_interpolation="majority")


def test_register_warps_labels_with_zero_outside_and_linear_on_request():
    rng = np.random.default_rng(4)
    fixed = ndimage.gaussian_filter(rng.normal(size=(24, 20)), 2.0).astype(np.float32)
    moving = np.roll(fixed, 2, axis=0)
    labels = np.zeros((24, 20), np.int32)
    labels[:6] = 1  # touches the border
    labels[10:16, 5:12] = 2
    options = {"levels": (1,), "steps": (10,), "affine": False}
    result = jaxreg.register(fixed, moving, moving_labels=labels, **options)
    coords = _coords(np.asarray(result.ddf))
    nearest = ndimage.map_coordinates(labels, coords, order=0, mode="grid-constant", cval=0)
    assert np.mean(np.asarray(result.warped_labels) == nearest) > 0.995
    linear = jaxreg.register(fixed, moving, moving_labels=labels, label_interpolation="linear", **options)
    want, clear = _generic_label_reference(labels, np.asarray(linear.ddf))
    np.testing.assert_array_equal(np.asarray(linear.warped_labels)[clear], want[clear])


def test_inverse_is_the_affine_part_alone_far_outside_the_fixed_grid():
    """A moving grid much larger than the fixed one: beyond the fixed grid exp(−v) counts 0."""
    fixed_shape, moving_shape = (10, 10, 10), (24, 24, 24)
    matrix = np.eye(4)
    matrix[:3, 3] = (7.0, 7.0, 7.0)  # fixed voxel x reads moving voxel x + 7: the fixed grid sits in the middle
    velocity = np.zeros(fixed_shape + (3,), np.float32)
    velocity[..., 0] = 1.5  # exp(v) = a shift of 1.5 voxels along axis 0
    inverse = np.asarray(tx.inverse_ddf(matrix, velocity, shape=moving_shape))
    affine_only = np.asarray(tx.total_ddf(np.linalg.inv(matrix), shape=moving_shape))
    np.testing.assert_allclose(affine_only, -7.0, atol=1e-6)
    far = np.zeros(moving_shape, bool)
    far[:6], far[18:] = True, True  # y − 7 outside [−0.5, 9.5] along axis 0
    np.testing.assert_allclose(inverse[far], affine_only[far], atol=1e-6)
    inner = np.zeros(moving_shape, bool)
    inner[8:16, 8:16, 8:16] = True  # well inside: the shift is undone
    np.testing.assert_allclose(inverse[inner][:, 0], -7.0 - 1.5, atol=1e-5)


def _save(path, array, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return str(path)


def test_apply_labels_default_to_zero_outside_and_take_linear(tmp_path):
    labels = _labels((12, 12, 12))
    affine = np.eye(4)
    matrix = np.eye(4)
    matrix[0, 3] = -3.0  # the fixed grid reads 3 voxels before the moving grid's start
    velocity = np.zeros((12, 12, 12, 3), np.float32)
    t = tx.Transform(matrix=matrix, deformation=np.zeros_like(velocity), velocity=velocity, fixed_shape=(12, 12, 12),
                     fixed_affine=affine, moving_shape=(12, 12, 12), moving_affine=affine, steps=7)
    tx.save_transform(tmp_path / "transform", t)
    image = _save(tmp_path / "labels.nii.gz", labels.astype(np.int16))
    outputs = {}
    for name, extra in (("nearest", ["--labels"]), ("edge", ["--labels", "--outside", "edge"]),
                        ("linear", ["--labels", "linear"])):
        out = tmp_path / f"{name}.nii.gz"
        assert cli.main(["apply", "--transform", str(tmp_path / "transform"), "--image", image, "--out", str(out),
                         *extra]) == 0
        outputs[name] = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(outputs["nearest"][:3], 0)
    np.testing.assert_array_equal(outputs["nearest"][3:], labels[:-3])
    np.testing.assert_array_equal(outputs["edge"][:3], np.broadcast_to(labels[:1], (3, 12, 12)))
    np.testing.assert_array_equal(outputs["linear"], outputs["nearest"])  # a whole-voxel shift: the same
