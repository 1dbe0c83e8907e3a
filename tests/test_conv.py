"""The CPU convolution path (jaxreg.models.conv) against XLA's convolution: values, gradients, parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxreg.models import conv
from jaxreg.models.denoiser import Denoiser
from jaxreg.models.voxelmorph import VoxelMorph

SPECS = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


@pytest.fixture
def matmul(monkeypatch):
    monkeypatch.setenv("JAXREG_CONV", "matmul")


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _compare(x, k, strides, padding, **kw):
    """Values and both gradients of conv_general_dilated against lax's, for a random cotangent."""
    nd = x.ndim - 2
    ref = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=SPECS[nd], **kw)
    new = lambda x, k: conv.conv_general_dilated(x, k, strides, padding, dimension_numbers=SPECS[nd], **kw)
    y_ref, vjp_ref = jax.vjp(ref, x, k)
    y_new, vjp_new = jax.vjp(new, x, k)
    assert y_new.shape == y_ref.shape and y_new.dtype == y_ref.dtype
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y_ref.shape), x.dtype)
    for got, want in zip((y_new, *vjp_new(dy)), (y_ref, *vjp_ref(dy))):
        assert _rel(got, want) < 2e-6


def _data(shape, cin, cout, kernel, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(*shape, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, cin, cout)), jnp.float32)
    return x, k


@pytest.mark.parametrize(
    "shape, cin, cout, kernel, padding",
    [
        ((1, 5, 6, 7), 3, 4, (3, 3, 3), "SAME"),  # odd and even sides
        ((2, 4, 4, 4), 1, 1, (3, 3, 3), "SAME"),  # one channel, batch 2
        ((1, 6, 5, 4), 8, 2, (3, 3, 3), "SAME"),  # few outputs: the output-unfolded branch
        ((1, 6, 5, 4), 2, 8, (3, 3, 3), "VALID"),
        ((2, 6, 5, 4), 2, 3, (3, 3, 3), ((2, 0), (1, 1), (0, 2))),  # asymmetric explicit padding
        ((1, 6, 5, 4), 5, 3, (2, 3, 2), "SAME"),  # even kernel sides
        ((1, 3, 3, 3), 1, 2, (3, 3, 3), ((3, 3), (0, 0), (1, 1))),  # padding wider than the kernel reach
        ((1, 9, 10), 2, 5, (3, 3), "SAME"),  # 2-D
        ((2, 7, 4), 4, 1, (3, 3), "VALID"),
    ],
)
def test_stride_one_matches_xla(matmul, shape, cin, cout, kernel, padding):
    x, k = _data(shape, cin, cout, kernel)
    _compare(x, k, (1,) * len(kernel), padding)


def test_slabs_match_xla(matmul, monkeypatch):
    """Forward in slabs of output depths and the kernel gradient accumulated over slabs."""
    monkeypatch.setattr(conv, "_FORWARD_ROWS", 64)
    monkeypatch.setattr(conv, "_WHOLE_BYTES", 0)
    monkeypatch.setattr(conv, "_SLAB_ROWS", 64)
    for shape, cin, cout in [((2, 12, 4, 5), 3, 4), ((1, 7, 6, 4), 2, 3)]:  # 7 output depths: slabs of 1
        x, k = _data(shape, cin, cout, (3, 3, 3))
        _compare(x, k, (1, 1, 1), "SAME")
    x, k = _data((1, 20, 8), 2, 3, (3, 3))
    _compare(x, k, (1, 1), "SAME")


@pytest.mark.parametrize("shape, kernel", [((2, 4, 6, 8), (2, 2, 2)), ((1, 6, 4), (2, 2)), ((1, 6, 9), (3, 3))])
def test_patches_and_pointwise_match_xla(matmul, shape, kernel):
    x, k = _data(shape, 3, 5, kernel)
    _compare(x, k, kernel, "VALID")  # kernel == stride: patch embedding
    x, k = _data(shape, 3, 5, (1,) * len(kernel))
    _compare(x, k, (1,) * len(kernel), "SAME")  # 1×1


def test_other_convolutions_fall_back_to_xla(matmul):
    x, k = _data((1, 7, 6, 5), 2, 3, (3, 3, 3))
    _compare(x, k, (2, 2, 2), "SAME")  # stride != kernel
    _compare(x, k, (1, 1, 1), "SAME", rhs_dilation=(2, 1, 1))
    x, k = _data((1, 6, 5, 4), 4, 2, (3, 3, 3))
    _compare(x, k[..., :2, :], (1, 1, 1), "SAME", feature_group_count=2)


