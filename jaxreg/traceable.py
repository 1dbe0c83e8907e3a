"""Registration as a pure function of arrays: :func:`register_traceable`, under ``jit``, ``vmap`` and ``grad``.

:func:`jaxreg.register` is a driver around the stages in this module: it checks the input with
clear errors, reports progress, turns on the compilation cache and loads trained models. The
stages themselves (the affine pyramid, then the deformable one) are JAX code with no host I/O,
so a JAX program can call them on traced arrays:

* ``jax.jit``: the whole registration compiles to one program (each level one ``lax.scan``);
* ``jax.vmap``: over pairs of one shape;
* ``jax.grad``: with respect to the images, the mask and the regularisation ``weight``.

Gradients run **through the optimiser's steps** (reverse mode through every Adam step of every
level), not implicitly at an optimum. The steps are what the registration computes: Adam stops
after a fixed budget with a cosine-decayed step size, not at a stationary point of the
objective, and the large levels use a first-order gradient of ``exp`` (:mod:`jaxreg.optimize`),
so the stationarity condition that an implicit gradient needs holds for neither. The gradient
through the steps is the exact derivative of the field the call returns (it matches central
finite differences). Memory stays bounded: every step is recomputed in the backward pass and
each level's scan is nested ``√n × √n`` with checkpoints (:func:`jaxreg._steps.run_steps`),
so the backward pass keeps about ``2·√n`` copies of a level's parameters and Adam moments for
``n`` steps, and none of a step's intermediates (warps, LNCC box sums).

Value checks become flags inside a trace: ``info["valid"]`` is ``False`` when an image has a
NaN or Inf or is constant, or the mask counts no voxel; the field is then zero (the identity)
rather than NaN. :func:`jaxreg.register` on concrete arrays raises a ``ValueError`` instead.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _objective as obj
from jaxreg import optimize as optimize_lib
from jaxreg import optimize_affine as affine_lib
from jaxreg import spatial
from jaxreg._programs import stored_jit

__all__ = ["Registration", "is_traced", "register_traceable"]

AFFINE_STAGES = ("affine", "rigid")


class Registration(NamedTuple):
    """The result of :func:`jaxreg.register` and :func:`register_traceable`.

    Attributes:
      ddf: ``(*S, ndim)`` total displacement in voxels (pull convention), on the fixed grid:
        ``warped(x) = moving(x + ddf(x))`` and ``ddf(x) = matrix · [x + u(x), 1] − x``.
      warped: the moving image resampled onto the fixed grid, shaped like ``moving`` (on two grids:
        the fixed grid's shape, ``moving``'s channels).
      warped_labels: the moving label map warped with nearest-neighbour interpolation, or
        ``None`` when no labels were given.
      info: ``method`` ("optimize" or the model name), ``steps``, ``levels``, ``losses``
        (optimiser loss trace, lower is better) or solver options, ``affine`` (the stage
        run, or ``None``), ``affine_levels``, ``affine_steps``, ``affine_losses``,
        ``affine_time_s``, ``spacing``, ``time_s`` (wall seconds, both stages) and ``timings``
        (seconds: ``prepare``, ``affine``, ``deformable``: host time until each stage's work was
        dispatched, the last steps of one stage overlapping the next one's compiling, the last
        phase up to the finished result; ``compile``: XLA compiling programs that the persistent
        cache did not hold, ``cache_load``: loading the others from it, ``trace``: tracing and
        lowering; all three within the phases). From :func:`register_traceable`:
        arrays only, ``losses``, ``affine_losses`` and ``valid`` (``False``: an image with
        NaN/Inf or constant, or an empty mask; the field is then zero).
      matrix: ``(ndim + 1, ndim + 1)`` homogeneous voxel matrix mapping a fixed-grid voxel
        (array axis order) to a moving-array voxel (float64 from :func:`jaxreg.register`);
        the identity without an affine stage.
      deformation: ``(*S, ndim)`` displacement ``u`` of the deformable stage in voxels on the
        fixed grid (applied before ``matrix``), or ``None`` when there was no deformable stage.
      velocity: the stationary velocity ``v`` with ``u = exp(v)`` (``transform="svf"``), else ``None``.
      spacing: the voxel size per axis (mm) used.
    """

    ddf: jax.Array
    warped: jax.Array
    warped_labels: jax.Array | None
    info: dict[str, Any]
    matrix: np.ndarray | jax.Array | None = None
    deformation: jax.Array | None = None
    velocity: jax.Array | None = None
    spacing: tuple[float, ...] | None = None

    def world_matrix(self, grid_affine=None) -> np.ndarray:
        """The affine stage in world units: ``G · matrix · G⁻¹``.

        Args:
          grid_affine: the fixed grid's ``(ndim + 1, ndim + 1)`` voxel → world matrix (e.g.
            a NIfTI affine); default ``diag(spacing, 1)`` (mm, axes of the array).

        Returns:
          ``(ndim + 1, ndim + 1)`` float64 matrix mapping a fixed world point to the moving
          world point it reads, when the moving image lives on the same grid.
        """
        ndim = self.ddf.shape[-1]
        matrix = np.eye(ndim + 1) if self.matrix is None else np.asarray(self.matrix, np.float64)
        if grid_affine is None:
            spacing = (1.0,) * ndim if self.spacing is None else self.spacing
            grid = np.diag(np.append(np.asarray(spacing, np.float64), 1.0))
        else:
            grid = np.asarray(grid_affine, np.float64)
            if grid.shape != (ndim + 1, ndim + 1):
                raise ValueError(f"`grid_affine` must be a ({ndim + 1}, {ndim + 1}) matrix; got shape {grid.shape}.")
        return grid @ matrix @ np.linalg.inv(grid)


def is_traced(*values) -> bool:
    """Whether any of ``values`` (arrays, or pytrees of them) is a JAX tracer (inside jit, vmap, grad)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))


