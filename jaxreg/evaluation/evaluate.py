"""``evaluate_workdir``: what ``eval.py --workdir W`` does.

Loads the config a run saved and one of its checkpoints, registers every pair of a split
with the trained model and writes ``W/eval/<split>/``:

* ``metrics.json``: mean and standard deviation over pairs of every metric (Dice overall
  and per label, HD95, TRE where there are keypoints, folding %, SDlogJ, the same before
  registration), inference time per pair and memory;
* ``per_pair.csv``: one row per pair;
* ``summary.md``: a table like the papers' Table 1 (before / after), Dice per label;
* ``figures/``: fixed / moving / warped / difference slices with the deformation grid and
  the Jacobian map for the first pairs, ``dice_boxplot.png``;
* ``disp/`` (with ``eval.save_disp``): Learn2Reg displacement files.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxreg import io, sharding, spatial
from jaxreg.data import pipeline
from jaxreg.evaluation import figures, report
from jaxreg.runs.restore import Run, load_run, resolve_step, wants_ema
from jaxreg.runs.workdir import apply_overrides, load_config
from jaxreg.scoring import pair_metrics, summarize

__all__ = ["Run", "evaluate_workdir", "load_run", "resolve_step", "wants_ema"]


def _pair_name(ids: str, index: int) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ids)) or f"pair_{index:04d}"


def _disp_name(ids: str, index: int) -> str:
    parts = str(ids).split("_")
    if len(parts) == 2 and all(p.isdigit() and len(p) <= 4 for p in parts):
        return io.disp_filename(int(parts[0]), int(parts[1]))
    return f"disp_{_pair_name(ids, index)}.nii.gz"


def _memory_mb(predict, params, fixed, moving) -> tuple[float | None, str]:
    """Peak device memory of inference where the backend reports it, else XLA's estimate."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    analysis = predict.lower(params, fixed, moving).compile().memory_analysis()
    if analysis is None:
        return None, "unavailable"
    total = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    return total / 2**20, "XLA memory_analysis (temp + arguments + outputs)"


