"""Rigid and affine registration in pure JAX: a small parameter vector, coarse to fine.

:func:`optimize_affine` finds the map ``q = A (p − c) + c + t`` from fixed to moving
points in **mm** (``p = spacing · x`` for a voxel ``x``, array axis order) that minimises
``similarity(fixed, moving ∘ map)`` with optax Adam:

* **Parameters.** Rigid: a rotation (an angle in 2-D; a rotation vector ``ω``, axis ×
  angle, in 3-D, ``A = exp([ω]×)`` by Rodrigues' formula) and a translation ``t``.
  Affine: ``A = Rot · exp(S)`` (the polar form) with a rotation and a symmetric log-stretch
  ``S`` (scales and shears), and ``t``: ``det A = exp(tr S) > 0``, so the map is never a
  reflection, and a prior ``scale_prior · ‖S‖²`` added to the similarity keeps the scale of
  an axis the images cannot see (a thick-slice stack's through-plane axis) near 1. The
  rotation and ``S`` are scaled by the image's radius ``R`` (the intensity-weighted RMS
  distance of the fixed image from ``c``), so every parameter moves a point at distance ``R``
  by about one mm per unit: Adam's equal steps are then balanced (preconditioning).
* **Centre and start.** ``c`` is the intensity centre of mass of the fixed image;
  ``init="com"`` starts ``t`` at the difference of the two centres of mass (a pure shift),
  ``"identity"`` at 0. Rotating about the centre of mass decouples rotation from
  translation. ``init="search"`` also starts the rotation at the best of a search, as ANTs'
  ``antsAI``: the principal axes of the two images (intensity moments) and a grid of rotations
  (every 30° in 3-D, 15° in 2-D), then offsets of 7.5° (3°) within ±15° around the best,
  each scored by the similarity at the coarsest level (a synthetic object rotated 30°, 60°,
  90° is recovered within 0.3° and 0.05 voxel, where ``"com"`` stays 69° off at 90°). It is
  not the default: on a nearly symmetric anatomy the coarse level can prefer a turned copy
  (the 256×216×10 cine stack: a 180° in-plane turn, Dice 0.856 against 0.870 with ``"com"``;
  the brain cases of ``docs/register.md`` are unchanged).
* **Levels.** As :func:`jaxreg.optimize.optimize`: anti-aliased downsampling with per-axis
  shrink factors from the spacing (ANTs' rule), one jitted ``lax.scan`` per level, images
  passed as arguments, each level dispatched in chunks of 10 steps. Every level runs on the
  grid of the finest one (a coarser level's images in its corner with similarity weight 0
  around them), the geometry (spacing, level grid, centre, radius) is passed as small
  arrays and every level takes the finest level's LNCC window (voxels per axis; static in the
  program), so all levels, and other spacings, share one compiled program (compiling is ~3 s a
  program on a 2-core CPU; per-level windows cost the 256×216×10 cine stack a second program for
  Dice 0.8767 against 0.8758, and the 1 × 1 × 10 mm brain copy a third for Dice 0.7708 against
  0.7716). With three levels or more the coarse ones share the grid of the
  largest of them instead, a second program, so that their steps run at a coarse grid's
  speed (a 256×216×10 cine stack at levels ``(16, 8, 4, 2)``: affine stage 6.2 → 5.0 s per run). The transform lives in
  mm and carries over between levels unchanged. The learning rate is in voxels of the level's
  finest axis per step, with a cosine decay to 10 % within each level; 50 steps a level (the
  loss is flat after ~40 on brains).
  Default levels (:func:`affine_levels`): from about 16 voxels across (in every direction but
  the thinnest) down to the finest level of at most 2**17 voxels (brains 160×192×144 and the
  256×216×10 cine stack: ``(8, 4)``).
* **Warping.** Each step builds the level's dense displacement from the matrix
  (:func:`jaxreg.spatial.affine_ddf`) and warps with :func:`jaxreg.spatial.warp` (linear,
  edges repeated outside the image).

The result is the homogeneous **voxel** matrix ``M`` (fixed voxel → moving voxel):
``M = S⁻¹ [A | (I − A) c + t] S`` with ``S = diag(spacing, 1)``.
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
from jaxreg import _rotations as rotations
from jaxreg import spatial
from jaxreg._programs import stored_jit
from jaxreg._objective import check_options

__all__ = ["AffineResult", "affine_levels", "optimize_affine"]

AFFINE_TRANSFORMS = ("rigid", "affine")
INITS = ("com", "search", "identity")
STEPS_PER_LEVEL = 50  # default Adam steps at each level (the loss is flat after ~40 on brains)
LEARNING_RATE = 0.25  # default Adam step: voxels of the level's finest axis, per step
SCALE_PRIOR = 0.1  # default weight of ‖S‖² (the affine log-stretch) added to the similarity
# The finest default level is the finest with at most this many voxels (the deformable stage that
# follows refines the rest). 2**17 rather than 3·2**16 stops one level coarser on a 256×216×10 cine
# stack (128×108×10 is left to the deformable stage): Dice 0.869 -> 0.876, the affine stage of a later
# run 2.1 -> 1.1 s; brains keep (8, 4) (`benchmarks/register.py --cli`, docs/register.md).
MAX_VOXELS = 2**17


class AffineResult(NamedTuple):
    """Result of :func:`optimize_affine`.

    Attributes:
      matrix: ``(ndim + 1, ndim + 1)`` float64 homogeneous voxel matrix mapping a fixed-grid
        voxel (array axis order) to the moving-array voxel it reads:
        ``warped(x) = moving(matrix · [x, 1])``.
      world: the same map in mm, ``diag(spacing, 1) · matrix · diag(spacing, 1)⁻¹``.
      losses: ``(sum(steps),)`` loss trace over all levels (lower is better).
      steps: steps run at each level.
      levels: downsampling factors used, coarse to fine.
      shape: the spatial shape of the fixed grid.
      parameters: the final parameter vector: the rotation (an angle, or a rotation vector in
        3-D) and, for ``"affine"``, the upper triangle of ``S`` (row by row), each × the radius
        in mm; then the translation in mm.
    """

    matrix: np.ndarray
    world: np.ndarray
    losses: np.ndarray
    steps: tuple[int, ...]
    levels: tuple[int, ...]
    shape: tuple[int, ...]
    parameters: np.ndarray


# ----------------------------------------------------------------------------- geometry
def _n_rotation(ndim: int) -> int:
    return 1 if ndim == 2 else 3


def _n_linear(transform: str, ndim: int) -> int:
    # affine: a rotation and the ndim·(ndim + 1)/2 entries of a symmetric log-stretch (4 / 9)
    return _n_rotation(ndim) if transform == "rigid" else ndim * ndim


def _log_stretch(theta, radius, ndim: int) -> jax.Array:
    """The symmetric ``(ndim, ndim)`` log-stretch ``S`` (dimensionless) of affine parameters."""
    r = _n_rotation(ndim)
    rows, cols = np.triu_indices(ndim)
    upper = jnp.zeros((ndim, ndim), theta.dtype).at[rows, cols].set(theta[r:ndim * ndim] / radius)
    return upper + upper.T - jnp.diag(jnp.diag(upper))


def _linear(theta, radius, *, transform: str, ndim: int) -> jax.Array:
    """``A``: the rotation (rigid) or ``R · exp(S)`` (affine), whose determinant is ``exp(tr S) > 0``."""
    rotation = rotations.rotation(theta[:_n_rotation(ndim)] / radius, ndim)
    if transform == "rigid":
        return rotation
    return rotation @ jax.scipy.linalg.expm(_log_stretch(theta, radius, ndim))


def _world(theta, centre, radius, *, transform: str, ndim: int) -> jax.Array:
    """``(ndim + 1, ndim + 1)`` homogeneous map of mm points, fixed → moving."""
    a = _linear(theta, radius, transform=transform, ndim=ndim)
    t = theta[_n_linear(transform, ndim):]
    top = jnp.concatenate([a, ((jnp.eye(ndim) - a) @ centre + t)[:, None]], axis=1)
    return jnp.concatenate([top, jnp.eye(ndim + 1)[ndim:]], axis=0)


def _padded(image, shape, work, weight=False, batch=False):
    """``image`` ``(*S, C)`` downsampled to ``shape`` and padded to ``work`` at the far ends
    (edges repeated; zeros for a ``weight`` map); ``batch``: each of a ``(B, *S, C)`` stack."""
    if batch:
        return jax.vmap(lambda x: _padded(x, shape, work, weight))(image)
    image = obj.downsample(image, shape=shape)
    pad = [(0, w - s) for s, w in zip(shape, work)] + [(0, 0)]
    return jnp.pad(image, pad) if weight else jnp.pad(image, pad, mode="edge")


@stored_jit(static_argnames=("grids", "batch"))
def _level_images(fixed, moving, weight, *, grids, batch=False):
    """Every level's ``(fixed, moving, weight)``, downsampled and padded, in one program (not one per
    level and image: ~0.2 s of compiling each on a 2-core CPU).

    ``grids``: per level ``(shape, work, moving shape, moving work)`` (:func:`_padded`); ``weight``
    is the ``(*S)`` similarity weight map (``batch``: ``(B, *S)``), or ``None`` for ones.
    """
    if weight is None:
        weight = jnp.ones(fixed.shape[:-1], fixed.dtype)
    return tuple((_padded(fixed, shape, work, batch=batch), _padded(moving, moving_shape, moving_work, batch=batch),
                  _padded(weight[..., None], shape, work, weight=True, batch=batch)[..., 0])
                 for shape, work, moving_shape, moving_work in grids)


# ----------------------------------------------------------------------------- levels
def _warp_through(moving, matrix, shape, extent, existence: bool):
    """``moving`` read through the voxel ``matrix`` on a grid of ``shape`` (linear, edges repeated):
    ``(warped, where it exists or None)`` (:func:`jaxreg._objective.existence` of ``extent``)."""
    disp = spatial.affine_ddf(matrix, shape)
    warped = spatial.warp(moving, disp, order=1, mode="nearest")
    return warped, (obj.existence(disp, extent) if existence else None)


def _level(carry, fixed, moving, weight, level_to_mm, mm_to_moving, extent, centre, radius, learning_rate,
           scale_prior, total, start, *, length, transform, similarity, window, bins, existence=False, batch=False,
           remat=False):
    """Steps ``start .. start + length − 1`` of a level of ``total`` Adam steps; returns
    ``(carry, (length,) loss trace)`` (:func:`jaxreg._steps.run_steps`).

    ``carry`` is ``(theta, Adam state)``. ``level_to_mm`` ``(ndim + 1, ndim + 1)`` maps a voxel
    of this level to mm, ``mm_to_moving`` mm to a voxel of the moving level (``level_to_mm⁻¹`` when
    both images share the grid); the level's voxel matrix is
    ``mm_to_moving · world(theta) · level_to_mm``. ``existence``: the similarity is also weighted by
    where the moving level (``extent`` voxels per axis) exists (images on two grids).
    The loss is the similarity plus ``scale_prior · ‖S‖²`` (affine: ``S`` the log-stretch).
    ``batch``: ``theta``, the images, ``weight``, ``centre`` and ``radius`` have a leading pair
    axis, each pair is optimised as alone (its own loss, gradient and Adam moments) and the trace
    is ``(length, B)``.
    """
    ndim = fixed.ndim - 1 - int(batch)
    shape = fixed.shape[int(batch):-1]

    def objective(th, fixed, moving, weight, centre, radius):
        m = mm_to_moving @ _world(th, centre, radius, transform=transform, ndim=ndim) @ level_to_mm
        warped, exists = _warp_through(moving, m, shape, extent, existence)
        loss = obj.similarity(fixed, warped, obj.times(weight, exists), similarity=similarity, window=window,
                              bins=bins)
        if transform == "rigid":
            return loss
        return loss + scale_prior * jnp.sum(_log_stretch(th, radius, ndim) ** 2)

    loss_and_grad = obj.per_pair_value_and_grad(objective, batch)
    opt = steps_lib.optimizer(learning_rate, total)

    def step(carry, i):
        th, state = carry
        loss, grad = loss_and_grad(th, fixed, moving, weight, centre, radius)
        updates, state = opt.update(grad, state, th)
        return (optax.apply_updates(th, updates), state), loss

    return steps_lib.run_steps(step, carry, start=start, length=length, remat=remat)


# One compiled chunk of a level; every level of every spacing runs it (module docstring).
_level_chunk = stored_jit(_level, static_argnames=("length", "transform", "similarity", "window", "bins",
                                                "existence", "batch", "remat"))


@stored_jit
def _start_level(theta):
    return theta, steps_lib.optimizer(1.0, 1).init(theta)


@stored_jit(static_argnames=("batch",))
def _moments(image, spacing, *, batch=False):
    """Intensity centre of mass (mm), RMS radius about it (mm) and second moments about it
    (mm², ``(ndim, ndim)``) of a ``(*S, C)`` image (``batch``: of each image of a stack)."""
    if batch:
        return jax.vmap(lambda x: _moments(x, spacing))(image)
    ndim = image.ndim - 1
    mass = jnp.mean(image, axis=-1)
    total = jnp.maximum(jnp.sum(mass), 1e-12)
    coords = [jax.lax.broadcasted_iota(jnp.float32, mass.shape, k) * spacing[k] for k in range(ndim)]
    com = jnp.stack([jnp.sum(mass * c) for c in coords]) / total
    centred = [c - com[k] for k, c in enumerate(coords)]
    cov = jnp.stack([jnp.stack([jnp.sum(mass * a * b) for b in centred]) for a in centred]) / total
    return com, jnp.sqrt(jnp.trace(cov)), cov


# ----------------------------------------------------------------------------- public
def affine_levels(shape: Sequence[int], spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """The default pyramid of the affine stage: from a coarsest level about 16 voxels across in
    every direction but the thinnest (:func:`jaxreg.optimize.auto_levels` with ``aligned=True``)
    down to the finest level of at most ``MAX_VOXELS`` (2**17) voxels: full resolution for small
    images; brains 160×192×144 → ``(8, 4)``; the 256×216×10 cine stack → ``(8, 4)``, one compiled
    level program (its 16×14×5 level added a second program and no accuracy: Dice 0.8758 with
    it, 0.8760 without, ``register`` in one process)."""
    shape = tuple(int(s) for s in shape)
    spacing = obj.check_spacing(spacing, len(shape))
    every = obj.auto_levels(shape, spacing, finest_max_voxels=math.inf,  # down to full resolution
                            wide_axes=len(shape) - 1)
    small = [f for f in every if math.prod(obj.level_shape(shape, obj.shrink_factors(f, spacing))) <= MAX_VOXELS]
    finest = min(small) if small else every[0]
    return tuple(f for f in every if f >= finest)


def optimize_affine(
    fixed,
    moving,
    *,
    fixed_mask=None,
    spacing: Sequence[float] | None = None,
    transform: str = "affine",
    similarity: str = "lncc",
    window: int = 5,
    bins: int = 32,
    levels: Sequence[int] | None = None,
    steps: int | Sequence[int] = STEPS_PER_LEVEL,
    learning_rate: float | None = None,
    scale_prior: float = SCALE_PRIOR,
    init: str = "com",
    callback: Callable[[int, int, float], None] | None = None,
    batch: bool = False,
) -> AffineResult:
    """Rigid or affine registration of ``moving`` onto ``fixed`` (module docstring).

    Args:
      fixed, moving: images as for :func:`jaxreg.optimize.optimize` (same shape).
      fixed_mask: optional ``(*S)`` array, nonzero where the similarity counts.
      spacing: voxel size per array axis in mm (``None``: 1). The transform is optimised in
        mm, so rotations are real rotations on anisotropic grids.
      transform: ``"rigid"`` (rotation + translation) or ``"affine"`` (matrix + translation).
      similarity, window, bins: as for :func:`jaxreg.optimize.optimize`.
      levels: downsampling factors, coarse to fine; ``None``: :func:`affine_levels`.
      steps: Adam steps at each level (one number or one per level).
      learning_rate: Adam step in voxels of the level's finest axis (``None``: 0.25).
      scale_prior: weight of ``‖S‖²``, the squared log-stretch of the affine map (scales and
        shears; not rotation or translation), added to the similarity: it keeps the scale of an
        axis the images cannot see (the through-plane axis of a thick-slice stack) near 1.
        ``0`` for none; ignored for ``"rigid"``.
      init: ``"com"`` (translation by the intensity centres of mass), ``"search"`` (that and the
        best rotation of a search over principal axes and a grid of rotations: for
        misalignments of 30° and more) or ``"identity"``.
      callback: optional ``callback(level_index, step, loss)`` between compiled chunks of 10
        steps (as :func:`jaxreg.optimize.optimize`; with ``batch``: the mean loss of the pairs).
      batch: stacks ``(B, *S[, C])`` of B pairs, optimised together in one compiled loop, each
        pair as it would be alone (as :func:`jaxreg.optimize.optimize`); ``matrix``,
        ``world``, ``losses`` and ``parameters`` of the result gain a leading ``B`` axis.

    Returns:
      An :class:`AffineResult`; ``warp(moving, affine_ddf(result.matrix, shape))`` is
      aligned with ``fixed``.

    Raises:
      ValueError: for bad inputs or options; the message names the argument.
    """
    if transform not in AFFINE_TRANSFORMS:
        raise ValueError(f"`transform` must be one of {AFFINE_TRANSFORMS}; got {transform!r}.")
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}; got {init!r}.")
    check_options(transform=transform, similarity=similarity, regularizer="diffusion", window=window, bins=bins,
                   weight=0.0, learning_rate=learning_rate, integration_steps=0, callback=callback)
    batch = bool(batch)
    fixed, moving = (obj.prepare_pairs if batch else obj.prepare_pair)(fixed, moving)
    lead = fixed.shape[:1] if batch else ()  # (B,) or ()
    shape = fixed.shape[len(lead):-1]
    spacing = obj.check_spacing(spacing, len(shape))
    levels, steps, plan = plan_levels(shape, spacing, levels=levels, steps=steps, window=window)
    weight_map = obj.mask_weight(fixed_mask, shape, batch=lead[0] if batch else None)
    progress = steps_lib.Progress(callback)
    theta, matrix, world, chunks = run_levels(
        fixed, moving, weight_map, plan=plan, spacing=spacing, transform=transform, similarity=similarity,
        bins=bins, init=init, learning_rate=learning_rate, scale_prior=scale_prior, batch=batch, progress=progress)
    progress.flush()
    return AffineResult(np.asarray(matrix, np.float64), np.asarray(world, np.float64), steps_lib.host_trace(chunks),
                        steps, levels, shape, np.asarray(theta))


class Level(NamedTuple):
    """One level of the affine pyramid (host data, static)."""

    shape: tuple[int, ...]
    steps: int
    factor: int  # the level's downsampling factor (of the finest axis)
    level_to_mm: np.ndarray  # (ndim + 1, ndim + 1): a voxel of the level -> mm
    step_mm: float  # the learning rate's unit: mm of one voxel of the level's finest axis
    window: int | tuple[int, ...]


def _to_mm(spacing) -> np.ndarray:
    """``diag(spacing, 1)``: a full-resolution voxel → mm (float64)."""
    return np.diag(np.append(np.asarray(spacing, np.float64), 1.0))


def plan_levels(shape, spacing, *, levels=None, steps=STEPS_PER_LEVEL, window=5):
    """``(levels, steps, (Level, ...))`` of :func:`optimize_affine` for a checked ``shape`` and ``spacing``."""
    default = affine_levels(shape, spacing) if levels is None else None
    levels, steps, factors, level_shapes = obj.plan_levels(shape, levels, steps, spacing, default_levels=default)
    # Every level takes the finest level's LNCC window (voxels per axis): the window is static in
    # the compiled program, and a window per level would compile one program per level where the
    # levels share a grid (the 256×216×10 cine stack: (5, 5, 5) at factor 8, (5, 5, 3) at 4).
    windows = obj.axis_windows(window, obj.relative_spacing(spacing, factors[-1]))
    plan = []
    for f, ls, fs, n in zip(levels, level_shapes, factors, steps):
        # level voxel i -> full-resolution voxel r·i + (r − 1)/2 (voxel centres) -> mm
        level_to_mm = _to_mm(spacing) @ obj.level_to_full(shape, ls)
        plan.append(Level(tuple(ls), int(n), int(f), level_to_mm, min(spacing) * max(fs), windows))
    return levels, steps, tuple(plan)


def _moving_levels(plan: Sequence[Level], shape, spacing, grid: obj.Grid | None):
    """Per level of ``plan``: ``(moving level shape, mm → moving level voxel (float64))``. One grid:
    the fixed level's own shape and ``level_to_mm⁻¹``. Two: the moving image's pyramid on its own grid
    (its own shrink factors), through the world identity ``grid.to_moving`` in mm."""
    if grid is None:
        return [(level.shape, np.linalg.inv(level.level_to_mm)) for level in plan]
    # fixed mm -> fixed voxel -> moving voxel (the same world point) -> moving mm
    to_moving_mm = _to_mm(grid.spacing) @ np.asarray(grid.to_moving, np.float64) @ np.linalg.inv(_to_mm(spacing))
    out = []
    for level in plan:
        ls = obj.level_shape(shape, obj.shrink_factors(level.factor, grid.spacing))
        out.append((ls, np.linalg.inv(_to_mm(grid.spacing) @ obj.level_to_full(shape, ls)) @ to_moving_mm))
    return out


def run_levels(fixed, moving, weight_map, *, plan: Sequence[Level], spacing, transform: str, similarity: str,
               bins: int, init: str, learning_rate=None, scale_prior=SCALE_PRIOR, batch: bool = False,
               traced: bool = False, progress: steps_lib.Progress | None = None, first_level: int = 0,
               grid: obj.Grid | None = None):
    """Runs the affine pyramid on normalised ``(*S, C)`` images (``batch``: ``(B, *S, C)``).

    ``traced=False`` (the driver): each level is ``ceil(steps / CHUNK)`` dispatches of one compiled
    chunk by ``progress`` (levels numbered from ``first_level``). ``traced=True`` (inside
    ``jit``/``vmap``/``grad``): each level is one scan with rematerialised steps.

    ``grid``: the moving image lies on its own grid (:class:`jaxreg._objective.Grid`, one pair, not
    ``batch``): each level samples the moving image's own pyramid through the world identity and the
    transform, and weights the similarity by where the moving image exists. The matrix returned then
    maps a fixed voxel to a voxel of the moving array as given.

    Returns:
      ``(theta, matrix, world, trace)``: the parameters, the voxel and mm matrices
      ``(..., ndim + 1, ndim + 1)`` (jax arrays, the images' dtype) and the loss trace
      ``(..., sum(steps))`` (traced), or the levels' chunks (driver:
      :func:`jaxreg._steps.host_trace`).
    """
    lead = fixed.shape[:1] if batch else ()
    shape = fixed.shape[len(lead):-1]
    moving_shape = moving.shape[len(lead):-1]
    ndim = len(shape)
    dtype = fixed.dtype
    learning_rate = LEARNING_RATE if learning_rate is None else learning_rate
    obj.check_non_negative(scale_prior, "scale_prior")
    spacing_arr = jnp.asarray(spacing, dtype)
    com_fixed, radius, cov_fixed = _moments(fixed, spacing_arr, batch=batch)
    com_moving, _, cov_moving = _moments(moving, jnp.asarray(spacing if grid is None else grid.spacing, dtype),
                                         batch=batch)
    to_voxels = np.eye(ndim + 1)
    if grid is not None:  # the moving moments in the fixed image's mm frame (through the world identity)
        to_voxels = np.asarray(grid.to_moving, np.float64)
        back = np.linalg.inv(_to_mm(grid.spacing) @ to_voxels @ np.linalg.inv(_to_mm(spacing)))
        com_moving = jnp.asarray(back[:ndim, :ndim], dtype) @ com_moving + jnp.asarray(back[:ndim, ndim], dtype)
        cov_moving = jnp.asarray(back[:ndim, :ndim], dtype) @ cov_moving @ jnp.asarray(back[:ndim, :ndim].T, dtype)
    radius = jnp.maximum(radius, 4.0 * min(spacing))
    theta = jnp.zeros(lead + (_n_linear(transform, ndim) + ndim,), dtype)
    if init != "identity":
        theta = theta.at[..., -ndim:].set(com_moving - com_fixed)
    # Every level runs on the grid of the finest one, its images in the corner, edges repeated,
    # with similarity weight 0 outside: one compiled program serves all levels. With three levels
    # or more, the coarse ones share the grid of the largest of them instead (a second program,
    # ~2-4 s to compile once, for coarse steps at a coarse grid's speed: 3.4 s less per run on a
    # 256x216x10 stack, where two levels on brains would save < 1 s).
    moving_levels = _moving_levels(plan, moving_shape, spacing, grid)
    finest, finest_moving = plan[-1].shape, moving_levels[-1][0]
    coarse, coarse_moving = finest, finest_moving
    if len(plan) > 2:
        coarse = tuple(max(sides) for sides in zip(*(level.shape for level in plan[:-1])))
        coarse_moving = tuple(max(sides) for sides in zip(*(ms for ms, _ in moving_levels[:-1])))
    static = {"transform": transform, "similarity": similarity, "bins": int(bins), "batch": batch,
              "existence": grid is not None}
    progress = progress or steps_lib.Progress()
    traces = []
    grids = tuple((level.shape, finest, moving_level, finest_moving) if i == len(plan) - 1
                  else (level.shape, coarse, moving_level, coarse_moving)
                  for i, (level, (moving_level, _)) in enumerate(zip(plan, moving_levels)))
    level_images = _level_images(fixed, moving, weight_map, grids=grids, batch=batch)
    for i, (level, (moving_level, mm_to_moving)) in enumerate(zip(plan, moving_levels)):
        arrays = (*level_images[i],
                  jnp.asarray(level.level_to_mm, dtype), jnp.asarray(mm_to_moving, dtype),
                  jnp.asarray(moving_level, dtype), com_fixed, radius,
                  jnp.asarray(learning_rate, dtype) * level.step_mm, jnp.asarray(scale_prior, dtype))
        if i == 0 and init == "search":
            start = _search(*arrays[:7], com_moving - com_fixed, cov_fixed, cov_moving,
                            jnp.asarray(rotations.coarse_grid(ndim)), jnp.asarray(rotations.fine_grid(ndim)),
                            window=level.window, similarity=similarity, bins=int(bins), existence=grid is not None,
                            batch=batch)
            theta = theta.at[..., :_n_rotation(ndim)].set(start * radius[..., None])
        carry = _start_level(theta)
        if traced:
            carry, trace = _level(carry, *arrays, level.steps, 0, length=level.steps, window=level.window,
                                  remat=True, **static)
            trace = jnp.moveaxis(trace, 0, -1)
        else:
            def run_chunk(carry, start, length, arrays=arrays, level=level):
                return _level_chunk(carry, *arrays, jnp.int32(level.steps), start, length=length,
                                    window=level.window, **static)

            carry, trace = progress.run(run_chunk, carry, level.steps, level=first_level + i)
        theta = carry[0]
        traces.append(trace)
    world, matrix = _matrices(theta, com_fixed, radius, jnp.asarray(spacing, dtype), jnp.asarray(to_voxels, dtype),
                              transform=transform, batch=batch)
    return theta, matrix, world, (jnp.concatenate(traces, axis=-1) if traced else traces)


@stored_jit(static_argnames=("window", "similarity", "bins", "existence", "batch"))
def _search(fixed, moving, weight, level_to_mm, mm_to_moving, extent, centre, shift, cov_fixed, cov_moving, coarse,
            fine, *, window, similarity, bins, existence=False, batch=False):
    """The start rotation of ``init="search"``: ``(r,)`` radians (``batch``: ``(B, r)``).

    Each candidate is the rigid map "rotate about the fixed centre of mass ``centre``, then shift
    by ``shift``" (mm), scored by the similarity of the level's images (lower is better). The
    candidates: the ``coarse`` grid ``(K, r)`` (the identity first: it wins ties) and the
    principal-axes rotations (:func:`jaxreg._rotations.principal_rotations`); then the best plus
    each offset of ``fine`` ``(L, r)``. As ANTs' ``antsAI``, without its local optimisation of
    each candidate: the pyramid that follows refines the best.
    """
    if batch:
        def one(f, m, w, c, s, cf, cm):
            return _search(f, m, w, level_to_mm, mm_to_moving, extent, c, s, cf, cm, coarse, fine, window=window,
                           similarity=similarity, bins=bins, existence=existence)

        return jax.vmap(one)(fixed, moving, weight, centre, shift, cov_fixed, cov_moving)
    ndim = fixed.ndim - 1
    shape = fixed.shape[:-1]

    def score(w):
        a = rotations.rotation(w, ndim)
        top = jnp.concatenate([a, ((jnp.eye(ndim) - a) @ centre + shift)[:, None]], axis=1)
        world = jnp.concatenate([top, jnp.eye(ndim + 1)[ndim:]], axis=0)
        warped, exists = _warp_through(moving, mm_to_moving @ world @ level_to_mm, shape, extent, existence)
        return obj.similarity(fixed, warped, obj.times(weight, exists), similarity=similarity, window=window,
                              bins=bins)

    def best(candidates):
        scores = jax.lax.map(score, candidates, batch_size=32)
        return candidates[jnp.argmin(scores)]  # the first of equal scores

    first = best(jnp.concatenate([coarse, rotations.principal_rotations(cov_fixed, cov_moving)]))
    return best(first + fine)


@stored_jit(static_argnames=("transform", "batch"))
def _matrices(theta, centre, radius, spacing, to_voxels, *, transform, batch=False):
    """``(world, voxel matrix)`` of the parameters: ``M = to_voxels · S⁻¹ · world · S``,
    ``S = diag(spacing, 1)`` (``to_voxels``: the identity, or a fixed voxel → the moving voxel at the
    same world point when the moving image has its own grid)."""
    ndim = spacing.shape[0]

    def one(th, c, r):
        world = _world(th, c, r, transform=transform, ndim=ndim)
        scale = jnp.append(spacing, 1.0)
        return world, to_voxels @ (world * scale[None, :] / scale[:, None])

    return jax.vmap(one)(theta, centre, radius) if batch else one(theta, centre, radius)
