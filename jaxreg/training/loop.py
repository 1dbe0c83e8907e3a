"""``train_and_evaluate``: the training run behind ``train.py``.

One run = one working directory ``W``: it saves the config, builds the method from the
registry, shards batches over a ``data`` mesh axis, trains with the shared train step,
validates every ``training.eval_every`` steps with the real metrics, logs to
``W/metrics.jsonl`` and TensorBoard, and checkpoints into ``W/checkpoints``. Started again
on the same ``W`` it resumes from the latest checkpoint with the same state and the batches
the uninterrupted run would have seen, so the result is bit-identical.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxreg import methods, sharding
from jaxreg._progress import restart_clock
from jaxreg.data import pipeline, transforms
from jaxreg.data.sources import open_source
from jaxreg.runs.checkpoints import Checkpoints
from jaxreg.runs.workdir import check_resume, save_config
from jaxreg.runs.writers import MetricWriter, summary_line
from jaxreg.scoring import pair_metrics, summarize
from jaxreg.training.optimizer import make_optimizer, make_schedule
from jaxreg.training.state import TrainState, init_state, make_train_step  # init_state: re-exported

__all__ = ["init_state", "train_and_evaluate", "validate"]


#: Validation metrics in the one-line summary, in this order.
_HEADLINE = ("dice", "dice_std", "dice_before", "tre", "tre_std", "tre_before", "folding", "sdlogj")


def _check_config(config: ml_collections.ConfigDict) -> None:
    missing = [s for s in ("data", "model", "loss", "optimizer", "training") if s not in config]
    if missing:
        raise ValueError(f"the config lacks the section(s) {missing}; see configs/voxelmorph_demo.py.")
    training = config.training
    if int(training.num_steps) < 1:
        raise ValueError(f"`training.num_steps` must be >= 1; got {training.num_steps}.")


def validate(predict, params, data: Mapping, *, split: str = "val", limit: int | None = None,
             labels=None, with_hd95: bool = True, mesh=None) -> dict[str, float]:
    """Registers the pairs of ``split`` and returns the mean ± std of :func:`pair_metrics`."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    rows = []
    for record in pipeline.records(data, split, limit=limit):
        fixed, moving = (sharding.replicate_host(record[k][None], mesh) for k in ("fixed", "moving"))
        ddf = np.asarray(predict(params, fixed, moving))[0]
        rows.append(pair_metrics(record, ddf, labels=labels, with_hd95=with_hd95))
    if not rows:
        raise ValueError(f"the {split!r} split of data.source={data.get('source')!r} has no pairs to validate on.")
    return summarize(rows)


def _host_mean(history: list[dict]) -> dict[str, float]:
    history = jax.device_get(history)
    return {k: float(np.mean([float(h[k]) for h in history])) for k in history[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> TrainState:
    """Trains (or resumes) the run in ``workdir``; returns the final train state.

    Args:
      config: sections ``data``, ``model``, ``loss``, ``optimizer``, ``training`` (and
        ``eval``, used by ``jaxreg.evaluation``); see ``configs/voxelmorph_demo.py``.
      workdir: the run's folder; created if missing, resumed if it holds checkpoints.
    """
    _check_config(config)
    training = config.training
    sharding.initialize_distributed(training)
    workdir = Path(workdir)
    is_main = sharding.is_main_process()
    teacher = None
    if config.model.get("name") == "diffusereg":  # its targets are a frozen teacher's fields, z-scored
        # Imported here: teacher loading builds on this module.
        from jaxreg.training.teacher import prepare_diffusion

        config, teacher = prepare_diffusion(config, workdir, is_main=is_main)
    check_resume(config, workdir)  # before config.json is overwritten
    if is_main:
        save_config(config, workdir)
    mesh = sharding.make_mesh()
    method = methods.build_from_config(config, teacher=teacher)
    data = config.data
    row_start, row_stop, global_batch = sharding.host_rows(int(data.get("batch_size", 1)), mesh)
    train_source = open_source(data, "train")
    optimizer = make_optimizer(config.optimizer)
    state = init_state(method, optimizer, config, transforms.downsample(train_source[0], pipeline.downsample_factor(data)),
                       mesh)  # shapes as the network sees them
    eval_every = int(training.get("eval_every", 0) or 0)
    if eval_every:
        open_source(data, "val")  # fail now, not after the first eval_every steps
    checkpoints = Checkpoints(workdir / "checkpoints", every=int(training.checkpoint_every), keep=int(training.get("keep", 3)),
                              best_metric=training.get("best_metric") if eval_every else None,
                              best_mode=training.get("best_mode", "max"),
                              asynchronous=bool(training.get("async_checkpoints", True)))
    start = checkpoints.latest_step() or 0
    if start:
        state = checkpoints.restore(state, step=start)
        if is_main:
            tqdm.write(f"resumed from {checkpoints.directory} at step {start}")
    num_steps = int(training.num_steps)
    train_step = jax.jit(make_train_step(method.loss_fn, optimizer,
                                         ema_decay=float(training.get("ema_decay", 0.0) or 0.0)),
                         in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                         out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)), donate_argnums=0)
    predict = sharding.make_predict(method, mesh, downsample=pipeline.downsample_factor(data))  # full-size fields
    schedule = make_schedule(config.optimizer)
    batches = pipeline.batches(
        train_source, batch_size=global_batch, rows=(row_start, row_stop), seed=int(data.get("seed", 0)), keys=tuple(data.get("keys") or ("fixed", "moving")),
        transform=pipeline.make_transform(data), start_step=start, num_threads=int(data.get("num_threads", 4)),
        prefetch=int(data.get("prefetch", 4)))
    log_every = max(1, int(training.get("log_every", 50)))
    writer = MetricWriter(workdir, start_step=start, tensorboard=bool(training.get("tensorboard", True))) if is_main else None
    bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (is_main and training.get("progress", True)))
    history, tick, iterator = [], time.perf_counter(), iter(batches)
    try:
        for step in range(start + 1, num_steps + 1):
            state, metrics = train_step(state, sharding.shard_batch(next(iterator), mesh))
            history.append(metrics)
            bar.update(1)
            if step == start + 1:
                restart_clock(bar)  # the first step compiled: the ETA counts steps from here
            if step % log_every == 0 or step == num_steps:
                mean = _host_mean(history)
                mean["steps_per_s"] = len(history) / (time.perf_counter() - tick)
                mean["learning_rate"] = float(schedule(step))
                history, tick = [], time.perf_counter()
                bar.set_postfix(loss=f"{mean['loss']:.4g}")
                if writer:
                    writer.write(step, mean, split="train")
            val = None
            if eval_every and (step % eval_every == 0 or step == num_steps):
                params = state.ema_params if state.ema_params is not None else state.params
                val = validate(predict, params, data, limit=int(training.get("val_pairs", 0) or 0),
                               labels=config.get("eval", {}).get("labels"), with_hd95=False, mesh=mesh)
                if writer:
                    writer.write(step, val, split="val")
                    bar.write(summary_line(step, {k: val[k] for k in _HEADLINE if k in val}, split="val"))
                tick = time.perf_counter()  # validation time is not training speed
            checkpoints.save(step, state, metrics=val, force=step == num_steps)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        if writer:
            writer.close()
    return state
