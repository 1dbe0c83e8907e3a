"""jaxreg.spatial against scipy and closed forms, in 2-D and 3-D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi

import jaxreg
from jaxreg import spatial

SHAPES = [(12, 13), (9, 10, 11)]
SCIPY_MODE = {"nearest": "nearest", "constant": "grid-constant"}


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)


def _smooth_field(rng, shape, amplitude):
    """A smooth random displacement (voxels): low-frequency noise, Gaussian-blurred."""
    ndim = len(shape)
    noise = rng.normal(size=(*shape, ndim))
    field = np.stack([ndi.gaussian_filter(noise[..., k], 2.0) for k in range(ndim)], -1)
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


def _scipy_warp(image, ddf, order, mode, cval=0.0):
    coords = np.moveaxis(_grid(ddf.shape[:-1]) + ddf, -1, 0)
    if image.ndim == ddf.shape[-1]:
        return ndi.map_coordinates(image, coords, order=order, mode=SCIPY_MODE[mode], cval=cval)
    return np.stack(
        [ndi.map_coordinates(image[..., c], coords, order=order, mode=SCIPY_MODE[mode], cval=cval)
         for c in range(image.shape[-1])], -1)


def test_identity_grid_values_and_dtype():
    g = np.asarray(jaxreg.identity_grid((3, 4, 5)))
    assert g.shape == (3, 4, 5, 3) and g.dtype == np.float32
    assert tuple(g[2, 1, 4]) == (2.0, 1.0, 4.0)
    np.testing.assert_array_equal(g, _grid((3, 4, 5)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_warp_matches_scipy_map_coordinates(shape, order, mode):
    rng = np.random.default_rng(0)
    ndim = len(shape)
    image = rng.normal(size=shape).astype(np.float32)
    # The field's grid differs from the image's and reaches outside it.
    field_shape = tuple(s - 2 for s in shape)
    ddf = (rng.normal(size=(*field_shape, ndim)) * 3).astype(np.float32)
    out = np.asarray(jaxreg.warp(image, ddf, order=order, mode=mode, cval=0.0))
    assert out.shape == field_shape
    np.testing.assert_allclose(out, _scipy_warp(image, ddf, order, mode), atol=1e-5)


def test_warp_order0_rounds_ties_like_scipy_and_keeps_label_dtype():
    labels = np.arange(6 * 7, dtype=np.int32).reshape(6, 7)
    ddf = np.full((6, 7, 2), 0.5, np.float32)  # exactly half-way between voxels
    out = jaxreg.warp(labels, ddf, order=0)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), _scipy_warp(labels, ddf, 0, "nearest"))


def test_warp_channels_and_constant_cval():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(8, 9, 10, 2)).astype(np.float32)
    ddf = (rng.normal(size=(8, 9, 10, 3)) * 4).astype(np.float32)
    out = np.asarray(jaxreg.warp(image, ddf, mode="constant", cval=2.5))
    np.testing.assert_allclose(out, _scipy_warp(image, ddf, 1, "constant", cval=2.5), atol=1e-5)


def test_warp_integer_translation_is_a_shift():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(10, 11, 12)).astype(np.float32)
    ddf = np.zeros((10, 11, 12, 3), np.float32)
    ddf[..., 0], ddf[..., 2] = 2.0, -1.0
    out = np.asarray(jaxreg.warp(image, ddf, mode="constant"))
    # pull: out[i, j, k] = image[i + 2, j, k - 1]
    np.testing.assert_allclose(out[:-2, :, 1:], image[2:, :, :-1], atol=1e-6)
    assert np.all(out[-2:] == 0) and np.all(out[:, :, 0] == 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_compose_equals_warping_twice(shape):
    rng = np.random.default_rng(3)
    ndim = len(shape)
    big = tuple(3 * s for s in shape)
    # A smooth image so that one resampling and two resamplings agree closely.
    image = ndi.gaussian_filter(rng.normal(size=big), 3).astype(np.float32)
    u = _smooth_field(rng, big, 1.5)
    v = _smooth_field(rng, big, 1.5)
    once = np.asarray(jaxreg.warp(image, jaxreg.compose(u, v)))
    twice = _scipy_warp(_scipy_warp(image, u, 1, "nearest"), v, 1, "nearest")
    inner = tuple(slice(4, -4) for _ in range(ndim))  # away from clamped borders
    err = np.abs(once - twice)[inner]
    assert err.max() < 0.03 * np.abs(image).max(), err.max()
    # Closed form of the composition: v + u(x + v), with u sampled by scipy.
    ref = v + _scipy_warp(u, v, 1, "nearest")
    np.testing.assert_allclose(np.asarray(jaxreg.compose(u, v)), ref, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_integrate_velocity_zero_and_translation(shape):
    ndim = len(shape)
    zero = np.zeros((*shape, ndim), np.float32)
    np.testing.assert_array_equal(np.asarray(jaxreg.integrate_velocity(zero)), zero)
    t = np.arange(1, ndim + 1, dtype=np.float32) * 0.7
    constant = np.broadcast_to(t, (*shape, ndim)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jaxreg.integrate_velocity(constant)), constant, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32), (20, 20, 20)])
def test_integrate_velocity_inverse_composes_to_identity(shape):
    rng = np.random.default_rng(4)
    ndim = len(shape)
    v = _smooth_field(rng, shape, 2.0)
    fwd = jaxreg.integrate_velocity(jnp.asarray(v))
    bwd = jaxreg.integrate_velocity(-jnp.asarray(v))
    residual = np.abs(np.asarray(jaxreg.compose(fwd, bwd)))
    inner = tuple(slice(4, -4) for _ in range(ndim))
    # Interpolation error only: a few % of the 2-voxel displacement (a wrong sign gives ~4 voxels).
    assert residual[inner].max() < 0.05 * np.abs(v).max(), residual[inner].max()
    # And the integrated field is a real deformation (not the velocity itself).
    assert np.abs(np.asarray(fwd) - v).max() > 1e-3


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shapes", [((8, 10), (16, 5)), ((6, 7, 8), (12, 14, 4))])
def test_resize_ddf_matches_scipy_zoom(shapes, align_corners):
    old, new = shapes
    rng = np.random.default_rng(5)
    ddf = rng.normal(size=(*old, len(old))).astype(np.float32)
    out = np.asarray(jaxreg.resize_ddf(ddf, new, align_corners=align_corners))
    assert out.shape == (*new, len(old))
    if align_corners:
        factors = [(n - 1) / (o - 1) for o, n in zip(old, new)]
    else:
        factors = [n / o for o, n in zip(old, new)]
    for k in range(len(old)):
        ref = ndi.zoom(ddf[..., k], [n / o for o, n in zip(old, new)], order=1,
                       mode="nearest", grid_mode=not align_corners)
        np.testing.assert_allclose(out[..., k], ref * factors[k], atol=1e-5)


def test_resize_ddf_keeps_physical_translation():
    # A translation of 2 old voxels on a grid of 8 is 4 new voxels on a grid of 16.
    ddf = np.full((8, 8, 2), 2.0, np.float32)
    np.testing.assert_allclose(np.asarray(jaxreg.resize_ddf(ddf, (16, 16))), 4.0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_warp_points_linear_interpolation_vs_scipy(shape):
    rng = np.random.default_rng(6)
    ndim = len(shape)
    ddf = rng.normal(size=(*shape, ndim)).astype(np.float32)
    points = (rng.uniform(0, 1, size=(7, ndim)) * (np.array(shape) - 1)).astype(np.float32)
    ref = points + np.stack(
        [ndi.map_coordinates(ddf[..., k], points.T, order=1) for k in range(ndim)], -1)
    np.testing.assert_allclose(np.asarray(jaxreg.warp_points(points, ddf)), ref, atol=1e-5)


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("shape", SHAPES)
def test_jit_vmap_grad(shape):
    rng = np.random.default_rng(7)
    ndim = len(shape)
    image = jnp.asarray(rng.normal(size=shape), jnp.float32)
    u = jnp.asarray(_smooth_field(rng, shape, 1.0))
    batch = jnp.stack([u, -u])
    for fn in (jaxreg.warp, lambda i, d: jaxreg.compose(d, d), lambda i, d: jaxreg.integrate_velocity(d),
               lambda i, d: jaxreg.resize_ddf(d, tuple(2 * s for s in shape))):
        eager = fn(image, u)
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(image, u)), np.asarray(eager), atol=1e-5)
        batched = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(image, batch)
        np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(eager), atol=1e-5)
        grad = jax.jit(jax.grad(lambda d: jnp.sum(fn(image, d) ** 2)))(u)
        assert grad.shape == u.shape and bool(jnp.all(jnp.isfinite(grad)))
    points = jnp.asarray(rng.uniform(1, 5, size=(4, ndim)), jnp.float32)
    g = jax.grad(lambda d: jnp.sum(jax.jit(jaxreg.warp_points)(points, d)))(u)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("mode", ["nearest", "constant"])
@pytest.mark.parametrize("shape", SHAPES)
def test_warp_gradients_match_finite_differences(shape, mode):
    """Reverse mode (w.r.t. field and image) and forward mode against central differences.

    In float64 with a tiny step: the interpolant is piecewise linear, so a float32-sized
    step would cross its kinks and blur the reference.
    """
    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        image = jnp.asarray(ndi.gaussian_filter(rng.normal(size=shape), 1.5))
        weights = jnp.asarray(rng.normal(size=shape))
        u = jnp.asarray(_smooth_field(rng, shape, 3.0) + 0.25, jnp.float64)  # some samples outside
        du = jnp.asarray(_smooth_field(rng, shape, 1.0), jnp.float64)
        dimage = jnp.asarray(rng.normal(size=shape))
        loss = lambda i, d: jnp.sum(jaxreg.warp(i, d, mode=mode, cval=0.3) * weights)
        g_image, g_field = jax.grad(loss, argnums=(0, 1))(image, u)
        h = 1e-6
        fd_field = (loss(image, u + h * du) - loss(image, u - h * du)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(g_field, du)), float(fd_field), rtol=1e-5)
        fd_image = (loss(image + h * dimage, u) - loss(image - h * dimage, u)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(g_image, dimage)), float(fd_image), rtol=1e-5)
        _, jvp = jax.jvp(lambda d: loss(image, d), (u,), (du,))
        np.testing.assert_allclose(float(jvp), float(fd_field), rtol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    image = jnp.zeros((8, 8, 8))
    with pytest.raises(ValueError, match=r"`ddf`.*\(\*S, ndim\).*\(8, 8, 8, 2\)"):
        jaxreg.warp(image, jnp.zeros((8, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"`image`.*3 spatial axes.*\(8, 8\)"):
        jaxreg.warp(jnp.zeros((8, 8)), jnp.zeros((8, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`mode`.*'reflect'"):
        jaxreg.warp(image, jnp.zeros((8, 8, 8, 3)), mode="reflect")
    with pytest.raises(ValueError, match=r"`order`.*3"):
        jaxreg.warp(image, jnp.zeros((8, 8, 8, 3)), order=3)
    with pytest.raises(ValueError, match=r"`u` and `v`"):
        jaxreg.compose(jnp.zeros((8, 8, 2)), jnp.zeros((8, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`points`.*\(N, 3\)"):
        jaxreg.warp_points(jnp.zeros((4, 2)), jnp.zeros((8, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`shape`"):
        jaxreg.resize_ddf(jnp.zeros((8, 8, 2)), (4, 4, 4))
    with pytest.raises(ValueError, match=r"`steps`"):
        jaxreg.integrate_velocity(jnp.zeros((8, 8, 2)), steps=-1)
    with pytest.raises(ValueError, match=r"floating-point"):
        jaxreg.warp(image, jnp.zeros((8, 8, 8, 3), jnp.int32))


def test_inputs_are_converted_and_half_precision_fields_keep_coordinate_precision():
    rng = np.random.default_rng(9)
    image = rng.normal(size=(600, 4)).astype(np.float32)
    ddf = np.full((600, 4, 2), 0.3, np.float32)
    ref = _scipy_warp(image, ddf, 1, "nearest")
    # Lists are accepted like arrays.
    np.testing.assert_allclose(np.asarray(jaxreg.warp(image.tolist(), ddf.tolist())), ref, atol=1e-4)
    # A float16 field: coordinates up to 599 must still be built in float32.
    out16 = np.asarray(jaxreg.warp(image, jnp.asarray(ddf, jnp.float16)))
    np.testing.assert_allclose(out16, ref, atol=2e-3 * np.abs(image).max())
    out_bf16 = np.asarray(jaxreg.warp(image, jnp.asarray(ddf, jnp.bfloat16)))
    assert np.all(np.isfinite(out_bf16))


def test_resize_ddf_align_corners_needs_two_voxels():
    with pytest.raises(ValueError, match=r"align_corners=True.*\(1, 4\)"):
        jaxreg.resize_ddf(jnp.ones((4, 4, 2)), (1, 4), align_corners=True)


def test_spatial_module_is_the_public_one():
    assert jaxreg.warp is spatial.warp and jaxreg.compose is spatial.compose
