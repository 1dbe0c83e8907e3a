"""DiffuseReg sampling: DDPM-2000 against DDIM-{25, 50, 100, 250}, and guidance, on a trained run.

    python benchmarks/sampling.py --workdir runs/diffusereg_demo            # the demo's test pairs
    python benchmarks/sampling.py --workdir W --pairs 8 --ddim 25,50 --no-ddpm
    python benchmarks/sampling.py --paper_size                              # the paper's 32×128×128 model, untrained
    python benchmarks/sampling.py --plot-only result.json --figure speed.png # redraw from a saved output

Prints JSON: per sampler setting the wall time per pair (batch 1, compiled, mean over the
pairs), Dice (mean over labels; per label), folding % (NJD), bending energy, and the
speed-up against DDPM; with ``--guidance`` the same for guided DDIM against unguided.
``--paper_size`` times one denoiser call of the paper's configuration (feature 120,
depths 2-2-2-2, 32×128×128) and multiplies by the model calls of each sampler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxreg import losses
from jaxreg.data import pipeline
from jaxreg.evaluation.evaluate import load_run
from jaxreg.scoring import pair_metrics, summarize


def _setting(name: str, **options) -> tuple[str, dict]:
    return name, options


def score(model, params, records, options, *, labels) -> dict:
    """Time and quality of one sampler setting over ``records``."""
    predict = jax.jit(lambda p, f, m: model.predict(p, f, m, **options))
    rows, times = [], []
    for index, record in enumerate(records):
        fixed, moving = (jnp.asarray(record[k])[None] for k in ("fixed", "moving"))
        if index == 0:
            start = time.perf_counter()
            jax.block_until_ready(predict(params, fixed, moving))
            compile_s = time.perf_counter() - start
        start = time.perf_counter()
        ddf = np.asarray(jax.block_until_ready(predict(params, fixed, moving)))[0]
        times.append(time.perf_counter() - start)
        row = pair_metrics(record, ddf, labels=labels, with_hd95=False)
        row["bending"] = float(losses.bending_energy(ddf))
        rows.append(row)
    summary = summarize(rows)
    keep = [k for k in summary if k.startswith("dice") or k in ("folding", "folding_std", "sdlogj", "bending", "bending_std")]
    return {"time_per_pair_s": float(np.mean(times)), "compile_s": compile_s, "pairs": len(rows),
            **{k: summary[k] for k in keep}}


def benchmark_run(args) -> dict:
    run = load_run(args.workdir)
    model, params = run.method.module, run.params
    labels = (run.config.get("eval") or {}).get("labels")
    records = list(pipeline.records(run.config.data, args.split, limit=args.pairs))
    settings = [_setting(f"ddim{n}", method="ddim", steps=n, eta=0.0) for n in args.ddim]
    if args.ddpm:
        settings.insert(0, _setting(f"ddpm{model.schedule.num_steps}", method="ddpm"))
    teacher_dir = run.config.diffusion.get("teacher_workdir")
    teacher = None
    if teacher_dir and Path(teacher_dir).is_dir():  # the teacher: a reference, and a start field
        from jaxreg.training.teacher import load_teacher

        teacher = load_teacher(teacher_dir)[1]
        model.teacher = teacher
        settings.append(_setting("ddim20_from_teacher_t400", method="ddim", steps=20, start="teacher", start_step=400))
    results = {}
    for name, options in settings:
        results[name] = score(model, params, records, options, labels=labels)
        print(f"{name}: {results[name]['time_per_pair_s']:.3f} s/pair, dice {results[name].get('dice', float('nan')):.4f}",
              file=sys.stderr)
    ddpm = results.get(f"ddpm{model.schedule.num_steps}")
    if ddpm:
        for r in results.values():
            r["speedup_vs_ddpm"] = ddpm["time_per_pair_s"] / r["time_per_pair_s"]
            r["dice_minus_ddpm"] = r.get("dice", np.nan) - ddpm.get("dice", np.nan)
    if teacher is not None:  # the teacher on the same pairs
        predict = jax.jit(teacher)
        results["teacher"] = {"dice": float(np.mean([
            pair_metrics(r, np.asarray(predict(jnp.asarray(r["fixed"])[None], jnp.asarray(r["moving"])[None]))[0],
                         labels=labels, with_hd95=False)["dice"] for r in records]))}
    out = {"workdir": str(args.workdir), "split": args.split, "pairs": len(records), "backend": jax.default_backend(),
           "dice_before": float(np.mean([pair_metrics(r, np.zeros((*np.shape(r["fixed"]), np.ndim(r["fixed"]))),
                                                      labels=labels, with_hd95=False)["dice"] for r in records])),
           "dice_teacher": results.pop("teacher", {}).get("dice", float("nan")),
           "samplers": results}
    if args.guidance:
        weights = {k: float(v) for k, v in (item.split("=") for item in args.guidance.split(","))}
        steps = args.ddim[0] if 50 not in args.ddim else 50
        guided = {}
        for name, options in (("unguided", {"method": "ddim", "steps": steps}),
                              ("guided", {"method": "ddim", "steps": steps, "guidance": weights})):
            guided[name] = score(model, params, records, options, labels=labels)
        guided["weights"], guided["ddim_steps"] = weights, steps
        out["guidance"] = guided
    return out


def benchmark_paper_size(args) -> dict:
    from jaxreg.diffusion.model import DiffuseReg

    model = DiffuseReg()  # the paper's denoiser and schedule
    shape = (1, 32, 128, 128)
    fixed = jnp.zeros(shape)
    params = model.init(jax.random.key(0), {"fixed": fixed})
    n_params = sum(int(v.size) for v in jax.tree.leaves(params))
    net = jax.jit(model.net.apply)
    x, t = jnp.zeros((*shape, 3)), jnp.zeros((1,), jnp.int32)
    jax.block_until_ready(net(params, x, t, fixed[..., None], fixed[..., None]))
    start = time.perf_counter()
    for _ in range(args.repeats):
        jax.block_until_ready(net(params, x, t, fixed[..., None], fixed[..., None]))
    per_call = (time.perf_counter() - start) / args.repeats
    calls = {"ddpm2000": 2000, **{f"ddim{n}": n for n in args.ddim}}
    return {"shape": shape[1:], "params": n_params, "backend": jax.default_backend(), "seconds_per_call": per_call,
            "seconds_per_pair_from_calls": {k: n * per_call for k, n in calls.items()},
            "paper_ddpm2000_s": 333.0}


def _setting_label(name: str) -> tuple[str, str]:
    """``(kind, readable name)`` of a sampler setting: ``"ddim50"`` → ``("ddim", "DDIM-50")``."""
    if name.startswith("ddpm"):
        return "ddpm", f"DDPM-{name[4:]}"
    if "_from_teacher_t" in name:
        steps, start = name[len("ddim"):].split("_from_teacher_t")
        return "teacher_start", f"DDIM-{steps} from teacher, t = {start}"
    if name.startswith("ddim"):
        return "ddim", f"DDIM-{name[4:]}"
    return "other", name


#: Legend text, colour and marker of each kind of point in the speed figure.
SPEED_KINDS = {
    "ddpm": ("DDPM (all T steps, ancestral)", "tab:red", "o"),
    "ddim": ("DDIM from noise (η = 0)", "tab:blue", "o"),
    "teacher_start": ("DDIM from the teacher's field (noised to t)", "tab:purple", "s"),
    "guided": ("DDIM from noise + energy guidance", "tab:orange", "D"),
    "other": ("other", "black", "x"),
}


#: The smallest Dice range (points) the speed figure's y-axis spans.
MIN_DICE_SPAN = 10.0


def speed_axis_range(values) -> tuple[float, float]:
    """The y-range (Dice points) of the speed figure: every value, 8 % margins (room for the names), at least
    ``MIN_DICE_SPAN`` wide."""
    values = [v for v in values if np.isfinite(v)]
    low, high = min(values), max(values)
    pad = max(0.08 * (high - low), 0.5 * max(MIN_DICE_SPAN - (high - low), 0.0))
    return low - pad, high + pad


def speed_figure(path, result: dict):
    """Dice against seconds per pair (log axis), one point per sampler setting; returns the Figure.

    Colours and markers tell the sampler kinds apart (legend below the axes: DDPM, DDIM
    from noise, DDIM started from the teacher's field, guided DDIM from ``result["guidance"]``);
    horizontal lines mark Dice before registration (grey, dotted) and the teacher's Dice
    (green, dashed), both with their values in the legend. The y-axis spans the points and
    both lines (:func:`speed_axis_range`, at least ``MIN_DICE_SPAN`` points): gaps between
    samplers are drawn at the scale of what registration gains, not magnified. Each point
    is named (e.g. ``DDIM-50``).
    """
    from matplotlib.figure import Figure

    from jaxreg.evaluation.figures import _save

    points = [(*_setting_label(name), r) for name, r in result["samplers"].items()]
    guided = (result.get("guidance") or {}).get("guided")
    if guided:
        terms = " ".join(f"{k} {v:g}" for k, v in result["guidance"]["weights"].items())
        points.append(("guided", f"DDIM-{result['guidance']['ddim_steps']} + guidance ({terms})", guided))
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    ax = fig.subplots()
    seen = set()
    for kind, label, r in points:
        legend, color, marker = SPEED_KINDS[kind]
        ax.scatter(r["time_per_pair_s"], 100 * r["dice"], color=color, marker=marker, s=36, zorder=3,
                   label=None if kind in seen else legend)
        seen.add(kind)
        below = kind == "guided"  # guided and unguided DDIM-50 take the same time: name one above, one below
        ax.annotate(label, (r["time_per_pair_s"], 100 * r["dice"]), textcoords="offset points",
                    xytext=(5, -11 if below else 4), fontsize=8)
    shown = [100 * r["dice"] for _, _, r in points]
    if np.isfinite(result.get("dice_teacher", np.nan)):
        ax.axhline(100 * result["dice_teacher"], color="tab:green", ls="--",
                   label=f"teacher, one network pass ({100 * result['dice_teacher']:.1f})")
        shown.append(100 * result["dice_teacher"])
    before = 100 * result.get("dice_before", np.nan)
    if np.isfinite(before):  # the gain of registration sets the scale: sub-point gaps stay small
        ax.axhline(before, color="gray", ls=":", label=f"before registration ({before:.1f})")
        shown.append(before)
    low, high = speed_axis_range(shown)
    ax.set_ylim(low, high)
    ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel(f"seconds per pair ({result['backend']}, batch 1, compiled; log scale)")
    ax.set_ylabel("mean Dice (%) ↑")
    ax.set_title(f"DiffuseReg sampling, {result['pairs']} {result['split']} pairs")
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    _save(fig, path)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/diffusereg_demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", type=int, default=8, help="pairs scored per setting (DDPM is slow)")
    parser.add_argument("--ddim", default="25,50,100,250", help="DDIM step counts")
    parser.add_argument("--no-ddpm", dest="ddpm", action="store_false", help="skip DDPM (all T steps)")
    parser.add_argument("--guidance", default="", help="e.g. bending=0.5: guided vs unguided DDIM-50")
    parser.add_argument("--paper_size", action="store_true", help="time the paper's model at 32×128×128 instead")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--figure", default="", help="also write a Dice-vs-time PNG here")
    parser.add_argument("--plot-only", metavar="JSON", default="",
                        help="draw --figure from this saved output of the benchmark (no model, no sampling)")
    args = parser.parse_args(argv)
    if args.plot_only:
        if not args.figure:
            parser.error("--plot-only needs --figure, the PNG to write.")
        speed_figure(args.figure, json.loads(Path(args.plot_only).read_text()))
        return
    args.ddim = [int(n) for n in args.ddim.split(",") if n]
    result = benchmark_paper_size(args) if args.paper_size else benchmark_run(args)
    if args.figure and not args.paper_size:
        speed_figure(args.figure, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