def evaluate_workdir(workdir, *, split: str | None = None, step=None, save_disp: bool | None = None,
                     progress: bool = True, overrides=()) -> dict:
    """Evaluates a trained run; returns the ``metrics.json`` content.

    Args:
      workdir: a folder written by ``train.py`` (holds ``config.json`` and checkpoints).
      split: ``"train"``, ``"val"`` or ``"test"`` (default ``config.eval.split``).
      step: checkpoint ``"latest"``, ``"best"`` or a step number (default ``config.eval.step``).
      save_disp: write Learn2Reg displacement files (3-D only; default ``config.eval.save_disp``).
      progress: show a progress bar.
      overrides: ``"section.field=value"`` changes to the run's config for this evaluation,
        e.g. DiffuseReg sampler options ``"diffusion.sampler.method=ddpm"`` (``eval.py
        --config.diffusion.sampler.method=ddpm``); ``eval.name`` names the output folder.
    """
    workdir = Path(workdir)
    saved = apply_overrides(load_config(workdir), overrides)
    if any(str(o).partition("=")[0].removeprefix("--").removeprefix("config.") == "training.distributed"
           for o in overrides or ()):  # asked for on the command line, never from the saved config
        sharding.initialize_distributed(saved.training)
    is_main = sharding.is_main_process()  # every process registers; process 0 writes
    ev = saved.get("eval") or {}
    split = split or ev.get("split", "test")
    out_dir = workdir / "eval" / (ev.get("name") or split)
    mesh = sharding.make_mesh()
    config, method, params, chosen, use_ema = load_run(workdir, step=step or ev.get("step", "latest"),
                                                       overrides=overrides, mesh=mesh)
    data = config.data
    predict = sharding.make_predict(method, mesh, downsample=pipeline.downsample_factor(data))  # full-size fields
    labels = ev.get("labels")
    num_figures = int(ev.get("num_figures", 4) or 0)
    save_disp = bool(ev.get("save_disp", False)) if save_disp is None else save_disp
    if is_main:
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        if save_disp:
            (out_dir / "disp").mkdir(exist_ok=True)

    rows, times, memory, first = [], [], (None, "unavailable"), None
    limit = int(ev.get("limit", 0) or 0)
    pairs = tqdm(pipeline.records(data, split, limit=limit), total=pipeline.num_records(data, split, limit=limit),
                 desc=f"eval {split}", unit="pair", disable=not (progress and is_main))
    for index, record in enumerate(pairs):
        fixed, moving = (sharding.replicate_host(np.asarray(record[k])[None], mesh) for k in ("fixed", "moving"))
        if index == 0:  # compile outside the timing
            first = record
            jax.block_until_ready(predict(params, fixed, moving))
            memory = _memory_mb(predict, params, fixed, moving)
        start = time.perf_counter()
        ddf = np.asarray(jax.block_until_ready(predict(params, fixed, moving)))[0]
        times.append(time.perf_counter() - start)
        ids = str(record.get("ids", f"pair_{index:04d}"))
        row = {"pair": ids, **pair_metrics(record, ddf, labels=labels, with_hd95=bool(ev.get("with_hd95", True))),
               "time_s": times[-1]}
        rows.append(row)
        if is_main and index < num_figures:
            warped = np.asarray(spatial.warp(record["moving"], ddf))
            has_labels = "fixed_labels" in record and "moving_labels" in record
            spacing = record.get("spacing")  # the voxel aspect of each slice (3-D: three orthogonal rows)
            figures.pair_figure(
                out_dir / "figures" / f"{index:02d}_{_pair_name(ids, index)}.png", record["fixed"], record["moving"], warped,
                ddf, fixed_labels=record.get("fixed_labels"), moving_labels=record.get("moving_labels"),
                spacing=None if spacing is None or np.size(spacing) != ddf.shape[-1] else np.ravel(spacing),
                warped_labels=np.asarray(spatial.warp(record["moving_labels"], ddf, order=0)) if has_labels else None,
                title=f"{ids}: dice {row.get('dice', float('nan')):.3f} (before {row.get('dice_before', float('nan')):.3f})"
                if has_labels else ids)
        if is_main and save_disp:
            io.save_disp(out_dir / "disp" / _disp_name(ids, index), ddf, affine=record.get("affine"))
    if not rows:
        raise ValueError(f"the {split!r} split of data.source={data.get('source')!r} has no pairs.")

    extras = {}
    if is_main and config.model.name == "diffusereg" and first is not None:  # how samples form, and how sure they are
        from jaxreg.evaluation.diffusion import diffusion_figures_for

        # Host copies of the parameters: process 0 samples these figures alone.
        extras = diffusion_figures_for(out_dir / "figures", method.module, jax.device_get(params), first, config,
                                       labels=labels)
    summary = summarize(rows)
    # Labels over all pairs (a label can be absent from some pairs: NaN there).
    label_names = sorted({k[len("dice_"):] for row in rows for k in row
                          if k.startswith("dice_") and k[len("dice_"):].isdigit()}, key=int)
    if is_main and label_names:
        figures.dice_boxplot(out_dir / "figures" / "dice_boxplot.png",
                             {name: [r.get(f"dice_{name}", np.nan) for r in rows] for name in label_names} | {"mean": [r["dice"] for r in rows]},
                             before={name: [r.get(f"dice_before_{name}", np.nan) for r in rows] for name in label_names}
                             | {"mean": [r["dice_before"] for r in rows]},
                             title=f"Dice per label, {split} ({len(rows)} pairs)")
    result = {"workdir": str(workdir), "out_dir": str(out_dir), "split": split, "step": chosen, "num_pairs": len(rows), "params": "ema" if use_ema else "raw",
              "model": config.model.name, "backend": jax.default_backend(), "devices": jax.device_count(),
              "time_per_pair_s": float(np.mean(times)), "memory_mb": memory[0], "memory_source": memory[1], "metrics": summary,
              **extras}
    if not is_main:
        return result
    report.write_json(out_dir / "metrics.json", result)
    report.write_per_pair_csv(out_dir / "per_pair.csv", rows)
    report.write_summary(out_dir / "summary.md", title=f"{config.model.name} (step {chosen})", summary=summary,
                         labels=label_names, label_names=ev.get("label_names"), details={"workdir": workdir, "split": f"{split} ({len(rows)} pairs)",
                                                      "checkpoint": f"step {chosen} ({result['params']} parameters)",
                                                      "backend": f"{jax.default_backend()} × {jax.device_count()}",
                                                      "inference memory": f"{memory[0]:.1f} MB ({memory[1]})"
                                                      if memory[0] is not None else "unavailable",
                                                      "time per pair": f"{result['time_per_pair_s']:.3f} s",
                                                      **({"sampler": extras["sampler_summary"]} if extras else {})})
    return result
