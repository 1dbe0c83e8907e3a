"""Mixed precision (``model.dtype="bfloat16"``): bfloat16 activations, float32 parameters, fields and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxreg import methods
from jaxreg.models import conv, unet
from jaxreg.models.voxelmorph import VoxelMorph

SPEC3 = ("NDHWC", "DHWIO", "NDHWC")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("impl", ["xla", "matmul"])
def test_bf16_conv_bias_gradient_is_summed_in_float32(monkeypatch, impl):
    """A cotangent of ones over 32³ voxels: the bias gradient is the voxel count (closed form).

    A bfloat16 sum of ones stops at 256 (8-bit mantissa); flax's own bias add gives that.
    """
    monkeypatch.setenv("JAXREG_CONV", impl)
    layer = conv.Conv(2, (3, 3, 3), padding="SAME", dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 32, 1), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32)))(params)["params"]
    assert grads["bias"].dtype == jnp.float32 and params["params"]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(grads["bias"]), [32.0**3] * 2)


@pytest.mark.parametrize("impl", ["xla", "matmul"])
def test_bf16_conv_matches_float32_lax_to_bf16_rounding(monkeypatch, impl):
    """Values and kernel/bias gradients of a bfloat16 Conv against lax's float32 convolution."""
    monkeypatch.setenv("JAXREG_CONV", impl)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 12, 10, 8, 4)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(1, 12, 10, 8, 6)), jnp.float32)
    layer = conv.Conv(6, (3, 3, 3), padding="SAME", dtype=jnp.bfloat16)
    params = layer.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]

    def reference(k, b):
        return lax.conv_general_dilated(x, k, (1, 1, 1), "SAME", dimension_numbers=SPEC3) + b

    y_ref, vjp_ref = jax.vjp(reference, kernel, bias)
    y, vjp = jax.vjp(lambda p: layer.apply(p, x), params)
    assert y.dtype == jnp.bfloat16
    assert _rel(y, y_ref) < 1e-2  # bfloat16: 8-bit mantissa, relative rounding 2**-9 per value
    (grads,) = vjp(dy.astype(jnp.bfloat16))
    dk_ref, db_ref = vjp_ref(dy)
    assert _rel(grads["params"]["kernel"], dk_ref) < 2e-2
    assert _rel(grads["params"]["bias"], db_ref) < 2e-2


@pytest.mark.slow
def test_bf16_voxelmorph_parameters_and_field_stay_float32():
    """Same parameter tree (float32) as the float32 network; the field is float32 and close to it."""
    rng = np.random.default_rng(0)
    fixed, moving = (jnp.asarray(rng.normal(size=(1, 16, 16, 16, 1)), jnp.float32) for _ in range(2))
    f32, bf16 = VoxelMorph(), VoxelMorph(dtype="bfloat16")
    params = f32.init(jax.random.key(0), fixed, moving)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), bf16.init(jax.random.key(0), fixed, moving)) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), params)
    want, got = f32.apply(params, fixed, moving), bf16.apply(params, fixed, moving)
    assert got.dtype == jnp.float32
    assert _rel(got, want) < 5e-2


@pytest.mark.slow
def test_deqreg_bf16_train_step_float32_state_and_close_loss():
    """DEQReg with bfloat16 activations: float32 gradients, the loss within 2 % of float32's."""
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(size=(1, 16, 16)), jnp.float32) for k in ("fixed", "moving")}
    model = {"name": "deqreg", "encoder": (8, 8), "decoder": (8, 8, 8), "correction_states": 1}
    solver = {"max_steps": 4, "phantom_steps": 2}
    losses = {}
    for dtype in ("float32", "bfloat16"):
        method = methods.build({**model, "dtype": dtype}, {"similarity": "mse", "weight": 0.1}, solver)
        params = method.init(jax.random.key(0), batch)
        params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)
        (loss, _), grads = jax.value_and_grad(method.loss_fn, has_aux=True)(params, batch, jax.random.key(1))
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
        assert method.predict(params, batch["fixed"], batch["moving"]).dtype == jnp.float32
        losses[dtype] = float(loss)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)


def test_unknown_dtype_is_a_clear_error():
    for model in ({"name": "voxelmorph"}, {"name": "deqreg"}, {"name": "unroll"}):
        with pytest.raises(ValueError, match=r"`model.dtype` must be one of \('float32', 'bfloat16'\); got 'float16'"):
            methods.build({**model, "dtype": "float16"}, {"similarity": "mse"}, {})
    assert unet.activation_dtype(None) == jnp.float32


def test_deqreg_bf16_solve_converges_to_the_float32_field():
    """A contractive DEQReg (T(φ) = 0.3·φ + f_θ) solved with bfloat16 activations: the residual reaches the
    tolerance, and the field is within 3 % (relative L2) of the float32 solve with the same parameters."""
    from jaxreg.deq.model import DEQReg

    class Contractive(DEQReg):
        def update(self, params, x, ddf):
            return super().update(params, x, ddf) - 0.7 * ddf

    rng = np.random.default_rng(0)
    fixed, moving = (jnp.asarray(rng.uniform(size=(1, 16, 16)), jnp.float32) for _ in range(2))
    solver = {"method": "fixed_point", "max_steps": 60, "tol": 1e-2}
    fields = {}
    for dtype in ("float32", "bfloat16"):
        deq = Contractive(encoder=(8, 8), decoder=(8, 8, 8), dtype=dtype, solver=solver, correction_states=0)
        params = deq.init(jax.random.key(0), {"fixed": fixed, "moving": moving})
        params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)
        ddf, info, _ = deq.solve(params, fixed, moving)
        assert bool(info.converged.all()) and float(info.residual.max()) < 1e-2, (dtype, info.residual)
        fields[dtype] = ddf
    assert float(jnp.abs(fields["float32"]).max()) > 0.1  # a field of some size, not the zero start
    assert _rel(fields["bfloat16"], fields["float32"]) < 3e-2
