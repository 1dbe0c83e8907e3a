"""Classical instance-optimisation registration in pure JAX (no trained model).

:func:`optimize` registers one pair by minimising
``similarity(fixed, warp(moving, φ)) + weight · regularizer(field)`` with optax Adam,
coarse to fine (``transform="rigid"``/``"affine"``: :mod:`jaxreg.optimize_affine`):

* **Levels.** At factor ``f`` both images are resized to ``round(S / f)`` with
  ``jax.image.resize(..., antialias=True)`` (area-weighted averaging); with a ``spacing``
  each axis shrinks by ANTs' per-axis factor (:mod:`jaxreg._objective`: a 10 mm axis of a
  1.4 mm stack is not shrunk until the others reach it). The parameters of the previous
  level are resized with :func:`jaxreg.spatial.resize_ddf`. Each level is one compiled
  ``lax.scan`` of 10 steps dispatched ``ceil(steps / 10)`` times (progress is read between
  them, so no host callback keeps the program out of JAX's persistent cache); images,
  fields, the step count, weight and learning rate are arguments, options static, so a
  second call with same-shaped inputs and the same options compiles nothing. Under
  ``jit``/``vmap``/``grad`` (:func:`jaxreg.register_traceable`) each level is one scan.
* **Field.** The optimised parameters ``p`` stand for ``field = box3(p)`` (one 3-voxel
  box filter per axis: a preconditioner that keeps Adam's per-voxel steps from
  roughening the field). With ``transform="svf"`` the field is a stationary velocity and
  ``φ = exp(field)`` by scaling and squaring (:func:`jaxreg.spatial.integrate_velocity`;
  a level whose smallest voxel is ``2**k`` times the image's takes ``k`` squarings fewer);
  with ``"ddf"`` it is the displacement. The regulariser acts on the field.
* **Spacing.** On an anisotropic level the optimised variables are displacements in
  units of the level's smallest voxel (equal Adam steps in mm), the regulariser and the
  box filter act in those units, and the LNCC window is ``window`` voxels of the finest
  axis, odd, per axis. Isotropic spacing (or ``None``) runs exactly the voxel code.
* **Gradient of exp.** Levels with at most ``EXACT_GRADIENT_MAX_VOXELS`` (2**16) voxels
  differentiate exactly through scaling and squaring. Larger levels use
  ``d exp(v)/dv ≈ I`` (the first-order update of log-domain demons): the exact adjoint
  scatter-adds through every squaring and costs ~4x the whole step on CPU.
* **Schedule.** Adam with a cosine decay of the learning rate to 10 % within each level
  (damps the jitter of Adam's constant-size steps: on OASIS, 0.013 % -> 0.0002 % folded).
* **Intensities.** Each image channel is mapped to ``[0, 1]`` by its own 0.5 / 99.5
  percentiles (of every 2nd voxel per axis) and clipped, so the defaults do not depend on
  the scanner's units. A masked LNCC/MSE weighs the per-voxel terms by the (area-averaged)
  ``fixed_mask``; mutual information gets it as its ``mask``.
* **Speed.** Box sums (LNCC, the box filter) are ``lax.reduce_window`` sums: with their
  gradients 2.8x (LNCC) and 6x (box filter) faster on XLA:CPU than sums of shifted slices,
  and 2.3x faster to compile.

The measurements behind the defaults (window 5, weight 0.5, learning rate 0.05, box3,
levels from :func:`auto_levels`, 100 steps a level, the exact-gradient threshold) and the
timings against ANTs are in ``docs/register.md`` (``benchmarks/register.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _objective as obj
from jaxreg import _steps as steps_lib
from jaxreg import losses, spatial
from jaxreg import optimize_affine
from jaxreg._programs import stored_jit
from jaxreg._objective import check_options, check_pair
from jaxreg._objective import MIN_LEVEL_SIDE  # noqa: F401  (re-exported)

__all__ = ["OptimizeResult", "auto_levels", "check_pair", "optimize", "pyramid"]

STEPS_PER_LEVEL = 100  # default Adam steps at each level
LEARNING_RATE = 0.05  # default Adam step of the deformable transforms (voxels of the level)
SMOOTHING_PASSES = 1  # 3-voxel box filters applied to the parameters in the forward pass
# Levels with at most this many voxels differentiate exactly through scaling and squaring;
# larger ones use the first-order gradient (see the module docstring for the trade-off).
EXACT_GRADIENT_MAX_VOXELS = 2**16
# Images of at most this many voxels end the default pyramid at full resolution, else at half.
FULL_RESOLUTION_MAX_VOXELS = 2**18


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
      levels: downsampling factors used, coarse to fine (of the finest axis; the others
        follow :func:`jaxreg._objective.shrink_factors` of the spacing).
      matrix: for ``transform="rigid"``/``"affine"``, the ``(ndim + 1, ndim + 1)`` float64
        homogeneous voxel matrix mapping a fixed voxel (array axis order) to the moving
        voxel it reads (``ddf(x) = matrix·[x, 1] − x``); ``None`` for ``"svf"``/``"ddf"``.
    """

    ddf: jax.Array
    velocity: jax.Array | None
    losses: np.ndarray
    steps: tuple[int, ...]
    levels: tuple[int, ...]
    matrix: np.ndarray | None = None


