"""The convergence study of DEQReg's paper (Fig. 3, Table 2): quality vs inference steps.

Unrolled networks are trained for ``T`` steps and degrade when run for more; DEQReg, an
equilibrium model, keeps improving with more solver steps. ``convergence_study`` scores
trained runs (any mix of ``deqreg`` and ``unroll`` workdirs) on a split for every
inference step count and writes into ``out_dir``:

* ``convergence.json``: per run its name (the workdir's basename), workdir, a readable
  ``label`` (:func:`run_label`, e.g. "DEQReg (Anderson, trained with ≤ 48 steps)"), model,
  variant (the unrolled variant, or DEQReg's solver), trained step count (per level),
  resolution levels (unrolled runs), checkpoint and, per step count, mean ± std Dice,
  folding %, SDlogJ (and TRE where the pairs have keypoints);
* ``convergence.png``: Dice (%) and folding % against inference steps (log₂ axis), one
  line per run, legend by label, each run's trained step count marked in its colour; the
  folding axis is logarithmic above 0.001 % (linear below, down to 0), so that 0.005 % and
  40 % read on one axis;
* ``convergence.md``: a Table 2-like summary, one row per run (label and workdir).

Every run is also scored at its own trained step count, so that row of the table is
always filled. :func:`convergence_replot` redraws the PNG and the table from a saved
``convergence.json`` without scoring anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from tqdm.auto import tqdm

from jaxreg import sharding
from jaxreg.data import pipeline
from jaxreg.evaluation.report import write_json
from jaxreg.io import atomic_path
from jaxreg.runs.restore import load_run
from jaxreg.runs.workdir import load_config
from jaxreg.scoring import pair_metrics, summarize

__all__ = ["STEPS", "convergence_figure", "convergence_replot", "convergence_study", "convergence_table", "run_label",
           "trained_steps"]

#: Inference step counts of the paper's Fig. 3.
STEPS = (1, 2, 4, 8, 16, 32, 48, 64, 96)
#: Folding % below which the figure's folding axis is linear (logarithmic above; 0 at the bottom).
FOLDING_LINEAR_BELOW = 1e-3
#: Metrics kept per step count (those the pairs allow).
_KEYS = ("dice", "dice_std", "folding", "folding_std", "sdlogj", "sdlogj_std", "tre", "tre_std")
_ITERATIVE = ("deqreg", "unroll")
_SOLVER_NAMES = {"anderson": "Anderson", "broyden": "Broyden", "fixed_point": "fixed-point iteration"}
_VARIANT_NAMES = {"vanilla": "vanilla", "riir": "RIIR-like", "gradirn": "GraDIRN-like"}


def trained_steps(config) -> tuple[str, str, int]:
    """``(model, variant, T)`` of a run's config: T is ``solver.max_steps`` or ``model.steps``.

    Raises:
      ValueError: the model has no step count (not ``"deqreg"`` or ``"unroll"``).
    """
    name = config.model.get("name")
    if name == "deqreg":
        solver = config.get("solver") or {}
        return name, str(solver.get("method", "anderson")), int(solver.get("max_steps", 48))
    if name == "unroll":
        return name, str(config.model.get("variant", "vanilla")), int(config.model.get("steps", 6))
    raise ValueError(f"the convergence study needs an iterative model {_ITERATIVE}; this run's model is {name!r}.")


def run_label(run: dict) -> str:
    """A readable name for a run of ``convergence.json`` from its model, variant, trained steps and levels.

    E.g. ``"DEQReg (Anderson, trained with ≤ 48 steps)"`` (the solver stops earlier at its
    tolerance), ``"Unrolled vanilla, 3 levels × 3 steps"``, ``"Unrolled RIIR-like, 6 steps"``.
    """
    model, variant, steps = run.get("model"), str(run.get("variant", "")), run.get("trained_steps")
    if model == "deqreg":
        return f"DEQReg ({_SOLVER_NAMES.get(variant, variant)}, trained with ≤ {steps} steps)"
    if model == "unroll":
        levels = int(run.get("levels") or 1)
        shape = f"{levels} levels × {steps} steps" if levels > 1 else f"{steps} steps"
        return f"Unrolled {_VARIANT_NAMES.get(variant, variant)}, {shape}"
    return str(run.get("name", model))


def _labels(runs: Sequence[dict]) -> list[str]:
    """:func:`run_label` of each run, with its workdir name appended where two runs share a label."""
    labels = [run_label(run) for run in runs]
    return [f"{label} [{run.get('name', '?')}]" if labels.count(label) > 1 else label for label, run in zip(labels, runs)]


def _step_counts(steps: Sequence[int]) -> tuple[int, ...]:
    steps = tuple(steps)
    if not steps or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in steps):
        raise ValueError(f"`steps` must be positive integers; got {steps!r}.")
    return tuple(sorted({int(n) for n in steps}))


def _run_names(workdirs: Sequence[Path]) -> list[str]:
    """Basenames, or ``parent/basename`` where two runs share a basename."""
    names = [w.name for w in workdirs]
    return [f"{w.parent.name}/{w.name}" if names.count(w.name) > 1 else w.name for w in workdirs]


def _predict_fn(module, factor: int = 1):
    """Jitted ``(params, fixed, moving, steps=n) -> ddf`` running exactly n steps (n static), on full-size
    images of a network trained at ``1/factor`` of their size (:func:`jaxreg.sharding.at_full_size`)."""
    def predict(params, fixed, moving, *, steps: int):
        return module.predict(params, fixed, moving, steps=steps)

    return jax.jit(sharding.at_full_size(predict, factor), static_argnames="steps")


def _score(config, method, params, counts: Sequence[int], *, split: str, limit, desc: str, progress: bool) -> list[dict]:
    """Per step count: mean ± std of the pair metrics over the split's pairs."""
    predict, mesh = _predict_fn(method.module, pipeline.downsample_factor(config.data)), sharding.make_mesh()
    labels = (config.get("eval") or {}).get("labels")
    rows: dict[int, list] = {n: [] for n in counts}
    pairs = tqdm(pipeline.records(config.data, split, limit=limit), total=pipeline.num_records(config.data, split, limit=limit),
                 desc=desc, unit="pair", disable=not progress)
    for record in pairs:
        fixed, moving = (sharding.replicate_host(np.asarray(record[k])[None], mesh) for k in ("fixed", "moving"))
        for n in counts:
            ddf = np.asarray(predict(params, fixed, moving, steps=n))[0]
            rows[n].append(pair_metrics(record, ddf, labels=labels, with_hd95=False))
    if not rows[counts[0]]:
        raise ValueError(f"the {split!r} split of data.source={config.data.get('source')!r} has no pairs.")
    out = []
    for n in counts:
        summary = summarize(rows[n])
        out.append({"steps": n, **{k: summary[k] for k in _KEYS if k in summary}, "num_pairs": len(rows[n])})
    return out


