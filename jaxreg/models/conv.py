"""Convolutions for the networks: XLA's own on GPU/TPU, a faster formulation on CPU.

XLA:CPU runs 3-D convolutions through a slow generic loop (a 3×3×3, 32→32-channel conv at
64³ is several times slower than PyTorch's oneDNN), while its 2-D convolution (Eigen) and its
matrix products are fast. On CPU this module therefore writes each convolution the networks
use in terms of those:

* stride-1 convolutions (any padding): the taps of the first spatial axis are unfolded into
  channels, so a 3-D convolution becomes one 2-D convolution over the other two axes (a
  2-D convolution is XLA's own). The backward pass is a ``jax.custom_vjp``: the input
  gradient is the same operation with the flipped, transposed kernel; the kernel gradient
  is a matrix product of the input unfolded along the first axis with the output gradient
  unfolded along the others, accumulated over slabs of the first axis so that no large
  intermediate is materialised;
* convolutions whose kernel equals their stride with ``VALID`` padding (patch embeddings)
  and 1×1 convolutions: a reshape and one matrix product;
* transposed convolutions whose kernel equals their stride (2× up-sampling): one matrix
  product and a reshape (:func:`conv_transpose`).

Anything else (dilation, feature groups, other strides, other layouts) uses XLA's
convolution unchanged. Parameters are those of ``flax.linen.Conv`` / ``ConvTranspose``
(``kernel`` ``(*k, C_in, C_out)``, ``bias``): :class:`Conv` and :class:`ConvTranspose` are
drop-in replacements with identical parameter trees, and results equal XLA's to float32
rounding.

The choice is made when a function is traced, from the environment variable
``JAXREG_CONV``: ``auto`` (default: the matmul path when ``jax.default_backend()`` is
``"cpu"``, XLA's otherwise), ``xla`` or ``matmul`` (force one). Both paths support reverse-mode
differentiation (``grad``, ``vjp``) to any order of ``vmap``; the CPU path does not support
forward mode (``jvp``): set ``JAXREG_CONV=xla`` for that.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg import _random

__all__ = ["IMPLS", "Conv", "ConvTranspose", "conv_general_dilated", "conv_transpose", "impl", "max_pool"]

IMPLS = ("auto", "xla", "matmul")
_SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
# Rows (output voxels) per slab of the kernel-gradient product: large enough for an efficient
# matrix product, small enough that the unfolded slab stays in cache.
_SLAB_ROWS = 4096
# Output voxels per slab of the forward's unfolded input (the same reason).
_FORWARD_ROWS = 16384
# Unfolded intermediates up to this size are built whole, without a loop over slabs (fewer
# operations to compile; small volumes fit in cache anyway).
_WHOLE_BYTES = 8 * 2**20


def impl() -> str:
    """The convolution path a function traced now uses: ``"xla"`` or ``"matmul"``.

    Raises:
      ValueError: ``JAXREG_CONV`` set to something other than ``auto``, ``xla`` or ``matmul``.
    """
    choice = os.environ.get("JAXREG_CONV", "auto").strip().lower() or "auto"
    if choice not in IMPLS:
        raise ValueError(f"JAXREG_CONV must be one of {IMPLS}; got {os.environ['JAXREG_CONV']!r}.")
    if choice == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return choice


# --------------------------------------------------------------------------------------------
# Stride-1 convolution, channels last, explicit padding: forward and custom VJP.


def _divisor_at_most(n: int, m: int) -> int:
    """The largest divisor of ``n`` not above ``max(m, 1)``."""
    m = max(1, min(n, m))
    while n % m:
        m -= 1
    return m


def _forward(x: jax.Array, k: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """``lax.conv_general_dilated(x, k, 1, pads)`` (channels last); 3-D through 2-D convolutions."""
    nd = x.ndim - 2
    if nd != 3:
        return lax.conv_general_dilated(x, k, (1,) * nd, pads, dimension_numbers=_SPECS[nd])
    b, d = x.shape[:2]
    k1, cin, cout = k.shape[0], k.shape[-2], k.shape[-1]
    lo, hi = pads[0]
    out1 = d + lo + hi - k1 + 1
    conv2d = lambda v, w: lax.conv_general_dilated(v, w, (1, 1), pads[1:], dimension_numbers=_SPECS[2])
    if k1 * cout <= cin:
        # Few outputs (the flow layer): one 2-D convolution to k1·Co channels, one per depth
        # tap, then out[o] = Σ_a y[o + a - lo, tap a].
        k2 = jnp.moveaxis(k, 0, 3).reshape(k.shape[1], k.shape[2], cin, k1 * cout)
        y = conv2d(x.reshape((b * d,) + x.shape[2:]), k2)
        y = y.reshape((b, d) + y.shape[1:3] + (k1, cout))
        y = jnp.pad(y, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0), (0, 0)))
        return sum(y[:, a:a + out1, :, :, a] for a in range(k1))
    # Depth taps into channels, (B, slab, H, W, k1·Ci) with channel a·Ci + ci, one 2-D
    # convolution per slab of output depths (the unfolded slab stays in cache).
    xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
    k2 = jnp.moveaxis(k, 0, 2).reshape(k.shape[1], k.shape[2], k1 * cin, cout)
    plane = b * x.shape[2] * x.shape[3]
    whole = out1 * plane * k1 * cin * x.dtype.itemsize <= _WHOLE_BYTES
    slab = out1 if whole else _divisor_at_most(out1, _FORWARD_ROWS // max(1, plane))

    def one(xs):  # (B, slab + k1 - 1, H, W, Ci) -> (B, slab, H', W', Co)
        xu = jnp.concatenate([xs[:, a:a + slab] for a in range(k1)], axis=-1) if k1 > 1 else xs
        y = conv2d(xu.reshape((b * slab,) + xu.shape[2:]), k2)
        return y.reshape((b, slab) + y.shape[1:])

    if slab == out1:
        return one(xp)
    ys = lax.map(lambda i: one(lax.dynamic_slice_in_dim(xp, i * slab, slab + k1 - 1, axis=1)),
                 jnp.arange(out1 // slab))
    return jnp.moveaxis(ys, 0, 1).reshape((b, out1) + ys.shape[3:])


def _kernel_grad(x: jax.Array, dy: jax.Array, kshape: Sequence[int], pads) -> jax.Array:
    """``∂/∂k`` of ``Σ dy · conv(x, k)``: a matrix product, accumulated over slabs of axis 1."""
    nd = x.ndim - 2
    k1, rest = kshape[0], tuple(kshape[1:nd])
    cin, cout = x.shape[-1], dy.shape[-1]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))  # (B, P1, *P, Ci)
    sizes = xp.shape[2:-1]
    out1 = dy.shape[1]
    plane = x.shape[0] * math.prod(sizes)
    whole = out1 * plane * (k1 * cin + math.prod(rest) * cout) * x.dtype.itemsize <= _WHOLE_BYTES
    slab = out1 if whole else _divisor_at_most(out1, _SLAB_ROWS // max(1, plane))
    acc = jnp.promote_types(dy.dtype, jnp.float32)  # accumulate low precision in float32
    taps = list(np.ndindex(*rest))
    zero = jnp.zeros((), dy.dtype)

    def block(xs, ds):
        # xs (B, slab + k1 - 1, *P, Ci): x unfolded over the taps a of axis 1 → (rows, k1·Ci);
        # ds (B, slab, *out, Co): dy unfolded over the other taps t, shifted by t (zero
        # padded to the padded input's sides P) → (rows, taps·Co). Then
        # dk[a, t] = Σ_rows xu[:, a] ⊗ du[:, t] = Σ_v x_pad[v + (a, t)] dy[v].
        xu = jnp.concatenate([xs[:, a:a + slab] for a in range(k1)], axis=-1)
        # Unfolded one axis at a time, innermost first, so the channels end in the taps'
        # row-major order (t, co): XLA:CPU fuses a concatenation of three operands, not one of nine.
        du = ds
        for axis in reversed(range(len(rest))):
            r, pos = rest[axis], 2 + axis
            du = jnp.concatenate([lax.pad(du, zero, [(o, r - 1 - o, 0) if i == pos else (0, 0, 0) for i in range(du.ndim)])
                                  for o in range(r)], axis=-1)
        return lax.dot_general(xu.reshape(-1, k1 * cin), du.reshape(-1, len(taps) * cout), (((0,), (0,)), ((), ())),
                               preferred_element_type=acc)

    if slab == out1:
        g = block(xp, dy)
    else:
        def body(i, g):
            xs = lax.dynamic_slice_in_dim(xp, i * slab, slab + k1 - 1, axis=1)
            ds = lax.dynamic_slice_in_dim(dy, i * slab, slab, axis=1)
            return g + block(xs, ds)

        g = lax.fori_loop(0, out1 // slab, body, jnp.zeros((k1 * cin, len(taps) * cout), acc))
    # (a, ci) × (taps, co) → (k1, *rest, Ci, Co)
    g = g.reshape(k1, cin, *rest, cout)
    return jnp.moveaxis(g, 1, -2).astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, k: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return _forward(x, k, pads)


def _conv_fwd(x, k, pads):
    return _forward(x, k, pads), (x, k)


def _conv_bwd(pads, res, dy):
    x, k = res
    nd = x.ndim - 2
    ksize = k.shape[:nd]
    # Input gradient: the same convolution of dy with the flipped, transposed kernel; its
    # padding makes the output the input's size: (k-1-lo, k-1-hi).
    back = tuple((s - 1 - lo, s - 1 - hi) for s, (lo, hi) in zip(ksize, pads))
    kt = jnp.swapaxes(jnp.flip(k, tuple(range(nd))), -1, -2)
    if all(lo >= 0 and hi >= 0 for lo, hi in back):
        dx = _forward(dy, kt, back)
    else:  # padding wider than the kernel: correlate with a non-negative padding and crop
        wide = tuple((max(lo, 0), max(hi, 0)) for lo, hi in back)
        dx = _forward(dy, kt, wide)
        crop = tuple(slice(max(-lo, 0), dx.shape[i + 1] - max(-hi, 0)) for i, (lo, hi) in enumerate(back))
        dx = dx[(slice(None), *crop)]
    return dx, _kernel_grad(x, dy, k.shape[:nd], pads)


_conv.defvjp(_conv_fwd, _conv_bwd)
# Jitted so that eager calls (``module.init`` outside ``jit``) compile one program, not one per
# operation; inside a traced function this is inlined.
_conv_jit = jax.jit(_conv, static_argnums=2)


# --------------------------------------------------------------------------------------------
# Dispatch with lax.conv_general_dilated's signature (what flax.linen.Conv calls).


def _channels_last(dimension_numbers, nd: int, lhs_shape, rhs_shape) -> bool:
    if nd not in _SPECS:
        return False
    want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _SPECS[nd])
    if dimension_numbers is None:
        return False
    got = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return got == want


def _patches(x: jax.Array, p: Sequence[int]) -> jax.Array:
    """``(B, *S, C)`` → ``(B, *(S // p), prod(p)·C)``, the patch's voxels in kernel order (row-major)."""
    nd = len(p)
    b, sizes, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    grid = [s // q for s, q in zip(sizes, p)]
    x = x[(slice(None), *[slice(0, g * q) for g, q in zip(grid, p)])]
    x = x.reshape(b, *[v for g, q in zip(grid, p) for v in (g, q)], c)
    order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
    return x.transpose(order).reshape(b, *grid, math.prod(p) * c)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """``lax.conv_general_dilated`` with the CPU path of this module where it applies.

    Same signature and results as ``jax.lax.conv_general_dilated``. With :func:`impl`
    ``"matmul"``, channels-last 2-D/3-D convolutions without dilation or groups use the
    formulation of the module docstring; every other call goes to XLA.
    """
    nd = lhs.ndim - 2
    ksize = tuple(rhs.shape[:nd]) if nd > 0 else ()
    strides = tuple(window_strides)
    plain = (all(d == 1 for d in (lhs_dilation or ())) and all(d == 1 for d in (rhs_dilation or ()))
             and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
             and lhs.dtype == rhs.dtype)
    if not (plain and nd in (2, 3) and impl() == "matmul"
            and _channels_last(dimension_numbers, nd, lhs.shape, rhs.shape)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                         dimension_numbers, feature_group_count, batch_group_count, precision,
                                         preferred_element_type)
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], ksize, strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    zero = all(lo == 0 and hi == 0 for lo, hi in pads)
    if all(k == 1 for k in ksize) and all(s == 1 for s in strides) and zero:
        return jnp.einsum("...i,io->...o", lhs, rhs.reshape(rhs.shape[-2:]), precision=precision)
    if strides == ksize and zero:  # non-overlapping patches
        cin, cout = rhs.shape[-2:]
        return jnp.einsum("...i,io->...o", _patches(lhs, ksize), rhs.reshape(-1, cout), precision=precision)
    if all(s == 1 for s in strides) and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        return _conv_jit(lhs, rhs, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None, transpose_kernel=False,
                   precision=None, preferred_element_type=None):
    """``lax.conv_transpose`` with a matmul path for kernel == stride (see the module docstring).

    Same signature and results as ``jax.lax.conv_transpose`` (channels-last inputs when
    ``dimension_numbers`` is ``None``, as ``flax.linen.ConvTranspose`` calls it).
    """
    nd = lhs.ndim - 2
    ksize = tuple(rhs.shape[:nd])
    fast = (impl() == "matmul" and nd in (2, 3) and dimension_numbers is None and tuple(strides) == ksize
            and not transpose_kernel and all(d == 1 for d in (rhs_dilation or ())) and preferred_element_type is None
            and lhs.dtype == rhs.dtype)
    # Only the named paddings: explicit pads, even (0, 0), pad the dilated input (lax.conv_transpose
    # then returns (n − 2)·s + 2 voxels for kernel == stride, not n·s).
    fast = fast and isinstance(padding, str) and padding in ("SAME", "VALID")
    if not fast:
        return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation, dimension_numbers, transpose_kernel,
                                  precision, preferred_element_type)
    # Kernel == stride: each input voxel fills its own block of the output with the flipped
    # kernel (lax.conv_transpose does not flip it: a correlation of the dilated input),
    # y[s·i + t] = x[i] · k[s - 1 - t].
    b, grid, cout = lhs.shape[0], lhs.shape[1:-1], rhs.shape[-1]
    flipped = jnp.flip(rhs, tuple(range(nd))).reshape(-1, rhs.shape[-2], cout)
    y = jnp.einsum("...i,tio->...to", lhs, flipped, precision=precision)
    y = y.reshape(b, *grid, *ksize, cout)
    order = [0, *[v for i in range(nd) for v in (1 + i, 1 + nd + i)], 1 + 2 * nd]
    return y.transpose(order).reshape(b, *[g * s for g, s in zip(grid, ksize)], cout)


# --------------------------------------------------------------------------------------------
# Max pooling with window == stride (the U-Net's 2× down-sampling).


def _blocks(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """``(B, *S, C)`` → ``(B, S1/w1, w1, S2/w2, w2, ..., C)`` (a free reshape)."""
    shape = [x.shape[0]]
    for s, w in zip(x.shape[1:-1], window):
        shape += [s // w, w]
    return x.reshape(*shape, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block_max(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    return jnp.max(_blocks(x, window), axis=tuple(range(2, 2 * len(window) + 1, 2)))


def _block_max_fwd(x, window):
    y = _block_max(x, window)
    return y, (x, y)


def _block_max_bwd(window, res, dy):
    # The gradient goes to the first maximum of each window in row-major order, as XLA's
    # select-and-scatter (the gradient of ``nn.max_pool``) sends it.
    x, y = res
    nd = len(window)
    xb = _blocks(x, window)
    expand = lambda v: jnp.expand_dims(v, tuple(range(2, 2 * nd + 1, 2)))
    hit = xb == expand(y)
    taken = jnp.zeros_like(expand(y), dtype=bool)
    pieces = {}
    for offset in np.ndindex(*window):
        index = [slice(None)] * xb.ndim
        for axis, o in enumerate(offset):
            index[2 + 2 * axis] = slice(o, o + 1)
        first = hit[tuple(index)] & ~taken
        taken = taken | first
        pieces[offset] = first
    mask = _assemble(pieces, window, nd)
    return (jnp.where(mask, expand(dy), 0).astype(x.dtype).reshape(x.shape),)


def _assemble(pieces: dict, window: tuple[int, ...], nd: int, prefix: tuple = ()) -> jax.Array:
    """Concatenates the per-offset masks back along the window axes (row-major order)."""
    axis = len(prefix)
    if axis == nd:
        return pieces[prefix]
    return jnp.concatenate([_assemble(pieces, window, nd, prefix + (o,)) for o in range(window[axis])],
                           axis=2 + 2 * axis)


_block_max.defvjp(_block_max_fwd, _block_max_bwd)


def max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """``flax.linen.max_pool(x, window, strides=window)`` for ``(B, *S, C)`` with sides divisible by ``window``.

    On the matmul path (:func:`impl`) a block reshape and a max (XLA:CPU's reduce-window and
    select-and-scatter are several times slower); same values, and the same gradient (to the
    first maximum of each window).
    """
    window = tuple(int(w) for w in window)
    divisible = all(s % w == 0 for s, w in zip(x.shape[1:-1], window)) and x.ndim == len(window) + 2
    if impl() != "matmul" or not divisible:
        return nn.max_pool(x, window, strides=window)
    return _block_max(x, window)


# --------------------------------------------------------------------------------------------
# Flax modules: flax.linen.Conv / ConvTranspose with this module's functions.


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return _add_bias(y, bias), jnp.zeros((0,), bias.dtype)


def _add_bias_bwd(res, dy):
    # A bfloat16 sum over a volume stops growing at 256 × the element size (8-bit mantissa):
    # the bias gradient is accumulated in float32 instead.
    return dy, jnp.sum(dy, axis=tuple(range(dy.ndim - 1)), dtype=jnp.float32).astype(res.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed with :func:`conv_general_dilated` (same parameters and results).

    With a 16-bit ``dtype`` (mixed precision: float32 parameters, bfloat16 activations) the
    bias gradient is summed in float32; flax's own bias add would sum it in the activation
    dtype, which saturates over a volume.
    """

    conv_general_dilated: object = conv_general_dilated
    # flax's default (lecun normal), drawn flat: the same values, several times less compile (jaxreg._random)
    kernel_init: Callable = _random.lecun_normal

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        ksize = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        nd = len(ksize)
        low = self.dtype is not None and jnp.dtype(self.dtype).itemsize < 4
        plain = (low and self.use_bias and inputs.ndim == nd + 2 and self.mask is None
                 and self.feature_group_count == 1 and getattr(self, "preferred_element_type", None) is None
                 and self.input_dilation in (None, 1, (1,) * nd) and self.kernel_dilation in (None, 1, (1,) * nd)
                 and (isinstance(self.padding, str) and self.padding in ("SAME", "VALID")))
        if not plain:
            return super().__call__(inputs)
        strides = (1,) * nd if self.strides is None else (
            (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides))
        kernel = self.param("kernel", self.kernel_init, ksize + (inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
        y = conv_general_dilated(inputs, kernel, strides, self.padding, dimension_numbers=_SPECS[nd],
                                 precision=self.precision)
        return _add_bias(y, bias)


class ConvTranspose(nn.ConvTranspose):
    """``flax.linen.ConvTranspose`` computed with :func:`conv_transpose` (same parameters and results)."""

    kernel_init: Callable = _random.lecun_normal  # as Conv's

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        ksize = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        nd = len(ksize)
        strides = (1,) * nd if self.strides is None else (
            (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides))
        dilation = self.kernel_dilation
        plain = (strides == ksize and self.padding in ("SAME", "VALID") and not self.transpose_kernel
                 and self.mask is None and dilation in (None, 1, (1,) * nd) and inputs.ndim == nd + 2
                 and self.preferred_element_type is None)
        if not plain:
            return super().__call__(inputs)
        kernel = self.param("kernel", self.kernel_init, ksize + (inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = conv_transpose(inputs, kernel, strides, self.padding, precision=self.precision)
        return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
