"""Pieces shared by the deformable (:mod:`jaxreg.optimize`) and affine (:mod:`jaxreg.optimize_affine`)
optimisers: intensity normalisation, the pyramid in physical units, the similarity terms and the
value checks (their steps and chunks: :mod:`jaxreg._steps`). Private; imports only the leaves
``losses`` and ``spatial``.

Spacing: ``spacing`` is the voxel size per array axis in mm. The pyramid shrinks each axis like
ANTs (``CalculateShrinkFactorsPerDimension``): the finest axis by the level's factor, every other
axis by the factor in ``1..factor`` that brings its voxel size nearest to the finest axis's new one
(the smaller on ties), so a 10 mm axis of a 1.4 mm stack is not shrunk until the others reach it.
The voxel size of a level is ``spacing · factors`` (nominal); ``relative`` spacing is that divided
by its minimum. Isotropic spacing gives ``relative = None`` and exactly the isotropic code paths.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import losses
from jaxreg._programs import stored_jit

TRANSFORMS = ("svf", "ddf", "rigid", "affine")
SIMILARITIES = ("lncc", "mse", "mi")
REGULARIZERS = ("diffusion", "bending")
MIN_LEVEL_SIDE = 4  # smallest spatial side (voxels) allowed at the coarsest level

def per_pair_value_and_grad(objective: Callable, batch: bool) -> Callable:
    """``objective(params, *arrays)`` → ``(loss, gradient)``; with ``batch`` every argument has a
    leading pair axis and the result is ``((B,) losses, per-pair gradients)`` (the gradient of
    their sum: each pair's own)."""
    if not batch:
        return jax.value_and_grad(objective)

    def total(params, *arrays):
        losses = jax.vmap(objective)(params, *arrays)
        return jnp.sum(losses), losses

    def value_and_grad(params, *arrays):
        (_, losses), grad = jax.value_and_grad(total, has_aux=True)(params, *arrays)
        return losses, grad

    return value_and_grad


# ----------------------------------------------------------------------------- images
def as_image(x, name: str, *, check: bool = True) -> jax.Array:
    """A user image as float32 (float64 under x64) ``(*S, C)`` (rank 2, 3: no channels; 4: channels last), checked
    (``check=False``: rank and dtype only, for traced values; see :func:`image_is_valid`)."""
    x = jnp.asarray(x)
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"`{name}` must be a 2-D (H, W) or 3-D (D, H, W) or (D, H, W, C) image; got shape "
            f"{tuple(x.shape)}."
        )
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
            or x.dtype == jnp.bool_):
        raise ValueError(f"`{name}` must be a real-valued array; got dtype {x.dtype}.")
    # float32, or float64 when JAX's x64 mode is on and the image is float64 (finite differences)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    if x.ndim in (2, 3):
        x = x[..., None]
    if not check:
        return x
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    axes = tuple(range(x.ndim - 1))
    if bool(jnp.all(jnp.max(x, axis=axes) == jnp.min(x, axis=axes))):
        raise ValueError(f"`{name}` is constant (an empty image); there is nothing to register.")
    return x


def image_is_valid(x: jax.Array) -> jax.Array:
    """Traced-safe form of :func:`as_image`'s value checks: ``True`` when the ``(*S, C)`` image is
    finite and no channel is constant."""
    axes = tuple(range(x.ndim - 1))
    return jnp.all(jnp.isfinite(x)) & jnp.all(jnp.max(x, axis=axes) > jnp.min(x, axis=axes))


class Normalised(NamedTuple):
    """A checked ``(*S, C)`` float32 image already passed through :func:`normalise`.

    :func:`jaxreg.register` prepares each image once and hands it to both stages in this
    wrapper, which :func:`jaxreg.optimize.optimize` and
    :func:`jaxreg.optimize_affine.optimize_affine` take as they are (no second check or
    normalisation).
    """

    image: jax.Array


# ----------------------------------------------------------------------------- checks
def check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")


