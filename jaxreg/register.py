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

import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _objective, images
from jaxreg import _steps as steps_lib
from jaxreg import optimize as optimize_lib
from jaxreg import optimize_affine as affine_lib
from jaxreg.traceable import (AFFINE_STAGES, LABEL_INTERPOLATIONS, Registration, affine_stage,
                              check_not_channels_2d, check_stage, deformable_stage, is_traced, per_pair,
                              register_traceable, total_field, warp_affine, warp_outputs)

__all__ = ["Model", "Registration", "enable_compilation_cache", "load_model", "register", "register_stages",
           "register_traceable"]

# JAX's persistent compilation cache: a path, or "0"/"off"/"false" to leave it off.
CACHE_ENV = "JAXREG_COMPILATION_CACHE"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (compiled programs kept on disk).

    On a 2-core CPU compiling the programs of one registration takes ~20 s, often more than
    running them; with the cache a later process with images of the same shapes loads them
    instead; the traced programs are kept beside it (``jaxreg-programs/``), so that process does
    not trace them again either. :func:`register` calls this on its first call. Nothing changes
    when JAX already has a cache directory (``jax_compilation_cache_dir``) or when the environment variable
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
    # Every program, however quick to compile: a later process then compiles nothing at all (the
    # ~20 small ones would cost ~2 s). With no size limit set, JAX takes no file lock for this.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


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


class Clock:
    """Wall seconds of the driver's phases, and of JAX's compiling (or loading from the cache) and
    tracing, read from ``jax.monitoring`` events."""

    _totals = {"compile": 0.0, "cache_load": 0.0, "trace": 0.0}
    _listening = False
    # JAX's backend-compile event spans a load from the persistent cache too: the cache's own
    # retrieval event is subtracted from it in read().
    _EVENTS = {"/jax/core/compile/backend_compile_duration": "compile",
               "/jax/compilation_cache/cache_retrieval_time_sec": "cache_load",
               "/jax/core/compile/jaxpr_trace_duration": "trace",
               "/jax/core/compile/jaxpr_to_mlir_module_duration": "trace"}

    def __init__(self):
        if not Clock._listening:
            jax.monitoring.register_event_duration_secs_listener(Clock._listen)
            Clock._listening = True
        self.start = self.last = time.perf_counter()
        self.base = dict(Clock._totals)
        self.timings: dict[str, float] = {}

    @staticmethod
    def _listen(event, duration, **_):
        name = Clock._EVENTS.get(event)
        if name is not None:
            Clock._totals[name] += duration

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now

    def read(self) -> dict[str, float]:
        """The phases' seconds, ``compile`` (XLA compiling programs the cache did not hold),
        ``cache_load`` (loading the others from it) and ``trace`` (tracing and lowering)."""
        spent = {k: Clock._totals[k] - self.base[k] for k in Clock._totals}
        spent["compile"] = max(spent["compile"] - spent["cache_load"], 0.0)
        return self.timings | spent


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
    stage, affine_options = check_stage(affine, affine_options, options, model)
    def affine_plan(given):  # the same planner optimize_affine runs
        steps = _given(given, "steps", affine_lib.STEPS_PER_LEVEL)
        return affine_lib.plan_levels(shape, spacing, levels=given.get("levels"), steps=steps)[:2]

    out = []
    if stage is not None:
        out.append((stage, *affine_plan(affine_options)))
    if model is not None:
        out.append(("model", (), ()))
    elif options.get("transform") in AFFINE_STAGES:
        out.append((options["transform"], *affine_plan(options)))
    else:
        levels, steps = optimize_lib.pyramid(shape, options.get("levels"),
                                             _given(options, "steps", optimize_lib.STEPS_PER_LEVEL), spacing=spacing,
                                             aligned=stage is not None)
        out.append((options.get("transform", "svf"), levels, steps))
    return tuple(out)


