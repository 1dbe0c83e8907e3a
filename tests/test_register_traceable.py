"""``jaxreg.register`` from JAX code: under ``jit``, ``vmap`` and ``grad`` (the traceable core).

The references: the eager driver call (``jit``), a Python loop of eager calls (``vmap``) and
central finite differences of the jitted forward function (``grad``). Comparisons run in float64
(``jax.enable_x64``): Adam divides each gradient by its running RMS, so float32 rounding in one
step grows into differences of a few hundredths of a voxel between two compilations of the same
registration; in float64 the same programs agree to ~1e-8 voxel and differences of 1e-7 steps
resolve the derivative. The finite-difference directions are smooth images (Gaussian-filtered
noise): linear interpolation has kinks at integer coordinates, which a white-noise direction of
a larger step would straddle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi

import jaxreg

OPTIONS = {2: {"levels": (2, 1), "steps": (6, 6), "affine_options": {"steps": 6}},
           3: {"levels": (2, 1), "steps": (4, 4), "affine_options": {"steps": 4}}}
SHAPES = {2: (24, 24), 3: (16, 16, 16)}
SHIFT = (1.3, -0.6, 0.4)  # voxels: off the grid, so that no sample sits on a kink of the interpolation


def _smooth_noise(shape, seed):
    x = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    return x / x.std()


def _pair(ndim):
    fixed = _smooth_noise(SHAPES[ndim], ndim)
    moving = ndi.shift(fixed, SHIFT[:ndim], mode="nearest") + 0.1 * _smooth_noise(SHAPES[ndim], 10 + ndim)
    return fixed, moving


def _options(ndim, affine):
    return OPTIONS[ndim] | ({} if affine else {"affine": False})


TWO_D = [pytest.param(2, True, id="2d-affine", marks=pytest.mark.slow), pytest.param(2, False, id="2d-deformable")]
SLOW_2D = [pytest.param(2, True, id="2d-affine", marks=pytest.mark.slow),
           pytest.param(2, False, id="2d-deformable", marks=pytest.mark.slow)]
THREE_D = [pytest.param(3, True, id="3d-affine", marks=pytest.mark.slow),
           pytest.param(3, False, id="3d-deformable", marks=pytest.mark.slow)]
CASES = TWO_D + THREE_D


@pytest.mark.parametrize("ndim, affine", CASES)
def test_register_under_jit_equals_the_eager_call(ndim, affine):
    fixed, moving = _pair(ndim)
    options = _options(ndim, affine)
    with jax.enable_x64(True):
        eager = jaxreg.register(fixed, moving, **options)
        jitted = jax.jit(lambda f, m: jaxreg.register(f, m, **options))(fixed, moving)
        assert jitted.ddf.dtype == jnp.float64 and eager.ddf.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(jitted.ddf), np.asarray(eager.ddf), atol=1e-6)
        np.testing.assert_allclose(np.asarray(jitted.warped), np.asarray(eager.warped), atol=1e-6)
        np.testing.assert_allclose(np.asarray(jitted.matrix), eager.matrix, atol=1e-8)
        np.testing.assert_allclose(np.asarray(jitted.info["losses"]), eager.info["losses"], rtol=1e-6)
        assert bool(jitted.info["valid"])
    # The registration is a real one: the field moves the moving image onto the fixed one.
    before = np.mean((moving - fixed) ** 2)
    assert np.mean((np.asarray(eager.warped) - fixed) ** 2) < 0.5 * before
    if not affine:
        np.testing.assert_array_equal(eager.matrix, np.eye(ndim + 1))


@pytest.mark.slow
def test_float32_jit_stays_within_adam_amplified_rounding():
    fixed, moving = (x.astype(np.float32) for x in _pair(2))
    eager = jaxreg.register(fixed, moving, **OPTIONS[2])
    jitted = jax.jit(lambda f, m: jaxreg.register(f, m, **OPTIONS[2]).ddf)(fixed, moving)
    diff = np.abs(np.asarray(jitted) - np.asarray(eager.ddf))
    assert jitted.dtype == jnp.float32
    assert diff.mean() < 2e-3 and diff.max() < 5e-2, (diff.mean(), diff.max())


@pytest.mark.parametrize("ndim, affine", [SLOW_2D[0], THREE_D[0]])
def test_vmap_over_pairs_equals_a_loop(ndim, affine):
    pairs = [_pair(ndim), tuple(reversed(_pair(ndim)))]
    options = _options(ndim, affine)
    with jax.enable_x64(True):
        fixed = np.stack([f for f, _ in pairs])
        moving = np.stack([m for _, m in pairs])
        mapped = jax.vmap(lambda f, m: jaxreg.register(f, m, **options))(fixed, moving)
        for i, (f, m) in enumerate(pairs):
            alone = jaxreg.register(f, m, **options)
            np.testing.assert_allclose(np.asarray(mapped.ddf[i]), np.asarray(alone.ddf), atol=1e-6)
            np.testing.assert_allclose(np.asarray(mapped.matrix[i]), alone.matrix, atol=1e-8)
        assert mapped.ddf.shape == (2, *SHAPES[ndim], ndim)


@pytest.mark.parametrize("ndim, affine", [*SLOW_2D, *THREE_D])
def test_grad_equals_central_differences(ndim, affine):
    fixed, moving = _pair(ndim)
    options = _options(ndim, affine)
    target = _smooth_noise(SHAPES[ndim], 20)  # the scalar weighs the field and the warped image by it

    def scalar(fixed, moving, weight):
        result = jaxreg.register(fixed, moving, weight=weight, **options)
        return jnp.sum(result.ddf * target[..., None]) + jnp.sum(result.warped * target)

    with jax.enable_x64(True):
        # The values at the shifted inputs come from the same compiled program (its forward part):
        # one compilation instead of two, the larger part of this test's time.
        value_and_grad = jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2)))
        grads = value_and_grad(fixed, moving, 0.5)[1]
        value = lambda *args: value_and_grad(*args)[0]  # noqa: E731
        h = 1e-7
        directions = (_smooth_noise(SHAPES[ndim], 30), _smooth_noise(SHAPES[ndim], 31), 1.0)
        for k, (grad, direction) in enumerate(zip(grads, directions)):
            plus = [fixed, moving, 0.5]
            minus = [fixed, moving, 0.5]
            plus[k] = plus[k] + h * direction
            minus[k] = minus[k] - h * direction
            finite = (float(value(*plus)) - float(value(*minus))) / (2 * h)
            analytic = float(jnp.sum(grad * direction))
            assert np.isfinite(analytic) and abs(finite) > 1e-3, (k, analytic, finite)
            assert abs(analytic - finite) < 1e-2 * abs(finite), (k, analytic, finite)


@pytest.mark.parametrize("bad", ["nan", "constant", "empty mask"])
def test_invalid_input_inside_jit_is_flagged_with_an_identity_field(bad):
    fixed, moving = (x.astype(np.float32) for x in _pair(2))
    mask = np.ones(fixed.shape, bool)
    if bad == "nan":
        moving = moving.copy()
        moving[3, 4] = np.nan
    elif bad == "constant":
        fixed = np.full_like(fixed, 2.0)
    else:
        mask[:] = False
    result = _masked_register(fixed, moving, mask)
    assert not bool(result.info["valid"])
    np.testing.assert_array_equal(np.asarray(result.ddf), 0.0)
    np.testing.assert_array_equal(np.asarray(result.matrix), np.eye(3))
    good = _masked_register(*(x.astype(np.float32) for x in _pair(2)), np.ones(fixed.shape, bool))
    assert bool(good.info["valid"]) and np.abs(np.asarray(good.ddf)).max() > 0.5


@jax.jit
def _masked_register(fixed, moving, mask):  # one program for every case below
    return jaxreg.register(fixed, moving, fixed_mask=mask, **OPTIONS[2])


def test_the_driver_keeps_its_errors_and_refuses_what_a_trace_cannot_do():
    fixed, moving = _pair(2)
    with pytest.raises(ValueError, match="NaN"):
        jaxreg.register(np.full(fixed.shape, np.nan), moving)
    with pytest.raises(ValueError, match="callback"):
        jax.jit(lambda f, m: jaxreg.register(f, m, callback=print).ddf)(fixed, moving)
    with pytest.raises(ValueError, match="unknown option"):  # static checks run at trace time
        jax.jit(lambda f, m: jaxreg.register(f, m, smoothness=3).ddf)(fixed, moving)
    with pytest.raises(ValueError, match="same shape"):
        jax.jit(lambda f, m: jaxreg.register(f, m).ddf)(fixed, moving[:-1])


@pytest.mark.slow
def test_grad_memory_grows_with_the_square_root_of_the_steps():
    """Compile-only temp memory of the gradient (meaningful on CPU): with every step
    rematerialised and the scan nested √n × √n, 16× the steps costs far less than 16× the memory."""
    fixed, moving = (x.astype(np.float32) for x in _pair(2))

    def temp_bytes(steps):
        def loss(moving):
            return jnp.sum(jaxreg.register(fixed, moving, affine=False, levels=(1,), steps=(steps,)).warped)

        compiled = jax.jit(jax.grad(loss)).lower(moving).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(16), temp_bytes(256)
    # Linear growth would be 16x; sqrt growth 4x (plus a constant part).
    assert large < 6 * small, (small, large)