# ----------------------------------------------------------------------------- static checks
# Arguments of optimize/optimize_affine that register passes itself (not user options).
REGISTER_OWNS = ("fixed", "moving", "fixed_mask", "spacing", "callback", "batch")


def _defaults(function) -> dict:
    """The keyword-only defaults of ``function`` (the one place each default is written)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in REGISTER_OWNS}


def _check_names(given: Mapping, function, owned, argument: str) -> None:
    valid = tuple(name for name in _defaults(function) if name not in owned)
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ValueError(f"{argument}: unknown option(s) {unknown} of {function.__name__}; valid names: "
                         f"{', '.join(valid)}.")


def check_stage(affine, affine_options, options, model=None) -> tuple[str | None, dict]:
    """``(the affine stage to run or None, affine options)``, the option names checked."""
    if affine is not None and affine is not False and affine not in AFFINE_STAGES:
        raise ValueError(f"`affine` must be one of {AFFINE_STAGES}, False or None; got {affine!r}.")
    if affine_options is not None and not isinstance(affine_options, Mapping):
        raise ValueError(f"`affine_options` must be a dict of options of optimize_affine or None; got {affine_options!r}.")
    affine_options = dict(affine_options or {})
    if "transform" in affine_options:
        raise ValueError("`affine_options` takes no 'transform': choose it with affine='rigid' or 'affine'.")
    _check_names(affine_options, affine_lib.optimize_affine, ("transform",), "`affine_options`")
    if model is None:  # a model's predict checks its own options
        _check_names(options, optimize_lib.optimize, (), "`**options` of register")
    if options.get("transform") in AFFINE_STAGES:  # the affine transform is the whole registration
        return None, affine_options
    return (affine or None), affine_options


def check_not_channels_2d(given_shape, shape, batch: bool) -> None:
    """Refuses a rank-3 image (rank 4 with ``batch``) whose last axis is too short for a 3-D image."""
    if len(given_shape) == 3 + batch and len(shape) == 3 and shape[-1] < 4:
        raise ValueError(
            f"`fixed` of shape {tuple(given_shape)} is read as a 3-D image {tuple(shape)} whose last axis has "
            f"{shape[-1]} voxel(s), fewer than the 4 a 3-D registration needs. A rank-3 array is a 3-D image; "
            f"2-D images with channels are not supported: register one channel or average them "
            f"(e.g. `image.mean(-1)`).")


def _check_values(options: dict, traced: bool) -> None:
    """:func:`jaxreg._objective.check_options` of the merged options; a traced ``weight`` or
    ``learning_rate`` (a scalar array) stands in for a number."""
    stand_in = {}
    for name in ("weight", "learning_rate"):
        value = options.get(name)
        if value is not None and not isinstance(value, numbers.Real):
            if np.shape(value) != () or not (traced or isinstance(value, jax.Array)):
                raise ValueError(f"`{name}` must be a number or a scalar array; got {value!r}.")
            stand_in[name] = 1.0
    obj.check_options(**{k: stand_in.get(k, options[k]) for k in (
        "transform", "similarity", "regularizer", "window", "bins", "weight", "learning_rate",
        "integration_steps")}, callback=None)


# ----------------------------------------------------------------------------- the stages
@stored_jit(static_argnames=("shape",))
def warp_affine(image, matrix, *, shape=None):
    """``(*S, C)`` resampled through the voxel ``matrix`` (linear, edges repeated) onto a grid of
    ``shape`` (default ``S``)."""
    return spatial.warp(image, spatial.affine_ddf(matrix, image.shape[:-1] if shape is None else shape))


@stored_jit
def _affine_ddf(matrix, like):
    return spatial.affine_ddf(matrix, like.shape[:-1])


# ``matrix · [x + u(x), 1] − x``: the total displacement of ``u`` then ``matrix``.
_compose_affine = stored_jit(obj.through_matrix)


@stored_jit(static_argnames=("order",))
def _warp(image, ddf, *, order=1):
    return spatial.warp(image, ddf, order=order)


def per_pair(fn, batch: bool):
    """``fn`` of one pair's arrays, mapped over a leading pair axis when ``batch``."""
    return jax.vmap(fn) if batch else fn


