"""One command for an accelerator: the paper configs at paper size, sampling and ``register``; JSON + markdown.

    python benchmarks/gpu.py [--out gpu_benchmark] [--configs deqreg_nlst,...] [--scale 1.0]
                             [--repeats 3] [--ddim 50] [--ddpm-full] [--data ../shared/data]
                             [--dtypes float32,bfloat16]

Runs on whatever JAX's default backend is (a GPU when ``jax[cuda12]`` is installed) and
writes ``OUT.json`` and ``OUT.md``. Three parts, each config in its own process (so the
device's peak memory is that config's alone):

* **Train steps** of every paper config (``configs/<name>.py``; the DEQReg ones also with
  bfloat16 activations, ``--dtypes``) at its paper size (NLST
  224×192×224, OASIS 128³, ACDC 32×128×128; ``--scale`` shrinks every side, rounded to the
  network's multiple, for a quick try on a CPU): compile seconds, the best of ``--repeats``
  step times after the compiling call, XLA's compiled memory (temporaries + arguments +
  outputs) and, where the device reports it, its peak bytes in use. Random images, batch 1;
  DiffuseReg's teacher is a VoxelMorph network with random weights (the same cost as a
  trained one).
* **DiffuseReg sampling** at ACDC size with the paper's denoiser (random weights): the time
  of one DDIM-``--ddim`` sample per pair, measured, and DDPM-2000 from the measured time per
  denoiser call × 2000 (``--ddpm-full`` samples all 2000 steps instead; the paper: 333 s).
* **register** on the shared OASIS pair (``--data``, the project's real-data folder, not
  shipped; skipped when absent): first call (compiling) and a second call, with Dice.

On one modern GPU the whole run takes a few minutes. The paper numbers are printed next to ours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from paper_configs import CONFIGS, PAPER_MB, build_method, paper_shape  # noqa: E402
from paper_configs import load as _load_config  # noqa: E402


def _peak_mb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _best(fn, repeats: int) -> float:
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def train_step(key: str, scale: float, repeats: int) -> dict:
    """Compile and step time and memory of one train step of config ``key`` (``name[:dtype]``)."""
    import jax
    import numpy as np

    from jaxreg.training import create_state, make_optimizer, make_train_step

    name, _, dtype = key.partition(":")
    config = _load_config(name)
    if dtype:
        config.model.dtype = dtype
    shape = paper_shape(name, config, scale)
    rng = np.random.default_rng(0)
    batch = {k: jax.numpy.asarray(rng.random((1, *shape)), jax.numpy.float32) for k in ("fixed", "moving")}
    method = build_method(config, shape)
    optimizer = make_optimizer(config.optimizer)
    state = create_state(method.init(jax.random.key(0), batch), optimizer, jax.random.key(1))
    start = time.perf_counter()
    compiled = jax.jit(make_train_step(method.loss_fn, optimizer)).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

    def step():
        nonlocal state
        state, out = compiled(state, batch)
        return out

    step_s = _best(step, repeats)
    mb = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes) / 2**20
    return {"config": name, "dtype": config.model.get("dtype", "float32"), "shape": list(shape),
            "compile_s": round(compile_s, 1), "step_s": round(step_s, 3),
            "compiled_mb": round(mb), "temp_mb": round(memory.temp_size_in_bytes / 2**20),
            "device_peak_mb": None if _peak_mb() is None else round(_peak_mb()), "paper_mb": PAPER_MB.get(name),
            "loss": float(metrics["loss"])}


def sampling(scale: float, ddim: int, ddpm_full: bool, repeats: int) -> dict:
    """DiffuseReg at ACDC size: DDIM-``ddim`` per pair measured, DDPM-2000 from calls (or measured)."""
    import jax
    import jax.numpy as jnp

    from jaxreg.diffusion.model import DiffuseReg

    config = _load_config("diffusereg_acdc")
    shape = paper_shape("diffusereg_acdc", config, scale)
    model = DiffuseReg()  # the paper's denoiser and schedule
    fixed = jnp.asarray(jax.random.uniform(jax.random.key(0), (1, *shape)))
    moving = jnp.asarray(jax.random.uniform(jax.random.key(1), (1, *shape)))
    params = model.init(jax.random.key(2), {"fixed": fixed})
    net = jax.jit(model.net.apply)
    x, t = jnp.zeros((1, *shape, 3)), jnp.zeros((1,), jnp.int32)
    call = lambda: net(params, x, t, fixed[..., None], moving[..., None])  # noqa: E731
    jax.block_until_ready(call())
    per_call = _best(call, repeats)
    out = {"shape": list(shape), "seconds_per_denoiser_call": round(per_call, 4), "paper_ddpm2000_s": 333.0}

    def sample(**options):
        return model.sample(params, fixed, moving, key=jax.random.key(3), **options).ddf

    start = time.perf_counter()
    jax.block_until_ready(sample(method="ddim", steps=ddim))
    out[f"ddim{ddim}_first_call_s"] = round(time.perf_counter() - start, 2)
    out[f"ddim{ddim}_s"] = round(_best(lambda: sample(method="ddim", steps=ddim), 1), 2)
    if ddpm_full:
        start = time.perf_counter()
        jax.block_until_ready(sample(method="ddpm"))
        out["ddpm2000_s"] = round(time.perf_counter() - start, 1)
    else:
        out["ddpm2000_s_from_calls"] = round(2000 * per_call, 1)
    return out


def register_oasis(data: str) -> dict:
    """``jaxreg.register`` with its defaults on the shared OASIS pair (B onto A)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import register as bench  # benchmarks/register.py: the pair, read through the headers

    import jaxreg
    from jaxreg import metrics

    folder = os.path.join(data, "oasis_lapirn_pair")
    if not os.path.isdir(folder):
        return {"skipped": f"{folder} not found"}
    pair = bench._oasis(folder)
    (a, seg_a), (b, seg_b) = pair["A"], pair["B"]
    out = {}
    for label in ("first_call", "second_call"):
        start = time.perf_counter()
        result = jaxreg.register(a, b, moving_labels=seg_b)
        np.asarray(result.warped_labels)
        out[f"{label}_s"] = round(time.perf_counter() - start, 1)
    out["dice_before"] = round(float(np.mean(np.asarray(metrics.dice(seg_a, seg_b, labels=(1, 2))))), 4)
    out["dice_after"] = round(float(np.mean(np.asarray(metrics.dice(seg_a, result.warped_labels, labels=(1, 2))))), 4)
    return out