# ----------------------------------------------------------------------------- levels
class Level(NamedTuple):
    """One level of the pyramid as :func:`run_levels` runs it (host data, static)."""

    shape: tuple[int, ...]  # spatial shape of the level
    steps: int
    factor: int  # the level's downsampling factor (of the finest axis)
    relative: tuple[float, ...] | None  # voxel size over the smallest one; None if isotropic
    options: dict  # static keyword options of the level's step (:func:`_level`)


def plan_levels(shape, spacing, *, transform="svf", similarity="lncc", window=5, bins=32, regularizer="diffusion",
                levels=None, steps=None, integration_steps=7,
                aligned=False) -> tuple[tuple[int, ...], tuple[Level, ...]]:
    """The pyramid of :func:`optimize` (svf/ddf) for a checked spatial ``shape`` and ``spacing``:
    ``(levels, (Level, ...))``, coarse to fine (``aligned``: see :func:`auto_levels`)."""
    default = auto_levels(shape, spacing, aligned=aligned) if levels is None else None
    steps = STEPS_PER_LEVEL if steps is None else steps
    levels, steps, factors, shapes = obj.plan_levels(shape, levels, steps, spacing, default_levels=default)
    out = []
    for f, ls, fs, n in zip(levels, shapes, factors, steps):
        relative = obj.relative_spacing(spacing, fs)
        options = {"transform": transform, "similarity": similarity, "bins": int(bins), "regularizer": regularizer,
                   "window": obj.axis_windows(window, relative), "relative": relative,
                   "integration_steps": _level_integration_steps(integration_steps, fs, spacing),
                   "exact_gradient": transform == "svf" and math.prod(ls) <= EXACT_GRADIENT_MAX_VOXELS}
        out.append(Level(tuple(ls), int(n), int(f), relative, options))
    return levels, tuple(out)


def _scale(relative, dtype):
    return 1.0 if relative is None else jnp.asarray(relative, dtype)


# No parameters yet: the first level starts from a zero field.
_NONE = "none"


@stored_jit(static_argnames=("shape", "relative", "previous", "batch"))
def _start_level(params, *, shape, relative, previous=_NONE, batch=False):
    """The carry ``(params, Adam state)`` of a level of spatial ``shape``.

    ``params`` are the previous level's final parameters (``previous``: that level's relative
    spacing), whose field ``smooth(params)`` is resized to ``shape`` and, on an anisotropic
    level, put in units of its smallest voxel; with ``previous=_NONE``, ``params`` is a zero
    field. One program per level boundary: no program for the field in between.
    """
    def one(p):
        f = p if previous == _NONE else _smooth(p, previous) / _scale(previous, p.dtype)
        if f.shape[:-1] != shape:
            f = spatial.resize_ddf(f, shape)
        return f * _scale(relative, f.dtype)

    params = jax.vmap(one)(params) if batch else one(params)
    return params, steps_lib.optimizer(1.0, 1).init(params)


