"""Loading a trained run: its config, method and the parameters of one checkpoint.

``load_run(W)`` is the one way to load a workdir's parameters: ``jaxreg.load_model``,
evaluation, the convergence study and DiffuseReg's teacher all use it. It needs neither the
training data nor the optimiser: the checkpoint's own metadata shapes the restore.
``resolve_step`` turns ``"latest"``, ``"best"`` or a number into a saved step;
``load_teacher`` loads a run that DiffuseReg learns from (a teacher is a trained run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import ml_collections

from jaxreg import methods, sharding
from jaxreg.runs.checkpoints import Checkpoints
from jaxreg.runs.workdir import apply_overrides, load_config
from jaxreg.runs.writers import read_metrics

__all__ = ["TEACHER_MODELS", "Run", "load_run", "load_teacher", "resolve_step", "teacher_for", "wants_ema"]

#: Models that can teach: one-shot or iterative registration networks (not another diffusion model).
TEACHER_MODELS = ("voxelmorph", "deqreg", "unroll")


def resolve_step(workdir, checkpoints: Checkpoints, step, *, best_metric: str | None, best_mode: str = "max") -> int:
    """The checkpoint step that ``step`` names: ``"latest"``, ``"best"`` or a number.

    ``"best"`` is the saved checkpoint with the best validation ``best_metric`` in
    ``W/metrics.jsonl``.
    """
    saved = checkpoints.all_steps()
    if not saved:
        raise FileNotFoundError(f"no checkpoints in {checkpoints.directory}: train first (python train.py ... --workdir {workdir}).")
    if step in (None, "", "latest"):
        return saved[-1]
    if step == "best":
        if not best_metric:
            raise ValueError("--step best needs `training.best_metric` in the run's config.")
        scored = [(r[best_metric], r["step"]) for r in read_metrics(workdir, split="val")
                  if r["step"] in saved and r.get(best_metric) is not None]
        if not scored:
            raise ValueError(f"no saved checkpoint has a validation {best_metric!r}; use --step latest.")
        return (max if best_mode == "max" else min)(scored)[1]
    try:
        number = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"--step must be 'latest', 'best' or a step number; got {step!r}.") from None
    if number not in saved:
        raise FileNotFoundError(f"no checkpoint at step {number} in {checkpoints.directory}; have steps {saved}.")
    return number


def teacher_for(config):
    """DiffuseReg's teacher function when its sampler starts from the teacher's field, else ``None``.

    Inference needs no teacher otherwise, so it is loaded only then.
    """
    if config.model.get("name") != "diffusereg":
        return None
    sampler = (config.get("diffusion") or {}).get("sampler") or {}
    if sampler.get("start") != "teacher":
        return None
    return load_teacher(config.diffusion.get("teacher_workdir"), step=config.diffusion.get("teacher_step", "latest"))[1]


def wants_ema(config) -> bool:
    """Whether inference should use the EMA parameters (``eval.use_ema``, default true) where a run kept them."""
    return bool((config.get("eval") or {}).get("use_ema", True))


class Run(NamedTuple):
    """A trained run loaded for inference."""

    config: ml_collections.ConfigDict
    method: methods.Method
    params: dict  # the EMA parameters when the run kept them and ``eval.use_ema``
    step: int  # the checkpoint's step
    ema: bool  # whether ``params`` are the EMA parameters


def load_run(workdir, *, step="latest", overrides=(), mesh=None) -> Run:
    """The config, method and trained parameters of the run in ``workdir``.

    Args:
      workdir: a folder written by ``train.py``.
      step: checkpoint ``"latest"`` (default), ``"best"`` (by the run's
        ``training.best_metric``) or a step number.
      overrides: ``"section.field=value"`` changes to the saved config for this use
        (e.g. ``"diffusion.sampler.steps=25"``; see ``workdir.apply_overrides``).
      mesh: where the parameters are placed, replicated (default: all devices,
        :func:`jaxreg.sharding.make_mesh`).

    Returns:
      A :class:`Run`; ``params`` are the EMA parameters when the run kept them and the
      config's ``eval.use_ema`` (default true) asks for them.

    Raises:
      FileNotFoundError: no such workdir, no config or no (such) checkpoint there.
      ValueError: the workdir holds an unknown model, or a bad ``step``.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"model workdir {str(workdir)!r} does not exist (train one with "
                                f"python train.py --config ... --workdir {workdir}).")
    config = apply_overrides(load_config(workdir), overrides)
    method = methods.build_from_config(config, teacher=teacher_for(config))
    training = config.training
    with Checkpoints(workdir / "checkpoints", every=1, asynchronous=False) as checkpoints:
        chosen = resolve_step(workdir, checkpoints, step or "latest", best_metric=training.get("best_metric"),
                              best_mode=training.get("best_mode", "max"))
        state = checkpoints.restore_replicated(sharding.make_mesh() if mesh is None else mesh, step=chosen)
    ema = wants_ema(config) and state.get("ema_params") is not None
    return Run(config, method, state["ema_params"] if ema else state["params"], chosen, ema)


def load_teacher(workdir, *, step="latest") -> tuple[Run, Callable]:
    """The teacher run and its ``teacher(fixed, moving) -> ddf`` on ``(B, *S)`` images.

    Raises:
      FileNotFoundError: ``workdir`` is not a trained run (no folder, config or checkpoint).
      ValueError: ``workdir`` holds a model that cannot teach (e.g. another DiffuseReg).
    """
    if not workdir:
        raise ValueError("`diffusion.teacher_workdir` is empty: DiffuseReg learns the fields of a trained teacher; "
                         "train one first, e.g. python train.py --config configs/voxelmorph_demo.py:cardiac "
                         "--workdir runs/vxm_cardiac_demo")
    path = Path(workdir)
    if not path.is_dir():
        raise FileNotFoundError(f"`diffusion.teacher_workdir` {str(workdir)!r} does not exist; train the teacher first.")
    name = load_config(path).model.get("name")
    if name not in TEACHER_MODELS:
        raise ValueError(f"`diffusion.teacher_workdir` {str(workdir)!r} holds a {name!r} model; a teacher must be one "
                         f"of {TEACHER_MODELS}.")
    run = load_run(path, step=step)
    params = run.params
    return run, lambda fixed, moving: run.method.predict(params, fixed, moving)
