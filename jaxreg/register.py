"""``jaxreg.register(fixed, moving)``: the front door.

One call registers one pair, 2-D or 3-D, with or without channels:

* ``model=None`` (default): classical instance optimisation (:func:`jaxreg.optimize.optimize`),
  no training needed; ``**options`` are its keyword options (``similarity``, ``levels``, ...).
* ``model=`` a workdir written by ``train.py`` or a :class:`Model` from :func:`load_model`:
  the trained network (VoxelMorph, or DEQReg with solver options such as ``steps=96`` or
  ``tol=1e-4`` as ``**options``).

The result is a :class:`Registration`: the displacement ``ddf`` ``(*S, ndim)`` in voxels
(pull: ``warped(x) = moving(x + ddf(x))``), the warped image, the warped label map when
labels were given, and ``info`` (method, steps, loss or residual trace, seconds).

Many pairs of one shape: call ``register`` in a loop (each call after the first reuses the
compiled code), or batch a trained model yourself with ``model.predict`` on ``(B, *S)``
arrays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import optimize as optimize_lib
from jaxreg import spatial

__all__ = ["Model", "Registration", "load_model", "register"]


class Registration(NamedTuple):
    """The result of :func:`register`.

    Attributes:
      ddf: ``(*S, ndim)`` displacement in voxels (pull convention), on the fixed grid.
      warped: the moving image resampled onto the fixed grid, shaped like ``moving``.
      warped_labels: the moving label map warped with nearest-neighbour interpolation, or
        ``None`` when no labels were given.
      info: ``method`` ("optimize" or the model name), ``steps``, ``losses`` (optimiser loss
        trace, lower is better) or solver options, and ``time_s`` (wall seconds).
    """

    ddf: jax.Array
    warped: jax.Array
    warped_labels: jax.Array | None
    info: dict[str, Any]


class Model(NamedTuple):
    """A trained model loaded by :func:`load_model`.

    Attributes:
      name: ``config.model.name`` (``"voxelmorph"``, ``"deqreg"``, ...).
      method: the :class:`jaxreg.models.Method` (``predict(params, fixed, moving, **options)``
        on ``(B, *S)`` images returns ``(B, *S, ndim)`` fields).
      params: the trained parameters (EMA ones when the run kept them).
      config: the run's config.
      workdir: where it came from.
      step: the checkpoint's training step.
    """

    name: str
    method: Any  # jaxreg.models.Method
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
    # Imported here: training, checkpoints and models are not needed by the classical path.
    from jaxreg import models
    from jaxreg.training.checkpoints import Checkpoints
    from jaxreg.training.restore import resolve_step, teacher_for, wants_ema
    from jaxreg.training.workdir import load_config

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"model workdir {str(workdir)!r} does not exist (train one with "
                                f"python train.py --config ... --workdir {workdir}).")
    config = load_config(workdir)
    method = models.build_from_config(config, teacher=teacher_for(config))
    training = config.training
    with Checkpoints(workdir / "checkpoints", every=1, asynchronous=False) as checkpoints:
        chosen = resolve_step(workdir, checkpoints, step, best_metric=training.get("best_metric"),
                              best_mode=training.get("best_mode", "max"))
        state = checkpoints.restore_raw(step=chosen)
    params = state["ema_params"] if wants_ema(config) and state.get("ema_params") is not None else state["params"]
    return Model(str(config.model.name), method, params, config, workdir, chosen)


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


def _register_with_model(model: Model, fixed, moving, shape, options: Mapping, key) -> tuple[jax.Array, dict]:
    if model.name not in ("deqreg", "diffusereg") and options:
        raise ValueError(f"a {model.name!r} model takes no options; got {sorted(options)}.")
    f, m = _model_inputs(model, fixed, shape), _model_inputs(model, moving, shape)
    if model.name == "diffusereg":  # a sampler: its options, and the key of its noise
        ddf = model.method.module.sample(model.params, f, m, key=key, **options).ddf[0]
    else:
        ddf = model.method.predict(model.params, f, m, **options)[0]
    ddf = ddf[tuple(slice(0, s) for s in shape)]
    return ddf, {"method": model.name, "workdir": str(model.workdir), "checkpoint": model.step, "options": dict(options)}


def register(fixed, moving, *, model: Model | str | os.PathLike | None = None, fixed_mask=None, moving_labels=None,
             key: jax.Array | None = None, callback: Callable | None = None, **options) -> Registration:
    """Registers ``moving`` onto ``fixed``.

    Args:
      fixed: ``(*S)`` or ``(*S, C)`` image, 2-D or 3-D; the target grid.
      moving: an image of the same spatial shape and channels.
      model: ``None`` for classical optimisation, or a trained model (a workdir path or
        :func:`load_model`'s result).
      fixed_mask: optional ``(*S)`` mask on the fixed grid; the similarity counts only
        where it is nonzero (classical path).
      moving_labels: optional ``(*S)`` integer label map of ``moving``, warped with
        nearest-neighbour interpolation into ``warped_labels``.
      key: PRNG key of a sampling model's noise (DiffuseReg; default from its ``seed``);
        unused by the optimiser and deterministic models.
      callback: ``callback(level, step, loss)`` during optimisation (e.g. a progress bar).
      **options: keyword options of :func:`jaxreg.optimize.optimize`, or of the model's
        ``predict`` (DEQReg: ``steps``, ``tol``, ``method``, ...; DiffuseReg: sampler
        options ``method``, ``steps``, ``eta``, ``guidance``, ``ensemble`` (the mean field), ...).

    Returns:
      A :class:`Registration`.

    Raises:
      ValueError: NaN/Inf or constant images, mismatched shapes or ranks, a mask or label
        map of the wrong shape, unknown options.
      FileNotFoundError: a model workdir that does not exist.

    Example::

        result = jaxreg.register(fixed, moving)                 # classical, no training
        result = jaxreg.register(fixed, moving, model="runs/deqreg_demo", steps=24)
        dice = jaxreg.metrics.dice(fixed_labels, jaxreg.warp(moving_labels, result.ddf, order=0))
    """
    start = time.perf_counter()
    given = fixed, moving  # optimize takes them as given (rank 3 means 3-D, so no channel axis added)
    fixed, moving = optimize_lib.check_pair(fixed, moving)  # (*S, C) float32
    shape = fixed.shape[:-1]
    if fixed_mask is not None and tuple(np.shape(fixed_mask)) != shape:
        raise ValueError(f"`fixed_mask` must have the spatial shape of `fixed` {shape}; got {tuple(np.shape(fixed_mask))}.")
    if moving_labels is not None and tuple(np.shape(moving_labels)) != shape:
        raise ValueError(f"`moving_labels` must have the spatial shape of `moving` {shape}; "
                         f"got {tuple(np.shape(moving_labels))}.")

    if model is None:
        result = optimize_lib.optimize(*given, fixed_mask=fixed_mask, callback=callback, **options)
        ddf = result.ddf
        info = {"method": "optimize", "steps": result.steps, "levels": result.levels,
                "losses": np.asarray(result.losses), "options": dict(options)}
    else:
        if fixed_mask is not None:
            raise ValueError("`fixed_mask` is used by the classical optimiser only (model=None).")
        model = model if isinstance(model, Model) else load_model(model)
        ddf, info = _register_with_model(model, fixed, moving, shape, options, key)
    warped = spatial.warp(moving, ddf).reshape(np.shape(given[1]))  # shaped like the moving image given
    warped_labels = None if moving_labels is None else spatial.warp(jnp.asarray(moving_labels), ddf, order=0)
    jax.block_until_ready(warped)
    info["time_s"] = time.perf_counter() - start
    return Registration(ddf, warped, warped_labels, info)