def check_non_negative(value, name: str) -> None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` is a finite real number >= 0."""
    if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")


def check_options(*, transform, similarity, regularizer, window, bins, weight, learning_rate,
                   integration_steps, callback) -> None:
    """Checks the options shared by :func:`jaxreg.optimize.optimize` and :func:`jaxreg.optimize_affine.optimize_affine`."""
    check_choice(transform, TRANSFORMS, "transform")
    check_choice(similarity, SIMILARITIES, "similarity")
    check_choice(regularizer, REGULARIZERS, "regularizer")
    if not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise ValueError(f"`window` must be a positive odd integer; got {window!r}.")
    if not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"`bins` must be an integer >= 2; got {bins!r}.")
    check_non_negative(weight, "weight")
    if learning_rate is not None and (not isinstance(learning_rate, numbers.Real) or not np.isfinite(learning_rate)
                                      or learning_rate <= 0):
        raise ValueError(f"`learning_rate` must be a finite number > 0; got {learning_rate!r}.")
    if not isinstance(integration_steps, numbers.Integral) or integration_steps < 0:
        raise ValueError(f"`integration_steps` must be an integer >= 0; got {integration_steps!r}.")
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable(level, step, loss) or None; got {callback!r}.")


def check_pair(fixed, moving, *, values: bool = True, same_grid: bool = True) -> tuple[jax.Array, jax.Array]:
    """Checks an image pair and returns it as float32 ``(*S, C)`` arrays (a channel axis added).

    Rank 2 is a 2-D image, rank 3 a 3-D one, rank 4 a 3-D one with channels. ``values=False``
    checks shapes and dtypes only (traced images: :func:`image_is_valid` checks their values).
    ``same_grid=False`` (the moving image on its own grid, :class:`Grid`): any spatial shape, the
    same channels.

    Raises:
      ValueError: another rank or dtype, NaN or Inf, a constant image, ranks or shapes
        that differ; the message names the argument.
    """
    fixed, moving = as_image(fixed, "fixed", check=values), as_image(moving, "moving", check=values)
    if fixed.ndim != moving.ndim:
        raise ValueError(f"`fixed` and `moving` must have the same spatial rank (both 2-D or both 3-D); got shapes "
                         f"{tuple(fixed.shape)} and {tuple(moving.shape)} (channel axis added).")
    if not same_grid and fixed.shape[-1] != moving.shape[-1]:
        raise ValueError(f"`fixed` and `moving` must have the same channels; got shapes {tuple(fixed.shape)} and "
                         f"{tuple(moving.shape)} (channel axis added).")
    if same_grid and fixed.shape != moving.shape:
        raise ValueError(
            f"`fixed` and `moving` must have the same shape (resample first); got "
            f"{tuple(fixed.shape)} and {tuple(moving.shape)} (channel axis added)."
        )
    return fixed, moving


def prepare_pair(fixed, moving) -> tuple[jax.Array, jax.Array]:
    """``(fixed, moving)`` checked and normalised, or as they are when both are :class:`Normalised`."""
    if isinstance(fixed, Normalised) and isinstance(moving, Normalised):
        return fixed.image, moving.image
    fixed, moving = check_pair(fixed, moving)
    return normalise(fixed), normalise(moving)


@stored_jit
def normalise(image: jax.Array) -> jax.Array:
    """``(*S, C)`` → float32, each channel's 0.5/99.5 percentiles mapped to 0/1, clipped."""
    axes = tuple(range(image.ndim - 1))
    # Percentiles of every 2nd voxel per axis: robust statistics need no more, and the sort
    # of a full 160x192x144 volume takes over a second on CPU.
    sample = image[tuple(slice(None, None, 2) for _ in axes)]
    lo, hi = jnp.percentile(sample, jnp.array([0.5, 99.5]), axis=axes)
    flat = hi <= lo  # more than 99 % of the voxels share one value: plain min-max
    lo = jnp.where(flat, jnp.min(image, axis=axes), lo)
    hi = jnp.where(flat, jnp.max(image, axis=axes), hi)
    return jnp.clip((image - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0)


@stored_jit(static_argnames=("shape", "batch"))
def downsample(image: jax.Array, *, shape: tuple[int, ...], batch: bool = False) -> jax.Array:
    """Anti-aliased (area-weighted linear) resize of ``(*S, C)`` to ``(*shape, C)`` (``batch``:
    of each image of a ``(B, *S, C)`` stack)."""
    if batch:
        return jax.vmap(lambda x: downsample(x, shape=shape))(image)
    if shape == image.shape[:-1]:
        return image
    return jax.image.resize(image, shape + image.shape[-1:], "linear", antialias=True)


def prepare_pairs(fixed, moving) -> tuple[jax.Array, jax.Array]:
    """:func:`prepare_pair` for ``(B, *S[, C])`` stacks of pairs: every pair checked alone (the
    messages name the pair), each image normalised alone; ``(B, *S, C)`` float32."""
    if isinstance(fixed, Normalised) and isinstance(moving, Normalised):
        return fixed.image, moving.image
    fixed, moving = check_stacks(fixed, moving)
    return jax.vmap(normalise)(fixed), jax.vmap(normalise)(moving)


def check_stacks(fixed, moving) -> tuple[jax.Array, jax.Array]:
    """Checks two ``(B, *S[, C])`` stacks of pairs with ``check_pair`` pair by pair; returns them as
    float32 ``(B, *S, C)``.

    Raises:
      ValueError: stacks of other lengths or ranks, or a bad pair (the message names its index).
    """
    shapes = tuple(np.shape(fixed)), tuple(np.shape(moving))
    if len(shapes[0]) not in (3, 4, 5) or len(shapes[1]) not in (3, 4, 5) or shapes[0][:1] != shapes[1][:1] \
            or shapes[0][0] < 1:
        raise ValueError(f"with batch=True `fixed` and `moving` must be stacks (B, *S) or (B, *S, C) of B >= 1 "
                         f"pairs; got shapes {shapes[0]} and {shapes[1]}.")
    pairs = []
    for i in range(shapes[0][0]):
        try:
            pairs.append(check_pair(fixed[i], moving[i]))
        except ValueError as error:
            raise ValueError(f"pair {i} of the batch: {error}") from None
    return jnp.stack([f for f, _ in pairs]), jnp.stack([m for _, m in pairs])


# ----------------------------------------------------------------------------- spacing, pyramid
def check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` floats (``None``: all 1; one number: isotropic).

    Raises:
      ValueError: not ``ndim`` finite numbers > 0; the message names ``spacing``.
    """
    if spacing is None:
        return (1.0,) * ndim
    values = (spacing,) if isinstance(spacing, numbers.Real) else tuple(np.ravel(np.asarray(spacing, dtype=object)))
    if len(values) == 1:
        values = values * ndim
    ok = len(values) == ndim and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    if not ok or not all(np.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ValueError(f"`spacing` must be {ndim} finite voxel sizes > 0 (mm, array axis order) or None; "
                         f"got {spacing!r}.")
    return tuple(float(v) for v in values)


def shrink_factors(factor: int, spacing: Sequence[float]) -> tuple[int, ...]:
    """Per-axis shrink factors for a pyramid level of ``factor`` (ANTs' rule, module docstring)."""
    target = min(spacing) * factor
    # min over f of |s·f − target|, the smaller f on ties (tuples compare the distance first)
    return tuple(factor if s == min(spacing) else min(range(1, factor + 1), key=lambda f: (abs(s * f - target), f))
                 for s in spacing)


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, round(s / f)) for s, f in zip(shape, factors))


