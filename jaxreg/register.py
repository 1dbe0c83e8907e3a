"""``jaxreg.register(fixed, moving)``: the front door.

One call registers one pair, 2-D or 3-D, with or without channels:

* ``affine="affine"`` (default) first finds an affine map (``"rigid"``: rotation and
  translation; :func:`jaxreg.optimize_affine.optimize_affine`), resamples the moving image
  through it once, and hands that to the deformable stage, like ANTs ``SyN`` (affine, then
  SyN). ``affine=False`` skips it (exactly the results of the deformable stage alone).
* The deformable stage: ``model=None`` (default) is classical instance optimisation
  (:func:`jaxreg.optimize.optimize`), no training needed; ``**options`` are its keyword
  options (``similarity``, ``levels``, ...). ``model=`` a workdir written by ``train.py`` or
  a :class:`Model` from :func:`load_model`: the trained network (VoxelMorph, or DEQReg with
  solver options such as ``steps=96`` or ``tol=1e-4`` as ``**options``).
* ``spacing=(sx, sy[, sz])``: the voxel size in mm per array axis; the pyramid, the
  regulariser, the smoothing, the LNCC window and the affine parameters use it (isotropic
  spacing or ``None``: voxel units, the same result).

The result is a :class:`Registration`: the total displacement ``ddf`` ``(*S, ndim)`` in
voxels (pull: ``warped(x) = moving(x + ddf(x))``), the warped image, the warped label map
when labels were given, ``info`` (method, steps, loss or residual trace, seconds), and the
two stages: the voxel ``matrix`` and the deformable stage's ``deformation`` ``u``, with
``ddf(x) = matrix · [x + u(x), 1] − x`` (the deformation is applied first, then the affine
map, as ANTs' ``-t Warp.nii.gz -t Affine.mat``).

Many pairs of one shape: ``register(fixed, moving, batch=True)`` on stacks ``(B, *S[, C])``
registers them in one call (the optimisers are vmapped, so a GPU runs the pairs in
parallel; a trained model sees one ``(B, ...)`` batch); each pair gets the result it would
get alone, to float rounding. Or call ``register`` in a loop: each call after the first
reuses the compiled code.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _objective
from jaxreg import optimize as optimize_lib
from jaxreg import optimize_affine as affine_lib
from jaxreg import spatial

__all__ = ["Model", "Registration", "enable_compilation_cache", "load_model", "register", "register_stages"]

AFFINE_STAGES = ("affine", "rigid")
# JAX's persistent compilation cache: a path, or "0"/"off"/"false" to leave it off.
CACHE_ENV = "JAXREG_COMPILATION_CACHE"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (compiled programs kept on disk).

    On a 2-core CPU compiling the programs of one registration takes ~20 s, often more than
    running them; with the cache a later process with images of the same shapes loads them
    instead. :func:`register` calls this on its first call. Nothing changes when JAX already
    has a cache directory (``jax_compilation_cache_dir``) or when the environment variable
    ``JAXREG_COMPILATION_CACHE`` is ``0``, ``off`` or ``false``.

    Args:
      path: the directory; default ``$JAXREG_COMPILATION_CACHE``, else
        ``$XDG_CACHE_HOME/jaxreg/xla`` (``~/.cache/jaxreg/xla``).

    Returns:
      The directory in use, or ``None`` when the cache stays off.
    """
    setting = os.environ.get(CACHE_ENV, "")
    if path is None and setting.lower() in ("0", "off", "false", "no"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = setting or os.path.join(base, "jaxreg", "xla")
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


class Registration(NamedTuple):
    """The result of :func:`register`.

    Attributes:
      ddf: ``(*S, ndim)`` total displacement in voxels (pull convention), on the fixed grid:
        ``warped(x) = moving(x + ddf(x))`` and ``ddf(x) = matrix · [x + u(x), 1] − x``.
      warped: the moving image resampled onto the fixed grid, shaped like ``moving``.
      warped_labels: the moving label map warped with nearest-neighbour interpolation, or
        ``None`` when no labels were given.
      info: ``method`` ("optimize" or the model name), ``steps``, ``levels``, ``losses``
        (optimiser loss trace, lower is better) or solver options, ``affine`` (the stage
        run, or ``None``), ``affine_levels``, ``affine_steps``, ``affine_losses``,
        ``affine_time_s``, ``spacing`` and ``time_s`` (wall seconds, both stages).
      matrix: ``(ndim + 1, ndim + 1)`` float64 homogeneous voxel matrix mapping a fixed-grid
        voxel (array axis order) to a moving-array voxel; the identity without an affine
        stage.
      deformation: ``(*S, ndim)`` displacement ``u`` of the deformable stage in voxels on the
        fixed grid (applied before ``matrix``), or ``None`` when there was no deformable stage.
      velocity: the stationary velocity ``v`` with ``u = exp(v)`` (``transform="svf"``), else ``None``.
      spacing: the voxel size per axis (mm) used.
    """

    ddf: jax.Array
    warped: jax.Array
    warped_labels: jax.Array | None
    info: dict[str, Any]
    matrix: np.ndarray | None = None
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


class Model(NamedTuple):
    """A trained model loaded by :func:`load_model`.

    Attributes:
      name: ``config.model.name`` (``"voxelmorph"``, ``"deqreg"``, ...).
      method: the :class:`jaxreg.methods.Method` (``predict(params, fixed, moving, **options)``
        on ``(B, *S)`` images returns ``(B, *S, ndim)`` fields).
      params: the trained parameters (EMA ones when the run kept them).
      config: the run's config.
      workdir: where it came from.
      step: the checkpoint's training step.
    """

    name: str
    method: Any  # jaxreg.methods.Method
    params: Any
    config: Any
    workdir: Path
    step: int


def load_model(workdir: str | os.PathLike, *, step: int | str = "latest") -> Model:
    """Loads the trained model of a ``train.py`` workdir (the training data need not be present).

    Args:
      workdir: the folder given to ``train.py --workdir``.
      step: ``"latest"``, ``"best"`` (by the run's ``training.best_metric``) or a step number.

    Raises:
      FileNotFoundError: no such workdir, no config or no (such) checkpoint there.
      ValueError: the workdir holds an unknown model, or a bad ``step``.
    """
    # Imported here: checkpoints and networks are not needed by the classical path.
    from jaxreg.runs.restore import load_run

    run = load_run(workdir, step=step)
    return Model(str(run.config.model.name), run.method, run.params, run.config, Path(workdir), run.step)


def _model_inputs(model: Model, image: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A ``(1, *S')`` single-channel image in the training range (``data.options.out_range``, default [0, 1]),
    padded (edge) to sides the network accepts.

    ``image`` is ``(*S, C)``; models take one channel, the mean of the channels.
    """
    from jaxreg.data.preprocess import rescale_intensity
    from jaxreg.models import unet

    image = jnp.mean(image, axis=-1)
    out_range = tuple((model.config.data.get("options") or {}).get("out_range") or (0.0, 1.0))  # ACDC: (-1, 1)
    image = jnp.asarray(rescale_intensity(np.asarray(image), out_range=out_range, percentiles=(0.5, 99.5)))
    if model.name == "diffusereg":  # Swin-UNETR: patch · 2**stages
        factor = int(model.config.model.get("patch", 2)) * 2 ** len(model.config.model.get("depths") or (2, 2, 2, 2))
    else:
        factor = 2 ** len(model.config.model.get("encoder") or unet.ENCODER)
    pad = [(0, -s % factor) for s in shape]
    return jnp.pad(image, pad, mode="edge")[None]


def _register_with_model(model: Model, fixed, moving, shape, options: Mapping, key, *,
                         batch: bool = False) -> tuple[jax.Array, dict]:
    """The model's field for one pair ``(*S, C)`` (``batch``: for a stack ``(B, *S, C)``, every pair
    rescaled and padded alone, then one ``(B, ...)`` call of the network)."""
    if model.name not in ("deqreg", "diffusereg") and options:
        raise ValueError(f"a {model.name!r} model takes no options; got {sorted(options)}.")
    pairs = zip(fixed, moving) if batch else [(fixed, moving)]
    inputs = [(_model_inputs(model, f, shape), _model_inputs(model, m, shape)) for f, m in pairs]
    f, m = jnp.concatenate([f for f, _ in inputs]), jnp.concatenate([m for _, m in inputs])
    if model.name == "diffusereg":  # a sampler: its options, and the key of its noise
        ddf = model.method.module.sample(model.params, f, m, key=key, **options).ddf
    else:
        ddf = model.method.predict(model.params, f, m, **options)
    ddf = ddf[(slice(None), *(slice(0, s) for s in shape))]
    return (ddf if batch else ddf[0]), {"method": model.name, "workdir": str(model.workdir), "checkpoint": model.step,
                                        "options": dict(options)}


@jax.jit
def _affine_ddf(matrix, like):
    return spatial.affine_ddf(matrix, like.shape[:-1])


@jax.jit(static_argnames="order")
def _warp(image, ddf, *, order=1):
    return spatial.warp(image, ddf, order=order)


@jax.jit
def _warp_affine(image, matrix):
    """``(*S, C)`` resampled through the voxel ``matrix`` (linear, edges repeated)."""
    return spatial.warp(image, spatial.affine_ddf(matrix, image.shape[:-1]))


@jax.jit
def _compose_affine(matrix, u):
    """``matrix · [x + u(x), 1] − x``: the total displacement of ``u`` then ``matrix``."""
    ndim = u.shape[-1]
    return spatial.affine_ddf(matrix, u.shape[:-1]) + jnp.einsum("...j,ij->...i", u, matrix[:ndim, :ndim])


def _per_pair(fn: Callable, batch: bool) -> Callable:
    """``fn`` of one pair's arrays, mapped over a leading pair axis when ``batch``."""
    return jax.vmap(fn) if batch else fn


# Arguments of optimize/optimize_affine that register passes itself (not user options).
_REGISTER_OWNS = ("fixed", "moving", "fixed_mask", "spacing", "callback", "batch")


def _keyword_names(function, owned) -> tuple[str, ...]:
    return tuple(name for name, p in inspect.signature(function).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and name not in owned)


def _check_names(given: Mapping, function, owned, argument: str) -> None:
    valid = _keyword_names(function, owned)
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ValueError(f"{argument}: unknown option(s) {unknown} of {function.__name__}; valid names: "
                         f"{', '.join(valid)}.")


def _check_stage(affine, affine_options, options, model=None) -> tuple[str | None, dict]:
    if affine is not None and affine is not False and affine not in AFFINE_STAGES:
        raise ValueError(f"`affine` must be one of {AFFINE_STAGES}, False or None; got {affine!r}.")
    if affine_options is not None and not isinstance(affine_options, Mapping):
        raise ValueError(f"`affine_options` must be a dict of options of optimize_affine or None; got {affine_options!r}.")
    affine_options = dict(affine_options or {})
    if "transform" in affine_options:
        raise ValueError("`affine_options` takes no 'transform': choose it with affine='rigid' or 'affine'.")
    _check_names(affine_options, affine_lib.optimize_affine, _REGISTER_OWNS + ("transform",), "`affine_options`")
    if model is None:  # a model's predict checks its own options
        _check_names(options, optimize_lib.optimize, _REGISTER_OWNS, "`**options` of register")
    if options.get("transform") in AFFINE_STAGES:  # the affine transform is the whole registration
        return None, affine_options
    return (affine or None), affine_options


def _check_not_channels_2d(given_shape, shape, batch: bool) -> None:
    """Refuses a rank-3 image (rank 4 with ``batch``) whose last axis is too short for a 3-D image."""
    if len(given_shape) == 3 + batch and len(shape) == 3 and shape[-1] < 4:
        raise ValueError(
            f"`fixed` of shape {tuple(given_shape)} is read as a 3-D image {tuple(shape)} whose last axis has "
            f"{shape[-1]} voxel(s), fewer than the 4 a 3-D registration needs. A rank-3 array is a 3-D image; "
            f"2-D images with channels are not supported: register one channel or average them "
            f"(e.g. `image.mean(-1)`).")


def _check_labels(labels) -> np.ndarray:
    """An integer label map; floats whose values are all integers are cast to int32, others refused."""
    labels = np.asarray(labels)
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.integer):
        return labels
    if not np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"`moving_labels` must be an integer label map; got dtype {labels.dtype}.")
    bad = ~np.isfinite(labels)
    bad[~bad] = labels[~bad] != np.round(labels[~bad])
    if bad.any():
        raise ValueError(f"`moving_labels` must be an integer label map (floats are accepted only when every value "
                         f"is an integer); got dtype {labels.dtype} with {int(bad.sum())} non-integer value(s), "
                         f"e.g. {labels[bad].flat[0].item()!r}.")
    return labels.astype(np.int32)