def _at(curve: Sequence[dict], steps: int) -> dict:
    return next((c for c in curve if c["steps"] == steps), {})


def _value(entry: dict, key: str) -> float:
    value = entry.get(key)
    return np.nan if value is None else float(value)


def _fmt(entry: dict, key: str, scale: float, decimals: int) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None and math.isfinite(std) else "")


def convergence_table(runs: Sequence[dict]) -> str:
    """The Table 2-like Markdown table of ``convergence.json``'s ``runs`` (Dice in %)."""
    header = ("| Run | Workdir | Trained steps | Dice at trained steps (%) ↑ | Best Dice (%) (at steps) "
              "| Dice at max steps (%) | \\|J\\|≤0 at max steps (%) ↓ |")
    lines = [header, "|---" * 7 + "|"]
    for run, label in zip(runs, _labels(runs)):
        curve, last = run["curve"], run["curve"][-1]
        scored = [c for c in curve if c.get("dice") is not None and math.isfinite(c["dice"])]
        best = max(scored, key=lambda c: c["dice"]) if scored else {}
        best_text = f"{_fmt(best, 'dice', 100, 2)} ({best['steps']})" if best else "–"
        per_level = " per level" if int(run.get("levels") or 1) > 1 else ""
        lines.append(f"| {label} | `{run.get('workdir', run['name'])}` | {run['trained_steps']}{per_level} "
                     f"| {_fmt(_at(curve, run['trained_steps']), 'dice', 100, 2)} | {best_text} "
                     f"| {_fmt(last, 'dice', 100, 2)} ({last['steps']}) | {_fmt(last, 'folding', 1, 3)} |")
    return "\n".join(lines)