@stored_jit(static_argnames=("relative", "shape", "integration_steps", "transform", "batch"))
def _final_field(params, *, relative, shape, integration_steps, transform, batch=False):
    """The finest level's field ``smooth(params)`` at full resolution: ``(ddf, velocity or None)``."""
    def one(p):
        f = _smooth(p, relative) / _scale(relative, p.dtype)
        if f.shape[:-1] != shape:
            f = spatial.resize_ddf(f, shape)
        if transform == "svf":
            return spatial.integrate_velocity(f, steps=integration_steps), f
        return f, None

    return jax.vmap(one)(params) if batch else one(params)


def _smooth(p, relative):
    """The field the parameters stand for: a 3-voxel box per axis, edges repeated.

    On an anisotropic level the kernel of axis ``a`` is ``[w, 1 − 2w, w]`` with
    ``w = 1 / (3 r_a²)``: the variance of the box of the finest axis, in mm. The edges are
    repeated by concatenation and the box is a ``reduce_window`` (with its gradient 6x
    faster on CPU than shifted slices of ``jnp.pad(mode="edge")``).
    """
    for _ in range(SMOOTHING_PASSES):
        for axis in range(p.ndim - 1):
            n = p.shape[axis]
            q = jnp.concatenate([jax.lax.slice_in_dim(p, 0, 1, axis=axis), p,
                                 jax.lax.slice_in_dim(p, n - 1, n, axis=axis)], axis=axis)
            dims = tuple(3 if a == axis else 1 for a in range(p.ndim))
            box = jax.lax.reduce_window(q, 0.0, jax.lax.add, dims, (1,) * p.ndim, "VALID")
            if relative is None or relative[axis] == 1.0:
                p = box * (1.0 / 3.0)
            else:  # w·(left + centre + right) + (1 − 3w)·centre
                w = 1.0 / (3.0 * relative[axis] ** 2)
                p = w * box + (1.0 - 3.0 * w) * p
    return p


def _regularize(field, relative, regularizer: str):
    """Diffusion or bending energy; on an anisotropic level with displacements and derivatives in
    units of the finest axis's voxel (mm up to a constant)."""
    if relative is None:
        return losses.diffusion(field) if regularizer == "diffusion" else losses.bending_energy(field)
    ndim = field.shape[-1]
    rel = jnp.asarray(relative, field.dtype)
    u = field * rel
    if regularizer == "diffusion":
        return sum(jnp.mean((jnp.diff(u, axis=a) / rel[a]) ** 2) for a in range(ndim)) / ndim
    interior = tuple(slice(1, -1) for _ in range(ndim))
    d1 = lambda x, a: (jnp.roll(x, -1, axis=a) - jnp.roll(x, 1, axis=a)) / (2.0 * rel[a])
    total = 0.0
    for i in range(ndim):
        dii = (jnp.roll(u, -1, axis=i) - 2 * u + jnp.roll(u, 1, axis=i)) / rel[i] ** 2
        total = total + jnp.mean(dii[interior] ** 2)
        for j in range(i + 1, ndim):
            total = total + 2 * jnp.mean(d1(d1(u, i), j)[interior] ** 2)
    return total


