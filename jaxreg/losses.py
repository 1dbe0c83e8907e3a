"""Training losses. Every loss is a scalar, differentiable, and **lower is better**.

Each function takes one sample; batch with ``jax.vmap`` and average.

Images are ``(*S)`` or ``(*S, C)``. The spatial rank is the keyword ``ndim``; when it is
``None`` a rank-2 array is a 2-D image, rank 3 a 3-D image and rank 4 a 3-D image with
channels — pass ``ndim=2`` for 2-D images with channels. Multi-channel losses are averaged
over channels.

This module is a leaf: it imports nothing of jaxreg but the private argument checks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxreg._checks import check_ddf as _check_field
from jaxreg._checks import check_same_shape

__all__ = [
    "bending_energy",
    "dice",
    "diffusion",
    "lncc",
    "mse",
    "mutual_information",
    "ssim",
]


# ----------------------------------------------------------------------------- helpers
_ROUNDOFF = 2e-6  # ~16 float32 epsilons: relative size of cancellation error in Σx² − (Σx)²/n


def _spatial_rank(x: jax.Array, ndim: int | None, name: str) -> int:
    if ndim is None:
        if x.ndim not in (2, 3, 4):
            raise ValueError(
                f"`{name}` must be a 2-D or 3-D image (*S) or (D, H, W, C); got shape "
                f"{tuple(x.shape)}. Pass ndim= for other layouts."
            )
        return min(x.ndim, 3)
    if ndim not in (2, 3) or x.ndim not in (ndim, ndim + 1):
        raise ValueError(
            f"`{name}` must have shape (*S) or (*S, C) with ndim={ndim} spatial axes; "
            f"got shape {tuple(x.shape)} and ndim={ndim!r}."
        )
    return ndim


def _image_pair(fixed, warped, ndim: int | None) -> tuple[jax.Array, jax.Array, int]:
    """Validates a pair of images; returns them as ``(*S, C)`` float arrays and the rank."""
    fixed, warped = jnp.asarray(fixed), jnp.asarray(warped)
    check_same_shape(fixed, warped, "fixed", "warped")
    rank = _spatial_rank(fixed, ndim, "fixed")
    if fixed.ndim == rank:
        fixed, warped = fixed[..., None], warped[..., None]
    dtype = jnp.result_type(fixed.dtype, warped.dtype, jnp.float32)
    return fixed.astype(dtype), warped.astype(dtype), rank


def _per_channel(fn: Callable[[jax.Array, jax.Array], jax.Array], fixed, warped) -> jax.Array:
    """Mean over channels of ``fn(fixed[..., c], warped[..., c])``."""
    return jnp.mean(jax.vmap(fn, in_axes=-1)(fixed, warped))


def _valid_filter(x: jax.Array, kernel: jax.Array, rank: int, *, pad_mode: str | None = None) -> jax.Array:
    """Separable correlation with a 1-D odd ``kernel`` on the first ``rank`` axes.

    "valid" mode (each axis shrinks by ``len(kernel) - 1``) of an already padded array, or,
    with ``pad_mode`` (a ``jnp.pad`` mode), "same" size: each axis is padded just before it
    is filtered, which keeps the intermediate arrays small.

    A sum of shifted slices: exact, cheap for the small windows used here, and its
    transpose (the gradient) is the same kind of sum.
    """
    taps = kernel.shape[0]
    for axis in range(rank):
        if pad_mode is not None:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (taps // 2, taps // 2)
            x = jnp.pad(x, pad, mode=pad_mode)
        size = x.shape[axis] - taps + 1
        x = sum(kernel[i] * jax.lax.slice_in_dim(x, i, i + size, axis=axis) for i in range(taps))
    return x


def _check_window(window: int) -> None:
    if not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise ValueError(f"`window` must be a positive odd integer; got {window!r}.")


def _box_sum(x: jax.Array, windows: Sequence[int]) -> jax.Array:
    """Valid box sums of ``x``, window ``windows[a]`` on axis ``a`` (1: untouched).

    One ``lax.reduce_window`` per axis: equal to a sum of shifted slices up to rounding, and on
    XLA:CPU 2.8x faster with its gradient and 2.3x faster to compile (LNCC at 80×96×72: 35 vs
    95 ms per value and gradient, 1.3 vs 2.8 s to compile).
    """
    for axis, taps in enumerate(windows):
        if taps > 1:
            dims = [1] * x.ndim
            dims[axis] = taps
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, tuple(dims), (1,) * x.ndim, "VALID")
    return x


# ----------------------------------------------------------------------------- similarity
def lncc(fixed, warped, *, window: int | Sequence[int] = 5, mask=None, eps: float = 1e-5,
         ndim: int | None = None) -> jax.Array:
    """Local normalised cross-correlation loss (VoxelMorph definition), lower is better.

    For a box window of ``window**ndim`` voxels around every voxel (zero "same" padding),
    ``cc = cross² / (var_f · var_w + eps)`` with the windowed sums
    ``cross = Σfw − Σf·Σw/n``, ``var = Σf² − (Σf)²/n``; the loss is ``1 − mean(cc)``, or with
    ``mask`` the weighted mean ``1 − Σ m·cc / max(Σ m, 1)`` (the voxels a mask leaves out
    still enter the windows of their neighbours, as image content).

    Numerics (float32): the sums are taken after subtracting each image's global mean from
    the zero-padded image (exact, variances and covariances are shift invariant within a
    window); a window whose variance is at round-off level (``var <= 2e-6 Σf²``) counts as
    constant (``var = 0``); and ``cross²`` is capped at ``var_f · var_w``
    (Cauchy-Schwarz). So constant regions, e.g. CT air at -1000 HU, give ``cc = 0``, never
    NaN or a value outside ``[0, 1)``.

    Args:
      fixed: ``(*S)`` or ``(*S, C)`` image.
      warped: same shape as ``fixed``.
      window: odd window side in voxels, or one odd side per spatial axis (anisotropic
        voxels: fewer voxels along the thick axis).
      mask: ``(*S)`` voxel weights (``0``/``1`` or in between, e.g. a resampled mask), or
        ``None`` for all voxels.
      eps: stabiliser of the denominator (in squared-intensity² units).
      ndim: spatial rank, see the module docstring.

    Returns:
      Scalar in ``(0, 1]``; near 0 for a locally perfect linear match.
    """
    fixed, warped, rank = _image_pair(fixed, warped, ndim)
    windows = (window,) * rank if isinstance(window, numbers.Integral) else tuple(window)
    if len(windows) != rank:
        raise ValueError(f"`window` must be one odd side or one per spatial axis ({rank}); got {window!r}.")
    for side in windows:
        _check_window(side)
    if mask is not None:
        mask = jnp.asarray(mask, fixed.dtype)
        if mask.shape != fixed.shape[:rank]:
            raise ValueError(f"`mask` must have the spatial shape {tuple(fixed.shape[:rank])}; got {tuple(mask.shape)}.")
    n = float(math.prod(windows))
    pad = [(w // 2, w // 2) for w in windows]

    def centred_padded(x):
        x = jnp.pad(x, pad)  # the zero padding of the definition, then an exact shift
        return x - jax.lax.stop_gradient(jnp.mean(x))

    def local_variance(sum_sq, sum_x):
        var = sum_sq - sum_x * sum_x / n
        # Below ~16 float32 ulps of Σx² the difference is round-off, not signal.
        return jnp.where(var > _ROUNDOFF * sum_sq, var, 0.0)

    def cc_map(f, w):  # (*S) each -> (*S)
        f, w = centred_padded(f), centred_padded(w)
        sf, sw = _box_sum(f, windows), _box_sum(w, windows)
        sff, sww = _box_sum(f * f, windows), _box_sum(w * w, windows)
        cross = _box_sum(f * w, windows) - sf * sw / n
        var_prod = local_variance(sff, sf) * local_variance(sww, sw)
        return jnp.minimum(cross * cross, var_prod) / (var_prod + eps)

    if mask is None:
        return 1.0 - _per_channel(lambda f, w: jnp.mean(cc_map(f, w)), fixed, warped)
    total = jnp.maximum(jnp.sum(mask), 1.0)
    return 1.0 - _per_channel(lambda f, w: jnp.sum(cc_map(f, w) * mask) / total, fixed, warped)


def _gaussian_kernel(window: int, sigma: float) -> jax.Array:
    r = jnp.arange(window, dtype=jnp.float32) - (window - 1) / 2
    k = jnp.exp(-0.5 * (r / sigma) ** 2)
    return k / jnp.sum(k)


def ssim(
    fixed,
    warped,
    *,
    window: int = 9,
    sigma: float = 1.5,
    data_range: float | None = None,
    ndim: int | None = None,
) -> jax.Array:
    """Structural dissimilarity ``1 − mean SSIM`` (Wang et al. 2004), lower is better.

    Local means, variances and covariance use a normalised Gaussian window (side ``window``,
    std ``sigma`` voxels, separable) with numpy ``"reflect"`` padding (mirror without
    repeating the edge voxel); population (not sample) statistics;
    ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``; the SSIM map is averaged over all voxels.

    Args:
      fixed: ``(*S)`` or ``(*S, C)`` image.
      warped: same shape as ``fixed``.
      window: odd window side in voxels.
      sigma: Gaussian standard deviation in voxels.
      data_range: ``L``, the intensity range. ``None`` uses ``max(fixed) − min(fixed)`` over
        the whole sample (not differentiated through; 1 if ``fixed`` is constant); pass it
        explicitly for
        fixed-range data, e.g. 2.0 for images in [-1, 1].
      ndim: spatial rank, see the module docstring.

    Returns:
      Scalar in ``[0, 2]``; 0 for identical images.
    """
    _check_window(window)
    if sigma <= 0:
        raise ValueError(f"`sigma` must be > 0; got {sigma!r}.")
    fixed, warped, rank = _image_pair(fixed, warped, ndim)
    if any(s < (window + 1) // 2 for s in fixed.shape[:-1]):
        raise ValueError(
            f"every spatial axis must be at least {(window + 1) // 2} voxels for window="
            f"{window} (reflect padding); got image shape {tuple(fixed.shape)}."
        )
    if data_range is None:
        data_range = jax.lax.stop_gradient(jnp.max(fixed) - jnp.min(fixed))
        # A constant fixed image has no range; use 1 rather than C1 = C2 = 0 (0/0 = NaN).
        data_range = jnp.where(data_range > 0, data_range, 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    kernel = _gaussian_kernel(window, sigma).astype(fixed.dtype)

    def one(f, w):
        g = lambda x: _valid_filter(x, kernel, rank, pad_mode="reflect")
        mu_f, mu_w = g(f), g(w)
        var_f = g(f * f) - mu_f * mu_f
        var_w = g(w * w) - mu_w * mu_w
        cov = g(f * w) - mu_f * mu_w
        num = (2 * mu_f * mu_w + c1) * (2 * cov + c2)
        den = (mu_f * mu_f + mu_w * mu_w + c1) * (var_f + var_w + c2)
        return jnp.mean(num / den)

    return 1.0 - _per_channel(one, fixed, warped)


def mse(fixed, warped) -> jax.Array:
    """Mean squared intensity difference (any shape, same for both), lower is better."""
    fixed, warped = jnp.asarray(fixed), jnp.asarray(warped)
    check_same_shape(fixed, warped, "fixed", "warped")
    return jnp.mean((fixed - warped) ** 2)


def mutual_information(
    fixed,
    warped,
    *,
    bins: int = 32,
    sigma: float | None = None,
    mask=None,
) -> jax.Array:
    """Negative global mutual information with Parzen (Gaussian) windows, lower is better.

    Each image is min-max scaled to ``[0, 1]`` over all its voxels, masked or not (the range
    is not differentiated through);
    every voxel contributes to ``bins`` equally spaced bin centres with weights
    ``exp(−(x − c)² / 2σ²)`` normalised per voxel; the joint histogram is the mean outer
    product of the two weight vectors and ``MI = Σ p log(p / (p_f p_w))`` in nats.
    Use it for multi-modal pairs; memory is ``O(voxels × bins)``.

    Args:
      fixed: image of any shape (channels are treated as more voxels).
      warped: same shape as ``fixed``.
      bins: number of histogram bins (>= 2).
      sigma: Parzen window width in ``[0, 1]`` intensity units; default half a bin width.
      mask: optional array of ``fixed``'s shape, nonzero where voxels count.

    Returns:
      ``−MI``, a scalar ``<= 0``, bounded below by ``−H(fixed)`` of the Parzen histogram
      (reached only with hard binning; with the default ``sigma`` MI(x, x) is about half
      of it). Compare values only at equal ``bins`` and ``sigma``.
    """
    fixed, warped = jnp.asarray(fixed, jnp.float32), jnp.asarray(warped, jnp.float32)
    check_same_shape(fixed, warped, "fixed", "warped")
    if not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"`bins` must be an integer >= 2; got {bins!r}.")
    sigma = 0.5 / (bins - 1) if sigma is None else sigma
    if not sigma > 0:
        raise ValueError(f"`sigma` must be > 0 (Parzen width in [0, 1] intensity units); got {sigma!r}.")
    if mask is None:
        weight = jnp.ones(fixed.size, jnp.float32)
    else:
        if tuple(jnp.shape(mask)) != fixed.shape:
            raise ValueError(
                f"`mask` must have the shape of `fixed` {tuple(fixed.shape)}; got "
                f"{tuple(jnp.shape(mask))}."
            )
        weight = (jnp.asarray(mask).reshape(-1) != 0).astype(jnp.float32)
    centres = jnp.linspace(0.0, 1.0, bins)

    def parzen(x):
        x = x.reshape(-1)
        lo, hi = jax.lax.stop_gradient(jnp.min(x)), jax.lax.stop_gradient(jnp.max(x))
        x = (x - lo) / jnp.maximum(hi - lo, 1e-12)
        w = jnp.exp(-0.5 * ((x[:, None] - centres) / sigma) ** 2)
        return w / jnp.sum(w, axis=1, keepdims=True)

    wf, ww = parzen(fixed) * weight[:, None], parzen(warped)
    joint = wf.T @ ww / jnp.maximum(jnp.sum(weight), 1.0)
    pf, pw = jnp.sum(joint, axis=1), jnp.sum(joint, axis=0)
    tiny = 1e-10
    mi = jnp.sum(joint * (jnp.log(joint + tiny) - jnp.log(pf[:, None] * pw[None, :] + tiny)))
    return -mi


# ----------------------------------------------------------------------------- regularisers
def diffusion(ddf) -> jax.Array:
    """Diffusion regulariser: mean squared forward difference, lower is better.

    ``(1/ndim) Σ_axes mean_{voxels, components}((u[x + e_axis] − u[x])²)`` in voxel² per
    voxel² (the VoxelMorph ``Grad('l2')`` definition). For a linear field ``u = A x`` it
    equals ``Σ A² / ndim²``.

    Args:
      ddf: ``(*S, ndim)`` displacement in voxels.
    """
    ndim = _check_field(ddf)
    ddf = jnp.asarray(ddf)
    terms = [jnp.mean(jnp.diff(ddf, axis=a) ** 2) for a in range(ndim)]
    return sum(terms) / ndim


def bending_energy(ddf) -> jax.Array:
    """Bending energy, lower is better.

    ``mean_{interior voxels, components} Σ_{i,j} (∂_i ∂_j u)²`` with central differences
    (mixed terms appear twice, as ``i,j`` and ``j,i``); the one-voxel border where central
    differences are undefined is left out. Exact for quadratic fields.

    Args:
      ddf: ``(*S, ndim)`` displacement in voxels; every spatial side >= 3.
    """
    ndim = _check_field(ddf)
    ddf = jnp.asarray(ddf)
    if min(ddf.shape[:-1]) < 3:
        raise ValueError(f"every spatial side of `ddf` must be >= 3; got shape {tuple(ddf.shape)}.")
    interior = tuple(slice(1, -1) for _ in range(ndim))

    def d1(x, a):  # central first difference, valid where both neighbours exist
        return (jnp.roll(x, -1, axis=a) - jnp.roll(x, 1, axis=a)) / 2.0

    total = 0.0
    for i in range(ndim):
        # Pure second difference u[x+1] − 2u[x] + u[x−1].
        dii = jnp.roll(ddf, -1, axis=i) - 2 * ddf + jnp.roll(ddf, 1, axis=i)
        total = total + jnp.mean(dii[interior] ** 2)
        for j in range(i + 1, ndim):
            dij = d1(d1(ddf, i), j)
            total = total + 2 * jnp.mean(dij[interior] ** 2)
    return total


def dice(fixed_onehot, warped_onehot, *, eps: float = 1e-6) -> jax.Array:
    """Soft Dice loss ``1 − mean_labels 2Σab / (Σa + Σb)``, lower is better.

    Args:
      fixed_onehot: ``(*S, L)`` one-hot or probabilistic label maps.
      warped_onehot: same shape.
      eps: floor of the denominator; a label absent from both counts as Dice 0.

    Returns:
      Scalar in ``[0, 1]``.
    """
    a, b = jnp.asarray(fixed_onehot), jnp.asarray(warped_onehot)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"`fixed_onehot` and `warped_onehot` must have the same shape (*S, L); got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    axes = tuple(range(a.ndim - 1))
    top = 2 * jnp.sum(a * b, axis=axes)
    bottom = jnp.maximum(jnp.sum(a + b, axis=axes), eps)
    return 1.0 - jnp.mean(top / bottom)