def affine_stage(fixed_n, moving_n, weight_map, *, stage, affine_options, options, spacing, batch=False,
                 traced=False, progress=None, grid=None) -> tuple[jax.Array, dict]:
    """The affine stage on normalised images: ``(voxel matrix (..., ndim + 1, ndim + 1), info)``;
    the identity (and empty info) when ``stage`` is ``None``. The driver (``traced=False``) passes
    a :class:`jaxreg._steps.Progress`; its ``affine_losses`` are then the levels' chunks
    (:func:`jaxreg._steps.host_trace`), so that nothing waits for the device. ``grid``: the moving
    image's own grid (:class:`jaxreg._objective.Grid`); the matrix then points into it (without a
    stage: the world identity ``grid.to_moving``)."""
    lead = fixed_n.shape[:1] if batch else ()
    ndim = fixed_n.ndim - 1 - len(lead)
    if stage is None:
        eye = np.eye(ndim + 1) if grid is None else grid.to_moving
        return jnp.broadcast_to(jnp.asarray(eye, dtype=fixed_n.dtype), lead + (ndim + 1,) * 2), {}
    shared = {k: options[k] for k in ("similarity", "window", "bins") if k in options}
    o = _defaults(affine_lib.optimize_affine) | shared | affine_options
    _check_values(o | {"regularizer": "diffusion", "weight": 0.0, "integration_steps": 0, "transform": stage}, traced)
    shape = fixed_n.shape[len(lead):-1]
    levels, steps, plan = affine_lib.plan_levels(shape, spacing, levels=o["levels"], steps=o["steps"],
                                                 window=o["window"])
    _, matrix, _, trace = affine_lib.run_levels(
        fixed_n, moving_n, weight_map, plan=plan, spacing=spacing, transform=stage, similarity=o["similarity"],
        bins=o["bins"], init=o["init"], learning_rate=o["learning_rate"], scale_prior=o["scale_prior"], batch=batch,
        traced=traced, progress=progress, grid=grid)
    return matrix, {"affine_levels": levels, "affine_steps": steps, "affine_losses": trace}