def _level(carry, fixed, moving, weight, to_moving, reg_weight, learning_rate, total, start, *, length, transform,
           similarity, window, bins, regularizer, integration_steps, exact_gradient, relative=None, batch=False,
           remat=False):
    """Steps ``start .. start + length − 1`` of a level of ``total`` Adam steps (:func:`jaxreg._steps.run_steps`;
    ``total`` sets the cosine decay of the learning rate).

    ``carry`` is ``(params, Adam state)`` (:func:`_start_level`); ``params`` ``(*L, ndim)``
    stand for the field ``smooth(params)``. Returns ``(carry, (length,) loss trace)``.
    ``weight`` is ``None`` or the ``(*L)`` similarity weight map. ``to_moving`` is ``None`` (the moving
    image on the level's grid) or the ``(ndim + 1, ndim + 1)`` voxel matrix from this level to the
    moving image's own level (registration in world coordinates: the moving level is read at
    ``to_moving · [x + ddf(x), 1]`` and the similarity weighted by where it exists). ``relative``: the level's
    voxel size over its smallest (``None`` if isotropic); then the optimised variables are the
    displacement components in units of the smallest voxel (equal Adam steps in mm), ``window``
    is one per axis. ``batch``: every array has a leading pair axis ``B`` and the trace is
    ``(length, B)``; each pair has its own loss and gradient, and Adam, elementwise, treats the
    pairs apart, so every pair follows the steps of its own call. ``reg_weight``,
    ``learning_rate`` and ``total`` may be traced.
    """
    scale = _scale(relative, carry[0].dtype)
    smooth = lambda p: _smooth(p, relative) / scale  # noqa: E731

    def objective(p, fixed, moving, weight, to_moving):
        field = smooth(p)
        if transform == "svf":
            # Forward: exp(v) by scaling and squaring. Backward: exact, or d exp(v)/dv ≈ I (the
            # first-order update of log-domain demons), which skips the scatter-adds of the
            # exact adjoint: ~5x cheaper on CPU, slightly lower Dice (module docstring).
            exp = spatial.integrate_velocity(field, steps=integration_steps)
            ddf = exp if exact_gradient else field + jax.lax.stop_gradient(exp - field)
        else:
            ddf = field
        exists = None
        if to_moving is not None:
            ddf = obj.through_matrix(to_moving, ddf)
            exists = obj.existence(ddf, moving.shape[:-1])
        warped = spatial.warp(moving, ddf, order=1, mode="nearest")
        sim = obj.similarity(fixed, warped, obj.times(weight, exists), similarity=similarity, window=window,
                             bins=bins)
        return sim + reg_weight * _regularize(field, relative, regularizer)

    loss_and_grad = obj.per_pair_value_and_grad(objective, batch)
    opt = steps_lib.optimizer(learning_rate, total)

    def step(carry, i):
        p, state = carry
        loss, grad = loss_and_grad(p, fixed, moving, weight, to_moving)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), loss

    return steps_lib.run_steps(step, carry, start=start, length=length, remat=remat)


# One compiled chunk of a level: the driver dispatches it ceil(steps / CHUNK) times.
_level_chunk = stored_jit(_level, static_argnames=("length", "transform", "similarity", "window", "bins", "regularizer",
                                                "integration_steps", "exact_gradient", "relative", "batch", "remat"))


def run_levels(fixed, moving, weight_map, *, weight, learning_rate, levels: Sequence[Level], shape,
               integration_steps: int, transform: str, batch: bool = False, traced: bool = False,
               progress: steps_lib.Progress | None = None, first_level: int = 0, to_moving=None,
               moving_spacing: Sequence[float] | None = None):
    """Runs the deformable pyramid on normalised ``(*S, C)`` images (``batch``: ``(B, *S, C)``).

    ``to_moving``: the moving image lies on its own grid (one pair, not ``batch``), of voxel size
    ``moving_spacing``; ``to_moving`` ``(ndim + 1, ndim + 1)`` (may be traced) maps a fixed voxel to the
    moving voxel the affine part reads. Each level then reads the moving image's own pyramid through
    ``to_moving`` after the deformation (:func:`_level`), and the field returned is the deformation
    ``u`` on the fixed grid (the total map is ``to_moving · [x + u(x), 1]``).

    ``traced=False`` (the driver): each level is ``ceil(steps / CHUNK)`` dispatches of one compiled
    chunk by ``progress`` (:class:`jaxreg._steps.Progress`; its callback numbers the levels
    from ``first_level``). ``traced=True`` (inside ``jit``/``vmap``/``grad``): each level is one
    scan with rematerialised steps, no host work.

    Returns:
      ``(ddf, velocity or None, trace)`` at full resolution; the trace is ``(..., sum(steps))``
      (traced), or the levels' chunks for :func:`jaxreg._steps.host_trace` (driver: nothing
      waits for the device).
    """
    ndim = len(shape)
    lead = fixed.shape[:1] if batch else ()
    params, previous = jnp.zeros(lead + levels[0].shape + (ndim,), fixed.dtype), _NONE
    reg_weight = jnp.asarray(weight, fixed.dtype)
    learning_rate = jnp.asarray(learning_rate, fixed.dtype)
    progress = progress or steps_lib.Progress()
    traces = []
    full = moving.shape[len(lead):-1]
    # On two grids, the moving image's own pyramid (its own shrink factors).
    moving_levels = tuple(level.shape if to_moving is None else
                          obj.level_shape(full, obj.shrink_factors(level.factor, moving_spacing)) for level in levels)
    level_images = _level_images(fixed, moving, weight_map, shapes=tuple(level.shape for level in levels),
                                 moving_shapes=moving_levels, batch=batch)
    for i, level in enumerate(levels):
        carry = _start_level(params, shape=level.shape, relative=level.relative, previous=previous, batch=batch)
        f, m, w = level_images[i]
        t = None if to_moving is None else \
            _level_matrix(to_moving, np.linalg.inv(obj.level_to_full(full, moving_levels[i])),
                          obj.level_to_full(shape, level.shape))  # this level's voxel -> the moving level's voxel
        if traced:
            carry, trace = _level(carry, f, m, w, t, reg_weight, learning_rate, level.steps, 0, length=level.steps,
                                  batch=batch, remat=True, **level.options)
            trace = jnp.moveaxis(trace, 0, -1)
        else:
            def run_chunk(carry, start, length, f=f, m=m, w=w, t=t, level=level):
                return _level_chunk(carry, f, m, w, t, reg_weight, learning_rate, jnp.int32(level.steps), start,
                                    length=length, batch=batch, **level.options)

            carry, trace = progress.run(run_chunk, carry, level.steps, level=first_level + i)
        traces.append(trace)
        params, previous = carry[0], level.relative
    ddf, velocity = _final_field(params, relative=previous, shape=tuple(shape),
                                 integration_steps=int(integration_steps), transform=transform, batch=batch)
    return ddf, velocity, (jnp.concatenate(traces, axis=-1) if traced else traces)