def _given(options: Mapping, key: str, default):
    return default if options.get(key) is None else options[key]


def register_stages(shape, *, spacing=None, affine: str | bool | None = "affine", affine_options: Mapping | None = None,
           model=None, **options) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]:
    """The optimisation stages :func:`register` runs for spatial ``shape``: ``(name, levels, steps)`` each.

    ``name`` is ``"rigid"``, ``"affine"``, ``"svf"``/``"ddf"`` or ``"model"`` (no levels).
    The callback of :func:`register` numbers the levels across the stages in this order, so
    ``sum(sum(steps) for _, _, steps in register_stages(...))`` is the number of steps a progress bar
    will see.
    """
    shape = tuple(int(s) for s in shape)
    spacing = _objective.check_spacing(spacing, len(shape))
    stage, affine_options = _check_stage(affine, affine_options, options, model)
    out = []
    if stage is not None:
        levels = affine_options.get("levels")
        default = affine_lib.affine_levels(shape, spacing) if levels is None else None
        levels, steps, _, _ = _objective.plan_levels(shape, levels, _given(affine_options, "steps", affine_lib.STEPS_PER_LEVEL),
                                                     spacing, default_levels=default)
        out.append((stage, levels, steps))
    if model is not None:
        out.append(("model", (), ()))
    elif options.get("transform") in AFFINE_STAGES:
        levels = options.get("levels")
        default = affine_lib.affine_levels(shape, spacing) if levels is None else None
        levels, steps, _, _ = _objective.plan_levels(shape, levels, _given(options, "steps", affine_lib.STEPS_PER_LEVEL),
                                                     spacing, default_levels=default)
        out.append((options["transform"], levels, steps))
    else:
        levels, steps = optimize_lib.pyramid(shape, options.get("levels"),
                                             _given(options, "steps", optimize_lib.STEPS_PER_LEVEL), spacing=spacing)
        out.append((options.get("transform", "svf"), levels, steps))
    return tuple(out)


