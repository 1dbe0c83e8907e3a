"""Volume preprocessing: resampled values and affines against closed forms."""

import numpy as np
import pytest

from jaxreg.data import preprocess


def _world(affine, shape):
    """World coordinates (*S, 3) of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _oblique_affine():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.8, 2.5])
    affine[:3, 3] = [10.0, -4.0, 3.0]
    return affine


@pytest.mark.parametrize("new_shape", [(10, 23, 7), (30, 9, 16)])
def test_resample_keeps_world_positions(new_shape):
    # A function linear in world coordinates is reproduced exactly by linear interpolation,
    # so the resampled values must equal it at the new voxels' world positions (interior).
    affine, shape = _oblique_affine(), (20, 16, 12)
    gradient = np.array([0.3, -0.7, 1.1])
    image = _world(affine, shape) @ gradient
    out, new_affine = preprocess.resample_to_shape(image, affine, new_shape, order=1)
    assert out.shape == new_shape
    expected = _world(new_affine, new_shape) @ gradient
    scale = np.array(shape) / np.array(new_shape)
    # Voxels whose source position is inside [0, n-1] on every axis are interior.
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in new_shape], indexing="ij"), -1)
    src = (idx + 0.5) * scale - 0.5
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=-1)
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-9)
    # The field of view is kept: the outer voxel edges map to the same world points.
    np.testing.assert_allclose(new_affine @ [-0.5, -0.5, -0.5, 1], affine @ [-0.5, -0.5, -0.5, 1])
    far_new = new_affine @ [*(np.array(new_shape) - 0.5), 1]
    np.testing.assert_allclose(far_new, affine @ [*(np.array(shape) - 0.5), 1])


def test_resample_labels_nearest_and_channels():
    labels = np.zeros((8, 8, 8), np.int16)
    labels[2:6, 2:6, 2:6] = 3
    out, _ = preprocess.resample_to_shape(labels, np.eye(4), (16, 16, 16), order=0)
    assert out.dtype == np.int16 and set(np.unique(out)) == {0, 3}
    np.testing.assert_array_equal(out, np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2))
    field = np.random.default_rng(0).normal(size=(8, 8, 8, 3))
    out, _ = preprocess.resample_to_shape(field, np.eye(4), (4, 4, 4), order=1)
    assert out.shape == (4, 4, 4, 3)


def test_resample_to_spacing():
    affine = np.diag([1.5625, 1.5625, 10.0, 1.0])
    image = np.ones((216, 256, 10), np.float32)
    out, new_affine = preprocess.resample_to_spacing(image, affine, (1.5, 1.5, 3.15))
    assert out.shape == (225, 267, 32)  # round(216*1.5625/1.5), round(256*1.5625/1.5), round(100/3.15)
    np.testing.assert_allclose(preprocess.spacing_of(new_affine), [216 * 1.5625 / 225, 256 * 1.5625 / 267, 100 / 32])
    with pytest.raises(ValueError, match="spacing"):
        preprocess.resample_to_spacing(image, affine, (1.5, 0.0, 3.0))


def test_crop_or_pad_matches_slicing_and_padding():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(9, 6, 5)).astype(np.float32)
    affine = _oblique_affine()
    out, new_affine = preprocess.crop_or_pad(image, affine, (5, 10, 5), cval=-1.0)
    # axis 0: crop 9 -> 5 drops 2 at the start; axis 1: pad 6 -> 10 adds 2 before; axis 2 kept.
    reference = np.pad(image[2:7], ((0, 0), (2, 2), (0, 0)), constant_values=-1.0)
    np.testing.assert_array_equal(out, reference)
    # A voxel keeps its world position: new (0, 2, 0) is old (2, 0, 0).
    np.testing.assert_allclose(new_affine @ [0, 2, 0, 1], affine @ [2, 0, 0, 1])
    odd, _ = preprocess.crop_or_pad(np.arange(5.0), np.eye(4), (2,))
    np.testing.assert_array_equal(odd, [1.0, 2.0])
    with pytest.raises(ValueError, match="spatial axes"):
        preprocess.crop_or_pad(image, affine, (4,))


def test_rescale_intensity():
    x = np.array([2.0, 4.0, 6.0, 10.0])
    np.testing.assert_allclose(preprocess.rescale_intensity(x), [-1.0, -0.5, 0.0, 1.0])
    y = preprocess.rescale_intensity(np.r_[np.arange(100.0), 1e6], percentiles=(0, 90), out_range=(0, 1))
    assert y.dtype == np.float32 and y.max() == 1.0 and y[0] == 0.0
    np.testing.assert_allclose(y[:50], np.arange(50) / np.percentile(np.r_[np.arange(100.0), 1e6], 90), rtol=1e-6)
    np.testing.assert_array_equal(preprocess.rescale_intensity(np.full(3, 7.0)), [-1.0, -1.0, -1.0])