@stored_jit(static_argnames=("shapes", "moving_shapes", "batch"))
def _level_images(fixed, moving, weight_map, *, shapes, moving_shapes, batch=False):
    """Every level's ``(fixed, moving, weight or None)``, downsampled to ``shapes`` (the moving image to
    ``moving_shapes``), in one program (not one per level and image: ~0.2 s of compiling each on a
    2-core CPU). ``weight_map``: ``(*S)`` (``batch``: ``(B, *S)``) or ``None``."""
    return tuple((obj.downsample(fixed, shape=s, batch=batch), obj.downsample(moving, shape=ms, batch=batch),
                  None if weight_map is None else obj.downsample(weight_map[..., None], shape=s, batch=batch)[..., 0])
                 for s, ms in zip(shapes, moving_shapes))


def _level_matrix(to_moving, moving_from_full, level_to_full):
    """A level's voxel → the moving level's voxel: ``moving_from_full · to_moving · level_to_full``
    (host float64 matrices around a possibly traced ``to_moving``)."""
    dtype = jnp.asarray(to_moving).dtype
    return jnp.asarray(moving_from_full, dtype) @ to_moving @ jnp.asarray(level_to_full, dtype)


def _level_integration_steps(steps: int, factors: Sequence[int], spacing: Sequence[float]) -> int:
    """Squarings at a level shrunk by ``factors``: ``k`` fewer than at full resolution when the
    level's smallest voxel is ``2**k`` times the image's (a velocity is that much shorter in
    voxels), at least 4."""
    ratio = min(s * f for s, f in zip(spacing, factors)) / min(spacing)
    return max(int(steps) - int(math.floor(math.log2(ratio) + 1e-9)), min(int(steps), 4))