def relative_spacing(spacing: Sequence[float], factors: Sequence[int]) -> tuple[float, ...] | None:
    """The level's voxel size over its smallest one; ``None`` when the level is isotropic."""
    level = [s * f for s, f in zip(spacing, factors)]
    if max(level) == min(level):
        return None
    return tuple(v / min(level) for v in level)


def axis_windows(window: int, relative: Sequence[float] | None) -> int | tuple[int, ...]:
    """The LNCC window per axis: ``window`` voxels of the finest axis, odd, >= 1 (an int if isotropic)."""
    if relative is None:
        return int(window)
    windows = tuple(2 * int(math.floor(window / r / 2)) + 1 for r in relative)
    return windows[0] if len(set(windows)) == 1 else windows


def auto_levels(shape: Sequence[int], spacing: Sequence[float] | None = None, *, finest_max_voxels: int,
                wide_axes: int = 1) -> tuple[int, ...]:
    """Factors ``(2**K, ..., 2[, 1])``: ``K`` the largest with at least ``wide_axes`` level sides
    >= 16 and every side >= 4.

    Sides are ``S / shrink_factors(2**K, spacing)``; the finest level is 1 for images of at
    most ``finest_max_voxels`` voxels, else 2.
    """
    shape = tuple(int(s) for s in shape)
    spacing = (1.0,) * len(shape) if spacing is None else tuple(spacing)

    def sides(k):
        return [s / f for s, f in zip(shape, shrink_factors(2**k, spacing))]

    top = 0
    while (sum(side >= 16 for side in sides(top + 1)) >= min(wide_axes, len(shape))
           and min(sides(top + 1)) >= MIN_LEVEL_SIDE):
        top += 1
    finest = 0 if math.prod(shape) <= finest_max_voxels else 1
    return tuple(2**k for k in range(top, min(finest, top) - 1, -1))