def deformable_stage(fixed_n, moving_n, weight_map, *, options, spacing, batch=False, traced=False, progress=None,
                     first_level=0, grid=None, to_moving=None,
                     aligned=False) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None, dict]:
    """The deformable stage (or, with ``transform="rigid"/"affine"``, the only, affine one) on
    normalised images: ``(matrix or None, deformation or None, velocity or None, info)``; the
    losses as in :func:`affine_stage`. ``grid``: the moving image's own grid; the deformable stage
    then reads it through ``to_moving`` (the affine stage's matrix) after the deformation. ``aligned``:
    an affine stage ran first (the default pyramid, :func:`jaxreg.optimize.auto_levels`)."""
    o = _defaults(optimize_lib.optimize) | options
    _check_values(o, traced)
    lead = fixed_n.shape[:1] if batch else ()
    shape = fixed_n.shape[len(lead):-1]
    transform = o["transform"]
    if transform in AFFINE_STAGES:
        steps = affine_lib.STEPS_PER_LEVEL if o["steps"] is None else o["steps"]
        levels, steps, plan = affine_lib.plan_levels(shape, spacing, levels=o["levels"], steps=steps,
                                                     window=o["window"])
        _, matrix, _, trace = affine_lib.run_levels(
            fixed_n, moving_n, weight_map, plan=plan, spacing=spacing, transform=transform,
            similarity=o["similarity"], bins=o["bins"], init=o["init"], learning_rate=o["learning_rate"],
            batch=batch, traced=traced, progress=progress, first_level=first_level, grid=grid)
        return matrix, None, None, {"steps": steps, "levels": levels, "losses": trace}
    levels, plan = optimize_lib.plan_levels(
        shape, spacing, transform=transform, similarity=o["similarity"], window=o["window"], bins=o["bins"],
        regularizer=o["regularizer"], levels=o["levels"], steps=o["steps"], integration_steps=o["integration_steps"],
        aligned=aligned)
    learning_rate = optimize_lib.LEARNING_RATE if o["learning_rate"] is None else o["learning_rate"]
    deformation, velocity, trace = optimize_lib.run_levels(
        fixed_n, moving_n, weight_map, weight=o["weight"], learning_rate=learning_rate, levels=plan, shape=shape,
        integration_steps=o["integration_steps"], transform=transform, batch=batch, traced=traced,
        progress=progress, first_level=first_level, to_moving=None if grid is None else to_moving,
        moving_spacing=None if grid is None else grid.spacing)
    return None, deformation, velocity, {"steps": tuple(lv.steps for lv in plan), "levels": levels, "losses": trace}


def total_field(matrix, deformation, like, *, affine_first: bool, batch=False) -> jax.Array:
    """The total displacement on the grid of ``like`` ``(*S, C)``: ``matrix`` alone, the deformation
    alone (no affine stage on one grid: exactly it), or the deformation then the matrix."""
    if deformation is None:
        return per_pair(_affine_ddf, batch)(matrix, like)
    if not affine_first:
        return deformation
    return per_pair(_compose_affine, batch)(matrix, deformation)


LABEL_INTERPOLATIONS = ("nearest", "linear")


@stored_jit(static_argnames=("interpolation", "values"))
def _warp_labels(labels, ddf, *, interpolation="nearest", values=None):
    return spatial.warp_labels(labels, ddf, interpolation=interpolation, mode="constant", values=values)


def warp_outputs(moving, moving_labels, ddf, *, batch=False, label_interpolation="nearest"):
    """``(warped (*S, C), warped labels or None)``; the labels are 0 where ``ddf`` reads outside
    the moving grid. ``label_interpolation="linear"`` (:func:`jaxreg.spatial.warp_labels`) needs
    concrete labels (their values are read on the host)."""
    warped = per_pair(_warp, batch)(moving, ddf)
    if moving_labels is None:
        return warped, None
    values = spatial.label_values(moving_labels) if label_interpolation == "linear" else None
    labels = per_pair(partial(_warp_labels, interpolation=label_interpolation, values=values), batch)(
        jnp.asarray(moving_labels), ddf)
    return warped, labels