# ----------------------------------------------------------------------------- public
def auto_levels(shape: Sequence[int], spacing: Sequence[float] | None = None, *,
                aligned: bool = False) -> tuple[int, ...]:
    """The default pyramid for an image of spatial ``shape``: factors ``(2**K, ..., 2[, 1])``.

    ``K`` is the largest integer with ``max(sides) >= 16`` and ``min(sides) >= 4``, where
    ``sides = shape / factors`` and ``factors`` are the per-axis shrink factors of ``2**K``
    for ``spacing`` (ANTs' rule: an axis with larger voxels shrinks less, see
    :mod:`jaxreg._objective`; all equal to ``2**K`` when isotropic): the coarsest level is
    about 16 voxels across, where large displacements (unaligned pairs: a brain 20 % smaller)
    are found. The finest level is full resolution for images of at most 2**18 voxels and
    half resolution above (full resolution doubles the time on CPU for < 0.003 Dice on
    brains). Measured: 160×192×144 brains and 32×128×128 prostates → ``(8, 4, 2)``;
    256² slices → ``(16, 8, 4, 2, 1)``.

    ``aligned=True`` (an affine stage ran first, as in :func:`jaxreg.register`): in 3-D, two
    sides must reach 16 (``ndim − 1``: every side but the thinnest). The 256×216×10 cine stack
    then starts at ``8`` (32×27×10) instead of ``16`` (16×14×5, one side of 16): one level
    program fewer, Dice 0.877 against 0.876 (measured before the affine levels shared one LNCC
    window, ``docs/register.md``). Without an affine stage its
    ``16`` level matters (Dice 0.874 against 0.865). Brains, prostates and 2-D images keep their
    levels.
    """
    shape = tuple(shape)
    return obj.auto_levels(shape, None if spacing is None else obj.check_spacing(spacing, len(shape)),
                           finest_max_voxels=FULL_RESOLUTION_MAX_VOXELS, wide_axes=len(shape) - 1 if aligned else 1)