def convergence_figure(path, runs: Sequence[dict], *, title: str | None = None) -> Figure:
    """Writes the two-panel PNG (Dice %, folding % vs inference steps), atomically.

    Folding is drawn on a symmetric-log axis, linear below ``FOLDING_LINEAR_BELOW`` (so 0
    shows) and logarithmic above.

    One line per run in ``convergence.json``'s ``runs``, named in the legend (below the
    panels) by :func:`run_label`; ★ and a dotted line mark each run's trained step count.

    Returns:
      The figure (already written), for inspection.
    """
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    ticks = sorted({c["steps"] for run in runs for c in run["curve"]})
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        color, x = cmap(i % 10), [c["steps"] for c in run["curve"]]
        for ax, key, scale in zip(axes, ("dice", "folding"), (100.0, 1.0)):  # Dice in %, as in the tables
            y = [scale * _value(c, key) for c in run["curve"]]
            ax.plot(x, y, "o-", color=color, markersize=4, label=label)
            ax.axvline(run["trained_steps"], color=color, linestyle=":", linewidth=1.2)
            ax.plot([run["trained_steps"]], [scale * _value(_at(run["curve"], run["trained_steps"]), key)],
                    marker="*", color=color, markersize=13, markeredgecolor="black", linestyle="none")
    for ax, label in zip(axes, ("mean Dice (%) ↑", "|J| ≤ 0 (% of voxels, log scale) ↓")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("inference steps (per level for multi-level runs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # Folding spans 0 to ~50 %: logarithmic above FOLDING_LINEAR_BELOW, so 0.005 % shows beside 40 %
    axes[1].set_yscale("symlog", linthresh=FOLDING_LINEAR_BELOW, linscale=0.5)
    worst = np.nanmax([1.0, *(_value(c, "folding") for run in runs for c in run["curve"])])
    axes[1].set_ylim(bottom=0.0, top=10.0 ** np.ceil(np.log10(worst)))  # the power of ten above the worst run
    axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].plot([], [], marker="*", color="grey", markersize=11, markeredgecolor="black", linestyle=":",
                 label="trained step count (★, dotted line)")  # a legend entry only
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs) + 1, 3), fontsize=9)
    if title:
        fig.suptitle(title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return fig


def _write_outputs(out_dir: Path, result: dict) -> None:
    runs = result["runs"]
    for run, label in zip(runs, _labels(runs)):
        run["label"] = label
    write_json(out_dir / "convergence.json", result)
    num_pairs = runs[0]["curve"][0]["num_pairs"]
    convergence_figure(out_dir / "convergence.png", runs, title=f"Convergence on {result['split']} ({num_pairs} pairs)")
    with atomic_path(out_dir / "convergence.md") as tmp:
        Path(tmp).write_text(f"# Convergence ({result['split']})\n\n{convergence_table(runs)}\n")


def convergence_replot(json_path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None) -> dict:
    """Redraws ``convergence.png`` and ``convergence.md`` from a saved ``convergence.json``; scores nothing.

    Runs saved before labels were kept get theirs now (an unrolled run's resolution levels
    are read from its workdir's ``config.json`` when that is still there); the JSON is
    rewritten with them.

    Args:
      json_path: a ``convergence.json`` written by :func:`convergence_study`.
      out_dir: where the three files go (default: the JSON's folder).

    Returns:
      The JSON's content, labels added.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a convergence study's JSON.
    """
    import json  # noqa: PLC0415 (only the replot reads JSON)

    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"convergence JSON: no file {str(json_path)!r}.")
    try:
        result = json.loads(json_path.read_text())
        runs = result["runs"]
        if not runs or not all(run["curve"] and "trained_steps" in run for run in runs):
            raise KeyError("runs")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"convergence JSON: {str(json_path)!r} is not a convergence study's output ({error}).") from None
    for run in runs:
        workdir = Path(run.get("workdir", ""))
        if run.get("model") == "unroll" and "levels" not in run and (workdir / "config.json").is_file():
            run["levels"] = int(load_config(workdir).model.get("levels", 1))
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result["out_dir"] = str(out_dir)
    _write_outputs(out_dir, result)
    return result


def convergence_study(workdirs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike, steps: Sequence[int] = STEPS,
                      split: str = "test", limit: int | None = None, step=None, progress: bool = True) -> dict:
    """Scores DEQReg / unrolled runs at every inference step count; returns ``convergence.json``'s content.

    Args:
      workdirs: training workdirs of ``deqreg`` or ``unroll`` runs (``config.json`` + checkpoints).
      out_dir: folder for ``convergence.{json,png,md}`` (created).
      steps: inference step counts; each run is also scored at its trained step count.
      split: the split whose pairs are registered.
      limit: only the first ``limit`` pairs (None or 0: all).
      step: checkpoint of every run: ``"latest"`` (default), ``"best"`` or a step number.
      progress: show progress bars.

    Raises:
      ValueError: no workdirs, bad ``steps``, or a run of a non-iterative model (e.g. voxelmorph).
    """
    workdirs = [Path(w) for w in workdirs]
    if not workdirs:
        raise ValueError("the convergence study needs at least one workdir.")
    counts = _step_counts(steps)
    for workdir in workdirs:  # fail before any scoring
        try:
            trained_steps(load_config(workdir))
        except ValueError as error:
            raise ValueError(f"{workdir}: {error}") from None
    runs = []
    for workdir, name in zip(workdirs, _run_names(workdirs)):
        config, method, params, chosen, _ = load_run(workdir, step=step)
        model, variant, trained = trained_steps(config)
        run_counts = tuple(sorted(set(counts) | {trained}))
        curve = _score(config, method, params, run_counts, split=split, limit=limit, desc=name, progress=progress)
        levels = {"levels": int(config.model.get("levels", 1))} if model == "unroll" else {}
        runs.append({"name": name, "workdir": str(workdir), "model": model, "variant": variant, "trained_steps": trained,
                     **levels, "checkpoint": chosen, "curve": curve})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"out_dir": str(out_dir), "split": split, "limit": limit or None, "steps": list(counts),
              "backend": jax.default_backend(), "runs": runs}
    _write_outputs(out_dir, result)
    return result