# ----------------------------------------------------------------------------- the core
def register_traceable(fixed, moving, *, fixed_mask=None, moving_labels=None, spacing=None,
                       affine: str | bool | None = "affine", affine_options: Mapping | None = None,
                       **options) -> Registration:
    """:func:`jaxreg.register`'s classical registration as a pure JAX function (module docstring).

    Works on concrete and traced arrays alike: inside ``jax.jit``, ``jax.vmap`` (over pairs of
    one shape) and ``jax.grad`` (with respect to ``fixed``, ``moving``, ``fixed_mask`` and the
    regularisation ``weight``, which may be a traced scalar, as may ``learning_rate``).
    :func:`jaxreg.register` called on traced arrays runs this function. Options are those of
    :func:`jaxreg.register` without a model: static Python values (they choose the compiled
    program), except ``weight`` and ``learning_rate``.

    Args:
      fixed: ``(H, W)``, ``(D, H, W)`` or ``(D, H, W, C)`` image.
      moving: an image of the same shape.
      fixed_mask: optional ``(*S)`` mask; the similarity counts where it is nonzero.
      moving_labels: optional ``(*S)`` integer label map, warped with nearest neighbours (0 outside
        the moving grid).
      spacing: voxel size per array axis in mm (static), as for :func:`jaxreg.register`.
      affine: ``"affine"`` (default), ``"rigid"`` or ``False``/``None``.
      affine_options: options of :func:`jaxreg.optimize_affine.optimize_affine`.
      **options: options of :func:`jaxreg.optimize.optimize` for the deformable stage.

    Returns:
      A :class:`Registration` whose fields are JAX arrays and whose ``info`` holds arrays only
      (``losses``, ``affine_losses``, ``valid``), so that a jitted function may return it whole.
      ``matrix`` is in the images' float dtype (float32), not float64.

    Raises:
      ValueError: at trace time, for what does not depend on values: shapes, ranks, spacing,
        option names and static option values. Values are not checked: see ``info["valid"]``.
    """
    given_shape, moving_shape = np.shape(fixed), np.shape(moving)
    fixed, moving = obj.check_pair(fixed, moving, values=False)
    shape = fixed.shape[:-1]
    check_not_channels_2d(given_shape, shape, False)
    spacing = obj.check_spacing(spacing, len(shape))
    stage, affine_options = check_stage(affine, affine_options, options)
    if fixed_mask is not None and tuple(np.shape(fixed_mask)) != shape:
        raise ValueError(f"`fixed_mask` must have the spatial shape of `fixed` {shape}; got "
                         f"{tuple(np.shape(fixed_mask))}.")
    if moving_labels is not None and tuple(np.shape(moving_labels)) != shape:
        raise ValueError(f"`moving_labels` must have the spatial shape of `moving` {shape}; got "
                         f"{tuple(np.shape(moving_labels))}.")
    weight_map = obj.mask_weight(fixed_mask, shape, check=False)
    valid = obj.image_is_valid(fixed) & obj.image_is_valid(moving)
    if weight_map is not None:
        valid = valid & jnp.any(weight_map > 0)
    # An invalid pair is replaced by a harmless one (a ramp against itself), so that no NaN
    # reaches the optimiser; its field is then set to zero below.
    ramp = jnp.broadcast_to(jnp.sum(spatial.identity_grid(shape), axis=-1, keepdims=True), fixed.shape)
    fixed_safe, moving_safe = jnp.where(valid, fixed, ramp), jnp.where(valid, moving, ramp)
    if weight_map is not None:
        weight_map = jnp.where(valid, weight_map, 1.0)
    fixed_n, moving_n = obj.normalise(fixed_safe), obj.normalise(moving_safe)

    matrix, info = affine_stage(fixed_n, moving_n, weight_map, stage=stage, affine_options=affine_options,
                                options=options, spacing=spacing, traced=True)
    moving_stage = moving_n if stage is None else warp_affine(moving_n, matrix)
    only_matrix, deformation, velocity, more = deformable_stage(fixed_n, moving_stage, weight_map, options=options,
                                                                spacing=spacing, traced=True, aligned=stage is not None)
    info.update(losses=more["losses"], valid=valid)
    info = {k: v for k, v in info.items() if k in ("losses", "affine_losses", "valid")}
    if only_matrix is not None:
        matrix = only_matrix
    ddf = total_field(matrix, deformation, moving, affine_first=stage is not None)
    zero = lambda x: None if x is None else jnp.where(valid, x, 0.0)  # noqa: E731
    ddf, deformation, velocity = zero(ddf), zero(deformation), zero(velocity)
    matrix = jnp.where(valid, matrix, jnp.eye(len(shape) + 1, dtype=matrix.dtype))
    warped, warped_labels = warp_outputs(moving, moving_labels, ddf)
    return Registration(ddf, warped.reshape(moving_shape), warped_labels, info, matrix, deformation, velocity,
                        spacing)