def pyramid(shape: Sequence[int], levels: Sequence[int] | None = None,
            steps: int | Sequence[int] = STEPS_PER_LEVEL, *,
            spacing: Sequence[float] | None = None, aligned: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(levels, steps)`` as :func:`optimize` runs them (svf/ddf) for spatial ``shape``: one step count per level
    (``aligned``: after an affine stage, see :func:`auto_levels`).

    Raises:
      ValueError: non-positive factors or steps, lists of different lengths, bad ``spacing``.
    """
    spacing = obj.check_spacing(spacing, len(tuple(shape)))
    default = auto_levels(shape, spacing, aligned=aligned) if levels is None else None
    levels, steps, _, _ = obj.plan_levels(tuple(shape), levels, steps, spacing, default_levels=default)
    return levels, steps


def optimize(
    fixed,
    moving,
    *,
    fixed_mask=None,
    spacing: Sequence[float] | None = None,
    transform: str = "svf",
    similarity: str = "lncc",
    window: int = 5,
    bins: int = 32,
    regularizer: str = "diffusion",
    weight: float = 0.5,
    levels: Sequence[int] | None = None,
    steps: int | Sequence[int] | None = None,
    learning_rate: float | None = None,
    integration_steps: int = 7,
    init: str = "com",
    callback: Callable[[int, int, float], None] | None = None,
    batch: bool = False,
) -> OptimizeResult:
    """Registers ``moving`` onto ``fixed`` by multi-resolution instance optimisation.

    Minimises ``similarity(fixed, warp(moving, φ)) + weight · regularizer(field)`` with
    Adam, coarse to fine (details and the measurements behind the defaults: module
    docstring). ``field`` is the displacement itself (``transform="ddf"``) or a stationary
    velocity ``v`` with ``φ = exp(v)`` by scaling and squaring (``transform="svf"``,
    diffeomorphic, the default). ``"rigid"`` and ``"affine"`` optimise a small parameter
    vector instead (:func:`jaxreg.optimize_affine.optimize_affine`; no regulariser).

    Args:
      fixed: 2-D ``(H, W)`` or 3-D ``(D, H, W)`` image, or ``(D, H, W, C)`` (a rank-3 array
        is a 3-D image, as in :mod:`jaxreg.losses`; 2-D images with channels are not
        accepted). Each channel is robustly min-max normalised (module docstring).
      moving: image of the same shape as ``fixed`` (resample it first if it is not).
      fixed_mask: optional ``(*S)`` array, nonzero where the similarity counts (per-voxel
        weights for LNCC/MSE, the ``mask`` of mutual information).
      spacing: voxel size per array axis in mm (``None``: isotropic, today's voxel units).
        Anisotropic spacing shrinks each axis of the pyramid like ANTs, sizes the LNCC
        window per axis (``window`` voxels of the finest axis), takes the regulariser's and
        the smoothing's derivatives in mm and makes Adam's steps equal in mm. Any isotropic
        spacing gives exactly the result of ``None``.
      transform: ``"svf"``, ``"ddf"``, ``"rigid"`` or ``"affine"``.
      similarity: ``"lncc"`` (window ``window``), ``"mse"`` or ``"mi"`` (``bins`` bins).
      window: odd LNCC window side in voxels (at every level).
      bins: number of mutual-information histogram bins.
      regularizer: ``"diffusion"`` or ``"bending"`` (see :mod:`jaxreg.losses`).
      weight: regulariser weight ``>= 0`` (higher is smoother).
      levels: downsampling factors, coarse to fine; every side must stay >= 4 voxels.
        ``None``: :func:`auto_levels` of the image shape (powers of two from a coarsest
        level about 16 voxels across, e.g. ``(8, 4, 2)`` for brains 160×192×144, down to
        half resolution, or full resolution for images of at most 2**18 voxels).
      steps: Adam steps at each level: one number for all, or one per level; ``None``: 100
        (svf/ddf) or the affine default (50).
      learning_rate: Adam step size; ``None``: 0.05 (svf/ddf: voxels of the current
        level per step, roughly) or the affine default (:mod:`jaxreg.optimize_affine`).
      integration_steps: scaling-and-squaring steps for ``"svf"`` (``|v| / 2**steps``
        should stay below ~0.5 voxel).
      init: rigid/affine only: ``"com"`` (translation by the intensity centres of mass) or
        ``"identity"``.
      callback: optional ``callback(level_index, step, loss)``, called between the compiled
        chunks of 10 steps of each level, with the loss of the chunk's last step (e.g. for a
        progress bar; with ``batch``, the mean loss of the pairs). Not inside the compiled
        program, so the programs stay in JAX's persistent compilation cache.
      batch: ``fixed`` and ``moving`` are stacks ``(B, *S)`` / ``(B, *S, C)`` of B pairs of
        one shape, registered in one compiled loop (vmapped: a GPU runs them in parallel);
        each pair gets exactly the steps it would get alone (its own loss, gradient and Adam
        state). ``fixed_mask`` is ``(*S)`` for all pairs or ``(B, *S)``. Every array of the
        result has a leading ``B`` axis (``losses`` ``(B, sum(steps))``).

    Returns:
      An :class:`OptimizeResult`; ``warp(moving, result.ddf)`` is aligned with ``fixed``.

    Raises:
      ValueError: for bad inputs or options; the message names the argument.
    """
    check_options(transform=transform, similarity=similarity, regularizer=regularizer, window=window,
                   bins=bins, weight=weight, learning_rate=learning_rate,
                   integration_steps=integration_steps, callback=callback)
    if transform in ("rigid", "affine"):
        result = optimize_affine.optimize_affine(
            fixed, moving, fixed_mask=fixed_mask, spacing=spacing, transform=transform, similarity=similarity,
            window=window, bins=bins, levels=levels, learning_rate=learning_rate, init=init,
            **({} if steps is None else {"steps": steps}),
            callback=callback, batch=batch)
        matrix = jnp.asarray(result.matrix, jnp.float32)
        ddf = jax.vmap(lambda m: spatial.affine_ddf(m, result.shape))(matrix) if batch else \
            spatial.affine_ddf(matrix, result.shape)
        return OptimizeResult(ddf, None, result.losses, result.steps, result.levels, result.matrix)
    batch = bool(batch)
    if batch:
        fixed, moving = obj.prepare_pairs(fixed, moving)
    else:
        fixed, moving = obj.prepare_pair(fixed, moving)
    shape = fixed.shape[1:-1] if batch else fixed.shape[:-1]
    spacing = obj.check_spacing(spacing, len(shape))
    levels, plan = plan_levels(shape, spacing, transform=transform, similarity=similarity, window=window, bins=bins,
                               regularizer=regularizer, levels=levels, steps=steps,
                               integration_steps=integration_steps)
    weight_map = obj.mask_weight(fixed_mask, shape, batch=fixed.shape[0] if batch else None)
    progress = steps_lib.Progress(callback)
    ddf, velocity, chunks = run_levels(
        fixed, moving, weight_map, weight=weight, learning_rate=LEARNING_RATE if learning_rate is None else learning_rate,
        levels=plan, shape=shape, integration_steps=integration_steps, transform=transform, batch=batch,
        progress=progress)
    progress.flush()
    return OptimizeResult(ddf, velocity, steps_lib.host_trace(chunks), tuple(lv.steps for lv in plan),
                          levels)