def register(fixed, moving, *, model: Model | str | os.PathLike | None = None, spacing=None,
             affine: str | bool | None = "affine", affine_options: Mapping | None = None, fixed_mask=None,
             moving_labels=None, label_interpolation: str = "nearest", key: jax.Array | None = None,
             callback: Callable | None = None, batch: bool = False, **options) -> Registration:
    """Registers ``moving`` onto ``fixed``: an affine stage, then a deformable one.

    Args:
      fixed: ``(H, W)``, ``(D, H, W)`` or ``(D, H, W, C)`` image; the target grid. A rank-3 array
        is a 3-D image: 2-D images with channels ``(H, W, C)`` are not supported (register one
        channel or their mean). Or an image with a grid: a NIfTI path, a
        :class:`jaxreg.io.NiftiVolume` or a nibabel image (:mod:`jaxreg.images`): its voxel size is
        then the default ``spacing`` and the result an :class:`jaxreg.images.ImageRegistration`
        (the transform in world coordinates: ``save``, ``apply``, ``apply_to_points``).
      moving: an image of the same spatial shape and channels; with a grid, any grid (registered
        in world coordinates, each image on its own grid: :mod:`jaxreg.images`).
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
      moving_labels: optional ``(*S)`` integer label map of ``moving``, warped into
        ``warped_labels`` (0 where the field reads outside the moving grid). A float map whose
        values are all integers is cast to int32; other floats raise.
      label_interpolation: ``"nearest"`` (the nearest voxel's label) or ``"linear"`` (each label's
        indicator interpolated linearly, the largest wins, as ANTs' ``genericLabel``:
        :func:`jaxreg.spatial.warp_labels`).
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
        result = jaxreg.register("fixed.nii.gz", "moving.nii.gz")  # spacing and grids from the headers
        result.save("out/")  # transform/, itk/ for ANTs and Slicer, warped.nii.gz
        result = jaxreg.register(fixed, moving, model="runs/deqreg_demo", steps=24)
        results = jaxreg.register(fixed_stack, moving_stack, batch=True)  # (B, *S): B pairs at once
        dice = jaxreg.metrics.dice(fixed_labels, jaxreg.warp(moving_labels, result.ddf, order=0))
    """
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(f"`label_interpolation` must be one of {LABEL_INTERPOLATIONS}; got {label_interpolation!r}.")
    if images.is_image(fixed) or images.is_image(moving):
        return images.register_images(_register_arrays, fixed, moving, moving_labels=moving_labels, fixed_mask=fixed_mask,
                                      spacing=spacing, model=model, affine=affine, affine_options=affine_options,
                                      label_interpolation=label_interpolation, key=key, callback=callback,
                                      batch=batch, **options)
    if model is None and is_traced(fixed, moving, fixed_mask, moving_labels, options.get("weight"),
                                   options.get("learning_rate")):
        if batch or callback is not None or key is not None or label_interpolation != "nearest":
            raise ValueError("inside jit/vmap/grad, register runs register_traceable: it takes no `batch` (use "
                             "jax.vmap), `callback`, `key` or `label_interpolation` (labels: nearest).")
        return register_traceable(fixed, moving, fixed_mask=fixed_mask, moving_labels=moving_labels,
                                  spacing=spacing, affine=affine, affine_options=affine_options, **options)
    if model is not None and is_traced(fixed, moving):
        raise ValueError("a trained `model` runs outside jit/vmap/grad only (call its `method.predict` in JAX code).")
    return _register_arrays(fixed, moving, model=model, spacing=spacing, affine=affine, affine_options=affine_options,
                            fixed_mask=fixed_mask, moving_labels=moving_labels, label_interpolation=label_interpolation,
                            key=key, callback=callback, batch=batch, **options)


