"""Classical instance-optimisation registration in pure JAX (no trained model).

:func:`optimize` registers one pair by gradient descent (optax Adam) on
``similarity(fixed, moving ∘ φ) + weight · regularizer``, coarse to fine. At each level the
images are area-averaged down by the level factor (``jax.image.resize`` with
anti-aliasing), the transform parameters are optimised there for a fixed number of steps,
and then resized to the next level with :func:`jaxreg.spatial.resize_ddf` (which rescales
the voxel units). Each level is one jitted ``lax.scan`` over its steps; images are
arguments, options are static, so a second call with same-shaped inputs and the same
options reuses the compiled programs.

Intensities: each image channel is mapped to ``[0, 1]`` by its own 0.5 / 99.5 percentiles
and clipped (robust min-max), so that the defaults (LNCC ``eps``, MSE scale, learning rate,
``weight``) do not depend on the scanner's units.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import losses, spatial
from jaxreg.losses import _valid_filter  # the box filter behind losses.lncc (masked variant below)

__all__ = ["OptimizeResult", "optimize"]

TRANSFORMS = ("svf", "ddf")
SIMILARITIES = ("lncc", "mse", "mi")
REGULARIZERS = ("diffusion", "bending")
MIN_LEVEL_SIDE = 4  # smallest spatial side (voxels) allowed at the coarsest level
CALLBACK_EVERY = 10
import os
_SMOOTH = int(os.environ.get("SMOOTH", "0"))
_DECAY = float(os.environ.get("DECAY", "1"))
_EXACT_SVF_GRAD = bool(int(os.environ.get("EXACT", "0")))  # steps between progress callbacks


class OptimizeResult(NamedTuple):
    """Result of :func:`optimize`.

    Attributes:
      ddf: ``(*S, ndim)`` displacement in voxels of the full-resolution grid, pull
        convention: ``warped(x) = moving(x + ddf(x))``.
      velocity: ``(*S, ndim)`` stationary velocity (voxels) with ``ddf = exp(velocity)``
        when ``transform="svf"``, else ``None``.
      losses: ``(sum(steps),)`` host numpy loss trace over all levels, coarse to fine
        (lower is better; values of different levels are not comparable).
      steps: number of steps run at each level.
      levels: downsampling factors used, coarse to fine.
    """

    ddf: jax.Array
    velocity: jax.Array | None
    losses: np.ndarray
    steps: tuple[int, ...]
    levels: tuple[int, ...]


# ----------------------------------------------------------------------------- callbacks
# A jitted level calls back through this table with a traced integer token, so that a new
# callback object (e.g. a fresh lambda) does not change the compiled program.
_CALLBACKS: dict[int, Callable] = {}
_TOKENS = itertools.count(1)


def _emit(token, level, step, loss) -> None:
    fn = _CALLBACKS.get(int(token))
    if fn is not None:
        fn(int(level), int(step), float(loss))


# ----------------------------------------------------------------------------- jitted parts
@jax.jit
def _normalise(image: jax.Array) -> jax.Array:
    """``(*S, C)`` → float32, each channel's 0.5/99.5 percentiles mapped to 0/1, clipped."""
    axes = tuple(range(image.ndim - 1))
    # Percentiles of every 2nd voxel per axis: robust statistics need no more, and the sort
    # of a full 160x192x144 volume takes over a second on CPU.
    sample = image[tuple(slice(None, None, 2) for _ in axes)]
    lo, hi = jnp.percentile(sample, jnp.array([0.5, 99.5]), axis=axes)
    lo = jnp.where(hi > lo, lo, jnp.min(image, axis=axes))  # fall back to min-max when
    hi = jnp.where(hi > lo, hi, jnp.max(image, axis=axes))  # more than 99 % is one value
    return jnp.clip((image - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0)


@jax.jit(static_argnames="shape")
def _downsample(image: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    """Anti-aliased (area-weighted linear) resize of ``(*S, C)`` to ``(*shape, C)``."""
    if shape == image.shape[:-1]:
        return image
    return jax.image.resize(image, shape + image.shape[-1:], "linear", antialias=True)


@jax.jit(static_argnames="shape")
def _resize(field: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    return spatial.resize_ddf(field, shape)


@jax.jit(static_argnames="integration_steps")
def _exp(velocity: jax.Array, *, integration_steps: int) -> jax.Array:
    return spatial.integrate_velocity(velocity, steps=integration_steps)


def _masked_lncc(fixed, warped, weight, window: int) -> jax.Array:
    """``1 − Σ weight·cc / Σ weight`` with the local cc map of :func:`jaxreg.losses.lncc`."""
    rank = fixed.ndim - 1
    n = float(window**rank)
    box = jnp.ones((window,), fixed.dtype)

    def cc_map(f, w):  # (*S) each -> (*S)
        f, w = jnp.pad(f, window // 2), jnp.pad(w, window // 2)
        f, w = f - jax.lax.stop_gradient(jnp.mean(f)), w - jax.lax.stop_gradient(jnp.mean(w))
        sf, sw = _valid_filter(f, box, rank), _valid_filter(w, box, rank)
        sff, sww = _valid_filter(f * f, box, rank), _valid_filter(w * w, box, rank)
        cross = _valid_filter(f * w, box, rank) - sf * sw / n
        vf, vw = sff - sf * sf / n, sww - sw * sw / n
        var_prod = jnp.where(vf > 2e-6 * sff, vf, 0.0) * jnp.where(vw > 2e-6 * sww, vw, 0.0)
        return jnp.minimum(cross * cross, var_prod) / (var_prod + 1e-5)

    cc = jax.vmap(cc_map, in_axes=-1, out_axes=-1)(fixed, warped)
    return 1.0 - jnp.sum(cc * weight[..., None]) / (jnp.maximum(jnp.sum(weight), 1.0) * cc.shape[-1])


def _similarity(fixed, warped, weight, *, similarity: str, window: int, bins: int) -> jax.Array:
    if similarity == "lncc":
        if weight is None:
            return losses.lncc(fixed, warped, window=window, ndim=fixed.ndim - 1)
        return _masked_lncc(fixed, warped, weight, window)
    if similarity == "mse":
        if weight is None:
            return losses.mse(fixed, warped)
        sq = jnp.mean((fixed - warped) ** 2, axis=-1)
        return jnp.sum(sq * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    mask = None if weight is None else jnp.broadcast_to((weight >= 0.5)[..., None], fixed.shape)
    return losses.mutual_information(fixed, warped, bins=bins, mask=mask)


@jax.jit(static_argnames=("steps", "transform", "similarity", "window", "bins", "regularizer",
                          "integration_steps", "with_callback"))
def _run_level(params, fixed, moving, weight, reg_weight, learning_rate, token, level, *, steps,
               transform, similarity, window, bins, regularizer, integration_steps, with_callback):
    """Runs ``steps`` Adam steps at one level; returns ``(params, (steps,) losses)``."""
    regularize = losses.diffusion if regularizer == "diffusion" else losses.bending_energy

    def smooth(p):
        for _ in range(_SMOOTH):
            p = _valid_filter(p, jnp.full((3,), 1 / 3, p.dtype), p.ndim - 1, pad_mode="edge")
        return p

    def objective(p):
        p = smooth(p)
        if transform == "svf":
            if _EXACT_SVF_GRAD:
                ddf = spatial.integrate_velocity(p, steps=integration_steps)
            else:  # first-order (log-demons) gradient: d exp(v) / dv ~ identity
                ddf = p + jax.lax.stop_gradient(spatial.integrate_velocity(p, steps=integration_steps) - p)
        else:
            ddf = p
        warped = spatial.warp(moving, ddf, order=1, mode="nearest")
        sim = _similarity(fixed, warped, weight, similarity=similarity, window=window, bins=bins)
        return sim + reg_weight * regularize(p)

    sched = optax.cosine_decay_schedule(1.0, steps, _DECAY) if _DECAY < 1 else (lambda i: 1.0)
    opt = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(sched), optax.scale(-learning_rate))

    def step(carry, i):
        p, state = carry
        loss, grad = jax.value_and_grad(objective)(p)
        updates, state = opt.update(grad, state, p)
        if with_callback:
            jax.lax.cond(
                (i % CALLBACK_EVERY == 0) | (i == steps - 1),
                lambda: jax.debug.callback(_emit, token, level, i, loss),
                lambda: None,
            )
        return (optax.apply_updates(p, updates), state), loss

    (params, _), trace = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return smooth(params), trace


# ----------------------------------------------------------------------------- checks
def _as_image(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"`{name}` must be a 2-D (H, W) or 3-D (D, H, W) or (D, H, W, C) image; got shape "
            f"{tuple(x.shape)}."
        )
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
            or x.dtype == jnp.bool_):
        raise ValueError(f"`{name}` must be a real-valued array; got dtype {x.dtype}.")
    x = x.astype(jnp.float32)
    if x.ndim in (2, 3):
        x = x[..., None]
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    if bool(jnp.all(jnp.max(x, axis=tuple(range(x.ndim - 1))) == jnp.min(x, axis=tuple(range(x.ndim - 1))))):
        raise ValueError(f"`{name}` is constant (an empty image); there is nothing to register.")
    return x


def _positive_ints(value, name: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                              for v in values):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive integers; got {value!r}.")
    return tuple(int(v) for v in values)


def _check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")


def _check_options(*, transform, similarity, regularizer, window, bins, weight, learning_rate,
                   integration_steps, callback) -> None:
    _check_choice(transform, TRANSFORMS, "transform")
    _check_choice(similarity, SIMILARITIES, "similarity")
    _check_choice(regularizer, REGULARIZERS, "regularizer")
    if not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise ValueError(f"`window` must be a positive odd integer; got {window!r}.")
    if not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"`bins` must be an integer >= 2; got {bins!r}.")
    if not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
        raise ValueError(f"`weight` must be a finite number >= 0; got {weight!r}.")
    if not isinstance(learning_rate, numbers.Real) or not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be a finite number > 0; got {learning_rate!r}.")
    if not isinstance(integration_steps, numbers.Integral) or integration_steps < 0:
        raise ValueError(f"`integration_steps` must be an integer >= 0; got {integration_steps!r}.")
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable(level, step, loss) or None; got {callback!r}.")


# ----------------------------------------------------------------------------- public
def optimize(
    fixed,
    moving,
    *,
    fixed_mask=None,
    transform: str = "svf",
    similarity: str = "lncc",
    window: int = 5,
    bins: int = 32,
    regularizer: str = "diffusion",
    weight: float = 1.0,
    levels: Sequence[int] = (4, 2, 1),
    steps: Sequence[int] = (100, 100, 50),
    learning_rate: float = 0.1,
    integration_steps: int = 7,
    callback: Callable[[int, int, float], None] | None = None,
) -> OptimizeResult:
    """Registers ``moving`` onto ``fixed`` by multi-resolution instance optimisation.

    Minimises ``similarity(fixed, warp(moving, φ)) + weight · regularizer(params)`` with
    Adam, coarse to fine. ``params`` is the displacement itself (``transform="ddf"``) or a
    stationary velocity ``v`` with ``φ = exp(v)`` by scaling and squaring
    (``transform="svf"``, diffeomorphic, the default); the regulariser acts on ``params``.

    Args:
      fixed: ``(*S)`` or ``(*S, C)`` image, 2-D ``(H, W)`` or 3-D ``(D, H, W)``; a rank-3
        array is a 3-D image (use ``(H, W, C)`` → add a depth... no: 2-D images with channels
        are not supported). Each channel is robustly min-max normalised (see module docs).
      moving: image of the same shape as ``fixed`` (resample it first if it is not).
      fixed_mask: optional ``(*S)`` array, nonzero where the similarity counts (per-voxel
        weights for LNCC/MSE, the ``mask`` of mutual information).
      transform: ``"svf"`` or ``"ddf"``.
      similarity: ``"lncc"`` (window ``window``), ``"mse"`` or ``"mi"`` (``bins`` bins).
      window: odd LNCC window side in voxels (at every level).
      bins: number of mutual-information histogram bins.
      regularizer: ``"diffusion"`` or ``"bending"`` (see :mod:`jaxreg.losses`).
      weight: regulariser weight ``>= 0`` (higher is smoother).
      levels: downsampling factors, coarse to fine, e.g. ``(4, 2, 1)``.
      steps: Adam steps at each level (same length as ``levels``).
      learning_rate: Adam step size (voxels of the current level per step, roughly).
      integration_steps: scaling-and-squaring steps for ``"svf"``.
      callback: optional ``callback(level_index, step, loss)``, called from the compiled
        loop every 10 steps and at the last step of each level (e.g. for a progress bar).

    Returns:
      An :class:`OptimizeResult`; ``warp(moving, result.ddf)`` is aligned with ``fixed``.

    Raises:
      ValueError: for bad inputs or options; the message names the argument.
    """
    _check_options(transform=transform, similarity=similarity, regularizer=regularizer, window=window,
                   bins=bins, weight=weight, learning_rate=learning_rate,
                   integration_steps=integration_steps, callback=callback)
    fixed, moving = _as_image(fixed, "fixed"), _as_image(moving, "moving")
    if fixed.shape[:-1] != moving.shape[:-1] or fixed.shape[-1] != moving.shape[-1]:
        raise ValueError(
            f"`fixed` and `moving` must have the same shape (resample first); got "
            f"{tuple(fixed.shape)} and {tuple(moving.shape)} (channel axis added)."
        )
    shape = fixed.shape[:-1]
    levels, steps = _positive_ints(levels, "levels"), _positive_ints(steps, "steps")
    if len(levels) != len(steps):
        raise ValueError(f"`levels` and `steps` must have the same length; got {levels} and {steps}.")
    level_shapes = [tuple(max(1, round(s / f)) for s in shape) for f in levels]
    for f, ls in zip(levels, level_shapes):
        if min(ls) < MIN_LEVEL_SIDE:
            raise ValueError(
                f"`levels` factor {f} shrinks the image {shape} to {ls}; every side must stay "
                f">= {MIN_LEVEL_SIDE} voxels."
            )
    weight_map = None
    if fixed_mask is not None:
        fixed_mask = jnp.asarray(fixed_mask)
        if fixed_mask.shape != shape:
            raise ValueError(f"`fixed_mask` must have shape {shape}; got {tuple(fixed_mask.shape)}.")
        weight_map = (fixed_mask != 0).astype(jnp.float32)
        if not bool(jnp.any(weight_map > 0)):
            raise ValueError("`fixed_mask` is all zero; the similarity would count no voxel.")

    fixed, moving = _normalise(fixed), _normalise(moving)
    token = next(_TOKENS)
    if callback is not None:
        _CALLBACKS[token] = callback
    options = dict(transform=transform, similarity=similarity, window=int(window), bins=int(bins),
                   regularizer=regularizer, integration_steps=int(integration_steps),
                   with_callback=callback is not None)
    ndim = len(shape)
    params = jnp.zeros(level_shapes[0] + (ndim,), jnp.float32)
    traces = []
    try:
        for i, (ls, n) in enumerate(zip(level_shapes, steps)):
            params = _resize(params, shape=ls)
            w = None if weight_map is None else _downsample(weight_map[..., None], shape=ls)[..., 0]
            params, trace = _run_level(
                params, _downsample(fixed, shape=ls), _downsample(moving, shape=ls), w,
                jnp.float32(weight), jnp.float32(learning_rate), jnp.int32(token), jnp.int32(i),
                steps=n, **options,
            )
            traces.append(trace)
        params = _resize(params, shape=shape)
        trace = np.concatenate([np.asarray(t) for t in traces])  # blocks until the loops end
    finally:
        _CALLBACKS.pop(token, None)
    if transform == "svf":
        return OptimizeResult(_exp(params, integration_steps=int(integration_steps)), params, trace,
                              steps, levels)
    return OptimizeResult(params, None, trace, steps, levels)