def positive_ints(value, name: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                              for v in values):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive integers; got {value!r}.")
    return tuple(int(v) for v in values)


def plan_levels(shape, levels, steps, spacing, *, default_levels) -> tuple:
    """Checks ``levels``/``steps``; returns ``(levels, steps, per-level factors, per-level shapes)``."""
    levels = default_levels if levels is None else positive_ints(levels, "levels")
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = (steps,) * len(levels)
    steps = positive_ints(steps, "steps")
    if len(levels) != len(steps):
        raise ValueError(f"`levels` and `steps` must have the same length; got {levels} and {steps}.")
    factors = [shrink_factors(f, spacing) for f in levels]
    shapes = [level_shape(shape, fs) for fs in factors]
    for f, ls in zip(levels, shapes):
        if min(ls) < MIN_LEVEL_SIDE:
            raise ValueError(
                f"`levels` factor {f} shrinks the image {tuple(shape)} to {ls}; every side must stay "
                f">= {MIN_LEVEL_SIDE} voxels."
            )
    return levels, steps, factors, shapes


def mask_weight(fixed_mask, shape, *, batch: int | None = None, check: bool = True) -> jax.Array | None:
    """The ``(*S)`` float32 similarity weight of a ``fixed_mask`` (or ``None``); ``check=False`` for a
    traced mask (no test that it counts some voxel).

    With ``batch=B``: ``(B, *S)`` weights from one ``(*S)`` mask for every pair or one mask per
    pair ``(B, *S)``.
    """
    if fixed_mask is None:
        return None
    fixed_mask = jnp.asarray(fixed_mask)
    shape = tuple(shape)
    if batch is not None and fixed_mask.shape == shape:
        fixed_mask = jnp.broadcast_to(fixed_mask, (batch, *shape))
    expected = shape if batch is None else (batch, *shape)
    if fixed_mask.shape != expected:
        also = "" if batch is None else f" or {shape}"
        raise ValueError(f"`fixed_mask` must have shape {expected}{also}; got {tuple(fixed_mask.shape)}.")
    weight = (fixed_mask != 0).astype(jnp.float32)
    spatial_axes = tuple(range(weight.ndim - len(shape), weight.ndim))
    if check and not bool(jnp.all(jnp.any(weight > 0, axis=spatial_axes))):  # every pair counts some voxel
        raise ValueError("`fixed_mask` is all zero" + ("" if batch is None else " for some pair")
                         + "; the similarity would count no voxel.")
    return weight