@pytest.mark.parametrize("nd, padding", [(3, "SAME"), (3, "VALID"), (2, "SAME")])
def test_conv_transpose_matches_flax(matmul, nd, padding):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *(3, 2, 4)[:nd], 3)), jnp.float32)
    ref = nn.ConvTranspose(4, (2,) * nd, strides=(2,) * nd, padding=padding)
    new = conv.ConvTranspose(4, (2,) * nd, strides=(2,) * nd, padding=padding)
    params = jax.jit(ref.init)(jax.random.key(0), x)
    assert jax.eval_shape(new.init, jax.random.key(0), x) == jax.eval_shape(ref.init, jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(1), p.shape), params)  # a non-zero bias

    @jax.jit
    def both(params, x):
        y_ref, vjp_ref = jax.vjp(lambda p, x: ref.apply(p, x), params, x)
        y_new, vjp_new = jax.vjp(lambda p, x: new.apply(p, x), params, x)
        return y_ref, y_new, vjp_ref(jnp.ones_like(y_ref)), vjp_new(jnp.ones_like(y_ref))

    y_ref, y_new, g_ref, g_new = both(params, x)
    assert _rel(y_new, y_ref) < 2e-6
    for got, want in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
        assert _rel(got, want) < 2e-6


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 0), (0, 0), (0, 0)), ((1, 0), (0, 1), (1, 1))])
def test_conv_transpose_equals_lax_for_every_padding(matmul, padding):
    """Against ``lax.conv_transpose`` itself: explicit pads (even zeros) give (n − 2)·s + 2 voxels there."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1, 3, 4, 5, 2)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 2, 2, 2, 3)), jnp.float32)
    dims = ("NDHWC", "DHWIO", "NDHWC")
    want = jax.lax.conv_transpose(x, k, (2, 2, 2), padding, dimension_numbers=dims)
    got = conv.conv_transpose(x, k, (2, 2, 2), padding)
    assert got.shape == want.shape
    assert _rel(got, want) < 2e-6
    if not isinstance(padding, str) and padding[0] == (0, 0):
        assert want.shape[1:4] == (2 * 3 - 2, 2 * 4 - 2, 2 * 5 - 2)


def test_impl_choice(monkeypatch):
    """What a traced convolution becomes (its jaxpr), not impl()'s own rule: by default the matmul
    path (with its custom_vjp) on the CPU and XLA's convolution elsewhere
    (docs: a GPU keeps cuDNN); JAXREG_CONV=xla forces XLA's anywhere."""
    x, k = _data((1, 4, 4, 4), 2, 2, (3, 3, 3))

    def traced():
        return str(jax.make_jaxpr(lambda x, k: conv.conv_general_dilated(x, k, (1, 1, 1), "SAME",
                                                                        dimension_numbers=SPECS[3]))(x, k))

    monkeypatch.delenv("JAXREG_CONV", raising=False)
    default = traced()
    if jax.default_backend() == "cpu":
        assert "custom_vjp" in default  # the matmul path brings its own gradient
    else:
        assert "conv_general_dilated" in default and "custom_vjp" not in default
    monkeypatch.setenv("JAXREG_CONV", "XLA")
    jaxpr = traced()
    assert "conv_general_dilated" in jaxpr and "custom_vjp" not in jaxpr
    monkeypatch.setenv("JAXREG_CONV", "fast")
    with pytest.raises(ValueError, match="JAXREG_CONV"):
        conv.impl()


def _with_flax_conv(monkeypatch):
    """Build the networks with flax.linen's own Conv/ConvTranspose (the reference parameter trees)."""
    from jaxreg.models import denoiser, unet, voxelmorph

    for module in (unet, voxelmorph, denoiser):
        monkeypatch.setattr(module, "Conv", nn.Conv)
    monkeypatch.setattr(denoiser, "ConvTranspose", nn.ConvTranspose)


def _param_shapes(model, *args):
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)


def test_networks_have_flax_conv_parameter_trees(matmul, monkeypatch):
    """Same parameter names, shapes and dtypes as with flax.linen.Conv: checkpoints stay valid."""
    vol = jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32)
    img = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    field = jax.ShapeDtypeStruct((1, 8, 8, 8, 3), jnp.float32)
    small = jax.ShapeDtypeStruct((1, 8, 8, 8, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    denoiser = Denoiser(features=8, depths=(1, 1), heads=(1, 2), window=(2, 2, 2), patch=2)
    cases = [(VoxelMorph(), (vol, vol)), (VoxelMorph(), (img, img)), (denoiser, (field, t, small, small))]
    ours = [_param_shapes(model, *args) for model, args in cases]
    _with_flax_conv(monkeypatch)
    for (model, args), got in zip(cases, ours):
        assert got == _param_shapes(model, *args)


@pytest.mark.slow
def test_voxelmorph_forward_and_gradient_equal_on_both_paths(monkeypatch):
    """A small VoxelMorph (U-Net + flow layer): loss and parameter gradients, XLA vs matmul path."""
    rng = np.random.default_rng(0)
    fixed, moving = (jnp.asarray(rng.normal(size=(1, 8, 10, 6, 1)), jnp.float32) for _ in range(2))
    model = VoxelMorph(encoder=(8,), decoder=(8, 16))  # flow 16 → 3: the output-unfolded branch
    params = jax.jit(model.init)(jax.random.key(0), fixed, moving)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)  # flow ≠ 0
    results = {}
    for impl in ("xla", "matmul"):
        monkeypatch.setenv("JAXREG_CONV", impl)
        loss = lambda p: jnp.sum(model.apply(p, fixed, moving) ** 2)
        results[impl] = jax.jit(jax.value_and_grad(loss))(params)  # traced anew for each path
    (v_xla, g_xla), (v_mm, g_mm) = results["xla"], results["matmul"]
    assert float(v_mm) == pytest.approx(float(v_xla), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_mm), jax.tree.leaves(g_xla)):
        assert _rel(a, b) < 1e-4


@pytest.mark.parametrize("shape", [(2, 4, 6, 8, 3), (1, 6, 4, 2)])
def test_max_pool_matches_flax_including_ties(matmul, shape):
    """Values and gradients equal bit for bit; with ties the gradient goes to the first maximum."""
    rng = np.random.default_rng(0)
    window = (2,) * (len(shape) - 2)
    for x in (rng.normal(size=shape), np.round(rng.normal(size=shape))):  # rounded: many ties
        x = jnp.asarray(x, jnp.float32)
        y_ref, vjp_ref = jax.vjp(lambda x: nn.max_pool(x, window, strides=window), x)
        y_new, vjp_new = jax.vjp(lambda x: conv.max_pool(x, window), x)
        dy = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
        np.testing.assert_array_equal(y_new, y_ref)
        np.testing.assert_array_equal(vjp_new(dy)[0], vjp_ref(dy)[0])