def register(fixed, moving, *, model: Model | str | os.PathLike | None = None, spacing=None,
             affine: str | bool | None = "affine", affine_options: Mapping | None = None, fixed_mask=None,
             moving_labels=None, key: jax.Array | None = None, callback: Callable | None = None,
             batch: bool = False, **options) -> Registration:
    """Registers ``moving`` onto ``fixed``: an affine stage, then a deformable one.

    Args:
      fixed: ``(H, W)``, ``(D, H, W)`` or ``(D, H, W, C)`` image; the target grid. A rank-3 array
        is a 3-D image: 2-D images with channels ``(H, W, C)`` are not supported (register one
        channel or their mean).
      moving: an image of the same spatial shape and channels.
      model: ``None`` for classical optimisation, or a trained model (a workdir path or
        :func:`load_model`'s result) for the deformable stage.
      spacing: voxel size per array axis in mm, e.g. ``(1.4, 1.4, 10.0)`` (``None``: 1 mm,
        isotropic; any isotropic spacing gives the same result as ``None``).
      affine: ``"affine"`` (default), ``"rigid"``, or ``False``/``None`` to skip the affine
        stage (the result is then exactly that of the deformable stage alone).
      affine_options: keyword options of :func:`jaxreg.optimize_affine.optimize_affine`
        (``levels``, ``steps``, ``learning_rate``, ``init``, ``similarity``, ...); the
        similarity, window and bins default to those of the deformable stage.
      fixed_mask: optional ``(*S)`` mask on the fixed grid; the similarity counts only
        where it is nonzero (classical path and the affine stage).
      moving_labels: optional ``(*S)`` integer label map of ``moving``, warped with
        nearest-neighbour interpolation into ``warped_labels``. A float map whose values are
        all integers is cast to int32; other floats raise.
      key: PRNG key of a sampling model's noise (DiffuseReg; default from its ``seed``);
        unused by the optimiser and deterministic models.
      callback: ``callback(level, step, loss)`` during optimisation (e.g. a progress bar);
        levels are numbered across the stages (:func:`register_stages`); with ``batch`` the
        loss is the mean over the pairs.
      batch: ``fixed`` and ``moving`` are stacks ``(B, *S)`` or ``(B, D, H, W, C)`` of B pairs of
        one shape, registered together (the optimisers vmapped; a model gets one batch), each
        pair as it would be alone. ``fixed_mask`` is ``(*S)`` for every pair or ``(B, *S)``;
        ``moving_labels`` is ``(B, *S)``. Every array of the result (``ddf``, ``warped``,
        ``warped_labels``, ``matrix``, ``deformation``, ``velocity``, the loss traces in
        ``info``) gains a leading ``B`` axis.
      **options: keyword options of :func:`jaxreg.optimize.optimize` for the deformable
        stage (``transform="rigid"``/``"affine"`` makes that the only stage), or of the
        model's ``predict`` (DEQReg: ``steps``, ``tol``, ``method``, ...; DiffuseReg: sampler
        options ``method``, ``steps``, ``eta``, ``guidance``, ``ensemble`` (the mean field), ...).

    Returns:
      A :class:`Registration`.

    Raises:
      ValueError: NaN/Inf or constant images, mismatched shapes or ranks, a rank-3 array
        whose last axis is shorter than 4 (a 2-D image with channels), a mask or label map of
        the wrong shape, a float label map with non-integer values, a bad ``spacing`` or
        ``affine``, unknown keyword options of the optimisers (the message lists the valid
        names; a model's ``predict`` checks its own).
      FileNotFoundError: a model workdir that does not exist.

    Example::

        result = jaxreg.register(fixed, moving, spacing=(1.4, 1.4, 10.0))  # affine + SVF
        result = jaxreg.register(fixed, moving, model="runs/deqreg_demo", steps=24)
        results = jaxreg.register(fixed_stack, moving_stack, batch=True)  # (B, *S): B pairs at once
        dice = jaxreg.metrics.dice(fixed_labels, jaxreg.warp(moving_labels, result.ddf, order=0))
    """
    start = time.perf_counter()
    enable_compilation_cache()
    given = fixed, moving
    batch = bool(batch)
    if batch:  # (B, *S, C) float32, every pair checked
        fixed, moving = _objective.check_stacks(fixed, moving)
    else:
        fixed, moving = optimize_lib.check_pair(fixed, moving)  # (*S, C) float32
    lead = fixed.shape[:1] if batch else ()  # (B,) or ()
    shape = fixed.shape[len(lead):-1]
    ndim = len(shape)
    spacing = _objective.check_spacing(spacing, ndim)
    _check_not_channels_2d(np.shape(given[0]), shape, batch)
    stage, affine_options = _check_stage(affine, affine_options, options, model)
    if fixed_mask is not None and tuple(np.shape(fixed_mask)) not in {shape, lead + shape}:
        raise ValueError(f"`fixed_mask` must have the spatial shape of `fixed` {shape}"
                         + (f" or {lead + shape}" if batch else "") + f"; got {tuple(np.shape(fixed_mask))}.")
    if moving_labels is not None and tuple(np.shape(moving_labels)) != lead + shape:
        raise ValueError(f"`moving_labels` must have the {'shape (B, *S)' if batch else 'spatial shape'} of `moving` "
                         f"{lead + shape}; got {tuple(np.shape(moving_labels))}.")
    if moving_labels is not None:
        moving_labels = _check_labels(moving_labels)
    if model is not None:
        if fixed_mask is not None:
            raise ValueError("`fixed_mask` is used by the classical optimiser only (model=None).")
        model = model if isinstance(model, Model) else load_model(model)

    first_level = 0
    stage_callback = callback
    info: dict[str, Any] = {"affine": stage, "spacing": list(spacing)}
    matrix = np.array(np.broadcast_to(np.eye(ndim + 1), lead + (ndim + 1, ndim + 1)))
    # Each image checked and normalised once, for both stages (exactly what optimize would do).
    normalise = _per_pair(_objective.normalise, batch)
    fixed_n, moving_n = normalise(fixed), normalise(moving)
    moving_stage = moving_n
    if stage is not None:
        affine_start = time.perf_counter()
        shared = {k: options[k] for k in ("similarity", "window", "bins") if k in options}
        result = affine_lib.optimize_affine(_objective.Normalised(fixed_n), _objective.Normalised(moving_n),
                                            fixed_mask=fixed_mask, spacing=spacing, transform=stage,
                                            callback=callback, batch=batch, **(shared | affine_options))
        matrix = result.matrix
        moving_stage = _per_pair(_warp_affine, batch)(moving_n, jnp.asarray(matrix, jnp.float32))
        first_level = len(result.levels)
        info.update(affine_levels=result.levels, affine_steps=result.steps, affine_losses=np.asarray(result.losses),
                    affine_time_s=time.perf_counter() - affine_start)
        if callback is not None:
            stage_callback = lambda level, step, loss: callback(level + first_level, step, loss)  # noqa: E731

    velocity = None
    if model is None:
        result = optimize_lib.optimize(_objective.Normalised(fixed_n), _objective.Normalised(moving_stage),
                                       fixed_mask=fixed_mask, spacing=spacing, callback=stage_callback, batch=batch,
                                       **options)
        if result.matrix is not None:  # transform="rigid"/"affine": the only stage
            matrix, deformation = result.matrix, None
        else:
            deformation, velocity = result.ddf, result.velocity
        info.update(method="optimize", steps=result.steps, levels=result.levels, losses=np.asarray(result.losses),
                    options=dict(options))
    else:
        model_moving = moving if stage is None else _per_pair(_warp_affine, batch)(moving,
                                                                                    jnp.asarray(matrix, jnp.float32))
        deformation, model_info = _register_with_model(model, fixed, model_moving, shape, options, key, batch=batch)
        info.update(model_info)
    if deformation is None:
        ddf = _per_pair(_affine_ddf, batch)(jnp.asarray(matrix, jnp.float32), moving)
    elif stage is None:
        ddf = deformation  # exactly the deformable stage's field
    else:
        ddf = _per_pair(_compose_affine, batch)(jnp.asarray(matrix, jnp.float32), deformation)
    warp = _per_pair(_warp, batch)
    warped = warp(moving, ddf).reshape(np.shape(given[1]))  # shaped like the moving image given
    warped_labels = None if moving_labels is None else _per_pair(partial(_warp, order=0), batch)(
        jnp.asarray(moving_labels), ddf)
    jax.block_until_ready(warped)
    info["time_s"] = time.perf_counter() - start
    return Registration(ddf, warped, warped_labels, info, np.asarray(matrix, np.float64), deformation, velocity,
                        spacing)