# ----------------------------------------------------------------------------- the moving image's own grid
class Grid(NamedTuple):
    """The moving image's own grid, when it is not the fixed one (registration in world coordinates).

    ``to_moving`` ``(ndim + 1, ndim + 1)`` float64 maps a fixed voxel (array axis order) to the moving
    voxel at the same world point (the world identity: ``inv(A_moving) · A_fixed`` of the two
    voxel-to-world matrices); ``spacing`` is the moving voxel size per array axis (mm).
    """

    to_moving: np.ndarray
    spacing: tuple[float, ...]


def level_to_full(shape: Sequence[int], level: Sequence[int]) -> np.ndarray:
    """``(ndim + 1, ndim + 1)`` float64: a voxel ``i`` of a ``level``-shaped resize of a ``shape`` grid →
    the full-resolution voxel ``r·i + (r − 1)/2`` (``r = shape / level``: voxel centres stay put)."""
    ratio = np.array([s / l for s, l in zip(shape, level)], np.float64)
    out = np.diag(np.append(ratio, 1.0))
    out[:-1, -1] = (ratio - 1) / 2
    return out


def through_matrix(matrix, ddf):
    """``matrix · [x + ddf(x), 1] − x``: the displacement of ``ddf`` then the voxel ``matrix``
    ``(ndim + 1, ndim + 1)``, on the grid of ``ddf`` ``(*S, ndim)``."""
    # Elementwise per component (with broadcast iotas, no (*S, ndim) grid): XLA fuses it into the
    # warp that follows; an einsum over the 3-long axis doubled a warp's cost with its gradient on CPU.
    ndim, shape = ddf.shape[-1], ddf.shape[:-1]
    position = [jax.lax.broadcasted_iota(ddf.dtype, shape, k) + ddf[..., k] for k in range(ndim)]
    return jnp.stack([sum(matrix[i, j] * position[j] for j in range(ndim)) + matrix[i, ndim]
                      - jax.lax.broadcasted_iota(ddf.dtype, shape, i) for i in range(ndim)], axis=-1)


def existence(disp, extent):
    """Where a displacement ``disp`` ``(*S, ndim)`` (voxels of an image of ``extent`` voxels per axis,
    ``(ndim,)``, may be traced) reads inside that image: ``(*S)`` in [0, 1], as a linearly
    interpolated image of ones, zero outside (1 inside, 0 from one voxel beyond the edge). Not
    differentiated: the similarity is weighted by where the moving image exists, and the transform is
    not rewarded for moving poorly matched voxels out of it."""
    disp = jax.lax.stop_gradient(disp)
    weight = 1.0
    for k in range(disp.shape[-1]):
        c = jax.lax.broadcasted_iota(disp.dtype, disp.shape[:-1], k) + disp[..., k]
        weight = weight * jnp.clip(jnp.minimum(c + 1.0, extent[k] - c), 0.0, 1.0)
    return weight


def times(weight, other):
    """The product of two similarity weights, either ``None`` (= ones)."""
    return other if weight is None else (weight if other is None else weight * other)


# ----------------------------------------------------------------------------- similarity
def similarity(fixed, warped, weight, *, similarity: str, window, bins: int) -> jax.Array:
    """The similarity term (lower is better) of ``(*S, C)`` images; ``weight`` ``(*S)`` or ``None``."""
    if similarity == "lncc":
        return losses.lncc(fixed, warped, window=window, mask=weight, ndim=fixed.ndim - 1)
    if similarity == "mse":
        if weight is None:
            return losses.mse(fixed, warped)
        sq = jnp.mean((fixed - warped) ** 2, axis=-1)
        return jnp.sum(sq * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    mask = None if weight is None else jnp.broadcast_to((weight >= 0.5)[..., None], fixed.shape)
    return losses.mutual_information(fixed, warped, bins=bins, mask=mask)