def _child(args) -> None:
    part, _, name = args.child.partition(":")
    if part == "train":
        out = train_step(name, args.scale, args.repeats)
    elif part == "sampling":
        out = sampling(args.scale, args.ddim, args.ddpm_full, args.repeats)
    else:
        out = register_oasis(args.data)
    import jax

    out |= {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})", "jax": jax.__version__}
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(child: str, args) -> dict:
    command = [sys.executable, __file__, "--child", child, "--scale", str(args.scale), "--repeats", str(args.repeats),
               "--ddim", str(args.ddim), "--data", args.data] + (["--ddpm-full"] if args.ddpm_full else [])
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": error[:500], "wall_s": round(time.perf_counter() - start, 1)}
    return json.loads(lines[-1][len("RESULT "):]) | {"wall_s": round(time.perf_counter() - start, 1)}


def _markdown(report: dict) -> str:
    rows = ["| config | shape | compile s | step s | compiled MB | device peak MB | paper MB |",
            "|---|---|---|---|---|---|---|"]
    for name, r in report["train_steps"].items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | | | |")
            continue
        rows.append(f"| {name} | {'×'.join(map(str, r['shape']))} | {r['compile_s']} | {r['step_s']} | "
                    f"{r['compiled_mb']} | {r['device_peak_mb'] if r['device_peak_mb'] is not None else '–'} | "
                    f"{r['paper_mb'] or '–'} |")
    lines = [f"# jaxreg on {report['device']} (jax {report['jax']})", "", "## Train steps (batch 1)", "", *rows]
    lines += ["", "## DiffuseReg sampling (paper denoiser, ACDC size)", "", "```json",
              json.dumps(report["sampling"], indent=1), "```", "", "## register on the shared OASIS pair", "",
              "```json", json.dumps(report["register"], indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_benchmark", help="writes OUT.json and OUT.md")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every side (a quick try on a CPU: 0.25)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ddim", type=int, default=50)
    parser.add_argument("--ddpm-full", action="store_true", help="sample all 2000 DDPM steps (minutes)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="activation dtypes of the DEQReg train steps (model.dtype); the others run float32")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train,sampling,register")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {CONFIGS}")
    if not (0 < args.scale <= 1) or not math.isfinite(args.scale):
        parser.error(f"--scale must be in (0, 1]; got {args.scale}")
    from jaxreg.models.unet import DTYPES  # imports jax; no device is touched here

    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - set(DTYPES):
        parser.error(f"--dtypes must name some of {tuple(DTYPES)}; got {args.dtypes!r}")
    skip = set(args.skip.split(",")) - {""}
    if skip - {"train", "sampling", "register"}:
        parser.error(f"unknown --skip {sorted(skip - {'train', 'sampling', 'register'})}")
    # This process never touches the device (a GPU would be held by two processes): the children
    # report it.
    report = {"device": None, "jax": None, "scale": args.scale, "train_steps": {}, "sampling": {}, "register": {}}
    if "train" not in skip:
        keys = [n if d == "float32" else f"{n}:{d}" for n in names
                for d in (dtypes if n.startswith("deqreg") else ["float32"])]
        for key in keys:
            report["train_steps"][key] = _run_child(f"train:{key}", args)
            print(json.dumps({key: report["train_steps"][key]}), file=sys.stderr, flush=True)
    if "sampling" not in skip:
        report["sampling"] = _run_child("sampling", args)
    if "register" not in skip:
        report["register"] = _run_child("register", args)
    children = [*report["train_steps"].values(), report["sampling"], report["register"]]
    for r in children:
        if r.get("device"):
            report["device"], report["jax"] = r["device"], r["jax"]
            break
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(_markdown(report))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