def _register_arrays(fixed, moving, *, model=None, spacing=None, affine="affine", affine_options=None,
                     fixed_mask=None, moving_labels=None, label_interpolation="nearest", key=None, callback=None,
                     batch=False, grid: _objective.Grid | None = None, **options) -> Registration:
    """:func:`register` on concrete arrays. ``grid`` (:mod:`jaxreg.images`): the moving array lies on its
    own grid (:class:`jaxreg._objective.Grid`; any shape and voxel size), registered in world
    coordinates: both stages read it on its own grid through the world identity ``grid.to_moving``
    and weight the similarity by where it exists; ``moving_labels`` lie on its grid, and ``matrix``
    and ``ddf`` point into it."""
    clock = Clock()
    enable_compilation_cache()
    given = fixed, moving
    batch = bool(batch)
    if batch:  # (B, *S, C) float32, every pair checked
        fixed, moving = _objective.check_stacks(fixed, moving)
    else:  # (*S, C) float32; on two grids, of any shapes
        fixed, moving = optimize_lib.check_pair(fixed, moving, same_grid=grid is None)
    lead = fixed.shape[:1] if batch else ()  # (B,) or ()
    shape = fixed.shape[len(lead):-1]
    moving_shape = moving.shape[len(lead):-1]
    ndim = len(shape)
    spacing = _objective.check_spacing(spacing, ndim)
    check_not_channels_2d(np.shape(given[0]), shape, batch)
    stage, affine_options = check_stage(affine, affine_options, options, model)
    if fixed_mask is not None and tuple(np.shape(fixed_mask)) not in {shape, lead + shape}:
        raise ValueError(f"`fixed_mask` must have the spatial shape of `fixed` {shape}"
                         + (f" or {lead + shape}" if batch else "") + f"; got {tuple(np.shape(fixed_mask))}.")
    if moving_labels is not None and tuple(np.shape(moving_labels)) != lead + moving_shape:
        raise ValueError(f"`moving_labels` must have the {'shape (B, *S)' if batch else 'spatial shape'} of `moving` "
                         f"{lead + moving_shape}; got {tuple(np.shape(moving_labels))}.")
    if moving_labels is not None:
        moving_labels = _check_labels(moving_labels)
    if model is not None:
        if fixed_mask is not None:
            raise ValueError("`fixed_mask` is used by the classical optimiser only (model=None).")
        model = model if isinstance(model, Model) else load_model(model)
    weight_map = _objective.mask_weight(fixed_mask, shape, batch=lead[0] if batch else None)

    info: dict[str, Any] = {"affine": stage, "spacing": list(spacing)}
    # Each image checked and normalised once, for both stages (exactly what optimize would do).
    normalise = per_pair(_objective.normalise, batch)
    fixed_n, moving_n = normalise(fixed), normalise(moving)
    clock.lap("prepare")
    progress = steps_lib.Progress(callback)
    if grid is not None:
        info["grids"] = "world"  # the moving image read on its own grid
    matrix, stage_info = affine_stage(fixed_n, moving_n, weight_map, stage=stage, affine_options=affine_options,
                                      options=options, spacing=spacing, batch=batch, progress=progress, grid=grid)
    info.update(stage_info)
    first_level = len(stage_info.get("affine_levels", ()))
    velocity = None
    if model is None:
        # One grid: the moving image resampled through the affine map once. Two: read through it at
        # every step of the deformable stage, on its own grid.
        moving_stage = moving_n if stage is None or grid is not None else per_pair(warp_affine, batch)(moving_n,
                                                                                                      matrix)
        clock.lap("affine")
        only_matrix, deformation, velocity, stage_info = deformable_stage(
            fixed_n, moving_stage, weight_map, options=options, spacing=spacing, batch=batch, progress=progress,
            first_level=first_level, grid=grid, to_moving=matrix, aligned=stage is not None)
        matrix = matrix if only_matrix is None else only_matrix
        info.update(method="optimize", **stage_info, options=dict(options))
    else:
        resample = stage is not None or grid is not None
        model_moving = per_pair(partial(warp_affine, shape=shape), batch)(moving, matrix) if resample else moving
        clock.lap("affine")
        deformation, model_info = _register_with_model(model, fixed, model_moving, shape, options, key, batch=batch)
        info.update(model_info)
    ddf = total_field(matrix, deformation, fixed, affine_first=stage is not None or grid is not None, batch=batch)
    warped, warped_labels = warp_outputs(moving, moving_labels, ddf, batch=batch,
                                         label_interpolation=label_interpolation)
    # shaped like the moving image given (on the fixed grid)
    warped = warped.reshape(lead + shape + np.shape(given[1])[len(lead + moving_shape):])
    progress.flush()
    for name in ("affine_losses", "losses"):  # the chunks of the loss traces, now on the host
        if name in info:
            info[name] = steps_lib.host_trace(info[name])
    jax.block_until_ready(warped)
    clock.lap("deformable")
    timings = clock.read()
    if stage is not None:
        info["affine_time_s"] = timings["affine"]
    info.update(time_s=time.perf_counter() - clock.start, timings=timings)
    return Registration(ddf, warped, warped_labels, info, np.asarray(matrix, np.float64), deformation, velocity,
                        spacing)
