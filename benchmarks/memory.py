"""DEQReg's memory claim: train-step memory and time vs solver steps / unrolled steps; prints one JSON object.

    python benchmarks/memory.py [--size 64] [--sizes 32,64] [--ndim 3] [--skip-time] [--repeats 2]
        [--time deqreg:48,unroll_riir:6]
    python benchmarks/memory.py --solvers [--size 64] [--batch 2]     # the solvers alone
    python benchmarks/memory.py --paper [--configs deqreg_nlst,...] [--dtypes float32,bfloat16] [--full-size]
                                                                     # the paper configs at paper size

One full training step (forward, backward, AdamW update: ``jit(make_train_step(loss_fn, optimizer))``)
is lowered and compiled, never run for memory: ``temp_mb`` is XLA's ``memory_analysis()``
``temp_size_in_bytes`` (meaningful on CPU, unlike ``peak_memory_in_bytes``). ``step_s`` is the wall time per step
after a warm-up call (DEQReg runs all max_steps unless ``--tol``). Models: DEQReg (Anderson, phantom backward K = 5, τ = 0.8, S = 3 corrected
states, γ = 0.5) at solver max_steps 4, 12, 48, 96, and the unrolled baselines (vanilla, RIIR-like,
BPTT) at T = 2, 4, 6, 12 (``--unroll-levels 3``: the multi-resolution form, ``_3levels``, T steps per
level); ``deqreg_s0`` is DEQReg without the corrected states (S = 0), ``deqreg_remat`` with each phantom
step rematerialised in the backward pass (``solver.phantom_remat``), ``deqreg_broyden`` the same with
the Broyden solver (memory 5, as Anderson's); VoxelMorph U-Net widths, LNCC (window 5) + 0.1 · diffusion,
batch 1, one synthetic brain pair.

``--paper`` compiles (never runs) one train step of every paper config (``configs/<name>.py`` as
shipped; ``unroll_*`` for each of ``--variants``, the papers' 3 levels × 3 steps) at its paper
size (``benchmarks/paper_configs.py``: NLST 224×192×224, OASIS 128³, ACDC 32×128×128), batch 1,
from abstract shapes (nothing is allocated), and reports XLA's temporaries and its total
(temporaries + arguments + outputs) next to the training memory DEQReg's Table 1 reports, and
the activations one U-Net pass saves for its backward (``jax.vjp`` residuals: what
``--dtypes bfloat16`` halves on any backend; XLA:CPU itself runs bfloat16 convolutions in
float32, so its compiled totals barely move).

``--solvers`` compiles :func:`jaxreg.deq.solvers.solve_pairs` alone (S = 3 intermediate states,
``T(z) = 0.5·tanh(z) + x`` per pair) for each method at max_steps 8, 48 and 96 on a batch of
``(size³, 3)`` fields and reports its temporaries in copies of one pair's field.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

import jax
import numpy as np

import sys
from pathlib import Path

from jaxreg import methods
from jaxreg.models import unet
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.training import create_state, make_optimizer, make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_configs import CONFIGS, PAPER_MB, build_method, load, paper_shape  # noqa: E402

# The memory claims are about the networks as they run on a GPU: XLA's own convolution (the CPU
# matmul path of jaxreg.models.conv keeps other buffers alive). Read when a step is traced.
os.environ.setdefault("JAXREG_CONV", "xla")

DEQ = {"method": "anderson", "history": 5, "backward": "phantom", "phantom_steps": 5,
       "phantom_damping": 0.8}
CORRECTION = {"correction_states": 3, "correction_weight": 0.5}
LOSS = {"similarity": "lncc", "window": 5, "weight": 0.1}


def config(name: str, steps: int, tol: float) -> tuple[dict, dict]:
    """``(model, solver)`` config sections for ``"deqreg"`` or ``"unroll_<variant>"`` at ``steps``."""
    if name == "deqreg":
        return {"name": "deqreg", **CORRECTION}, dict(DEQ, max_steps=steps, tol=tol)
    if name == "deqreg_s0":  # the phantom gradient alone, without the S corrected states
        return {"name": "deqreg", "correction_states": 0}, dict(DEQ, max_steps=steps, tol=tol)
    if name == "deqreg_remat":  # each phantom step recomputed in the backward pass
        return {"name": "deqreg", **CORRECTION}, dict(DEQ, max_steps=steps, tol=tol, phantom_remat=True)
    if name == "deqreg_broyden":  # as deqreg_remat, with the Broyden solver
        return {"name": "deqreg", **CORRECTION}, dict(DEQ, method="broyden", max_steps=steps, tol=tol,
                                                      phantom_remat=True)
    variant, _, levels = name.removeprefix("unroll_").partition("_")  # e.g. "unroll_riir_3levels"
    return {"name": "unroll", "variant": variant, "steps": steps, "levels": int(levels.removesuffix("levels") or 1)}, {}


def measure(name: str, steps: int, batch: dict, *, timed: bool, repeats: int, tol: float) -> dict:
    model, solver = config(name, steps, tol)
    method = methods.build(model, LOSS, solver)
    optimizer = make_optimizer({"learning_rate": 1e-4, "weight_decay": 1e-4})
    state = create_state(method.init(jax.random.key(0), batch), optimizer, jax.random.key(1))
    start = time.perf_counter()
    compiled = jax.jit(make_train_step(method.loss_fn, optimizer)).lower(state, batch).compile()
    memory = compiled.memory_analysis()
    out = {"temp_mb": memory.temp_size_in_bytes / 2**20, "argument_mb": memory.argument_size_in_bytes / 2**20,
           "compile_s": time.perf_counter() - start}
    if timed:
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(repeats):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        out["step_s"] = (time.perf_counter() - start) / repeats
        out["loss"] = float(metrics["loss"])
        if "solver_steps" in metrics:
            out["solver_steps"] = float(metrics["solver_steps"])  # mean over the batch's pairs
    return out


def ratios(results: dict) -> dict:
    """The claims: DEQReg flat in solver steps, the unrolled baselines linear in T."""
    mem = {name: {int(k): v["temp_mb"] for k, v in runs.items()} for name, runs in results.items()}
    out = {}
    deq = mem.get("deqreg", {})
    for name in ("deqreg", "deqreg_s0", "deqreg_remat", "deqreg_broyden"):
        if mem.get(name):
            lo, hi = min(mem[name]), max(mem[name])
            out[f"{name}_{hi}_over_{name}_{lo}"] = mem[name][hi] / mem[name][lo]
    for name, runs in mem.items():
        if name.startswith("deqreg") or len(runs) < 2:
            continue
        steps = sorted(runs)
        slope, intercept = np.polyfit(steps, [runs[t] for t in steps], 1)
        out[f"{name}_mb_per_step"] = float(slope)
        out[f"{name}_{steps[-1]}_over_{name}_{steps[0]}"] = runs[steps[-1]] / runs[steps[0]]
        if deq and 48 in deq:  # how many BPTT steps cost as much as DEQReg at 48 solver steps
            out[f"deqreg_48_equals_{name}_T"] = float((deq[48] - intercept) / slope)
        if deq and 48 in deq and 6 in runs:
            out[f"{name}_6_over_deqreg_48"] = runs[6] / deq[48]
        for deq_name in ("deqreg_s0", "deqreg_remat", "deqreg_broyden"):
            if 48 in mem.get(deq_name, {}) and 6 in runs:
                out[f"{name}_6_over_{deq_name}_48"] = runs[6] / mem[deq_name][48]
    return out


def solver_memory(size: int, ndim: int, batch: int) -> dict:
    """Temporaries of ``solve_pairs`` (S = 3) per method and max_steps, in copies of one pair's field."""
    from jaxreg.deq import SOLVERS, solve_pairs

    z0 = jax.numpy.zeros((batch,) + (size,) * ndim + (ndim,), jax.numpy.float32)
    x = jax.numpy.linspace(0.0, 1.0, z0.size, dtype=jax.numpy.float32).reshape(z0.shape)
    field = z0[0].size * 4
    out = {}
    for method in SOLVERS:
        for steps in (8, 48, 96):
            def run(x, z0, method=method, steps=steps):
                return solve_pairs(lambda z: 0.5 * jax.numpy.tanh(z) + x, z0, method=method, max_steps=steps, states=3)

            compiled = jax.jit(run).lower(x, z0).compile()
            out.setdefault(method, {})[str(steps)] = round(compiled.memory_analysis().temp_size_in_bytes / field, 2)
    return {"shape": [batch] + [size] * ndim + [ndim], "states": 3, "temp_in_pair_fields": out}


def unet_pass_mb(config, shape: tuple[int, ...]) -> float | None:
    """MB of activations one U-Net pass (DEQReg's update network: ``2 + ndim`` input channels)
    saves for its backward at ``shape``, in the config's ``model.dtype``: the ``jax.vjp``
    residuals, whatever backend or schedule XLA later picks (``None`` for DiffuseReg)."""
    model = config.model
    if "dtype" not in model:
        return None
    net = unet.UNet(tuple(model.encoder), tuple(model.decoder), dtype=unet.activation_dtype(model.dtype))
    x = jax.ShapeDtypeStruct((1, *shape, 2 + len(shape)), jax.numpy.float32)
    params = jax.eval_shape(net.init, jax.random.key(0), x)
    residuals = jax.eval_shape(lambda p, v: jax.vjp(net.apply, p, v)[1], params, x)
    return round(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals)) / 2**20)


def largest_temporaries(dump: Path, count: int) -> list[dict]:
    """The ``count`` largest values in XLA's temporary allocation of the newest ``train_step``
    module dumped to ``dump`` (its ``*buffer-assignment.txt``): HLO instruction, shape, MB."""
    files = sorted(dump.glob("*train_step*buffer-assignment.txt"), key=lambda f: f.stat().st_mtime)
    if not files:
        return []
    values, in_temp = [], False
    for line in files[-1].read_text().splitlines():
        if line.startswith("allocation "):
            in_temp = "preallocated-temp" in line
        elif in_temp and line.lstrip().startswith("value:"):
            match = re.match(r"\s*value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\S+)", line)
            if match:
                values.append({"hlo": match[1], "shape": match[3].split("{")[0], "mb": int(match[2]) / 2**20})
    values.sort(key=lambda v: -v["mb"])
    return [dict(v, mb=round(v["mb"], 1)) for v in values[:count]]


def paper_memory(names: list[str], variants: list[str], dtypes: list[str], *, buffers: int = 0,
                 dump: Path | None = None, full_size: bool = False) -> list[dict]:
    """Compiled memory of one train step of each paper config at its paper size (nothing allocated).

    ``dtypes``: the ``model.dtype`` values to measure (activations; DiffuseReg only float32).
    ``buffers``: also list that many of the largest temporaries (XLA must dump to ``dump``).
    ``full_size``: train at the dataset's full size (``data.downsample = 1``; NLST: 224×192×224).
    """
    rows = []
    runs = [(n, v, d) for n in names for v in (variants if n.startswith("unroll") else [None]) for d in dtypes]
    for name, variant, dtype in runs:
        config = load(name, variant)
        if full_size:
            config.data.downsample = 1
        if "dtype" in config.model:
            config.model.dtype = dtype
        elif dtype != "float32":  # DiffuseReg's denoiser has no mixed-precision option
            continue
        shape = paper_shape(name, config)
        batch = {k: jax.ShapeDtypeStruct((1, *shape), jax.numpy.float32) for k in ("fixed", "moving")}
        method = build_method(config, shape)
        optimizer = make_optimizer(config.optimizer)
        state = jax.eval_shape(lambda b: create_state(method.init(jax.random.key(0), b), optimizer,
                                                      jax.random.key(1)), batch)
        start = time.perf_counter()
        compiled = jax.jit(make_train_step(method.loss_fn, optimizer)).lower(state, batch).compile()
        memory = compiled.memory_analysis()
        total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
        key = name if variant is None else f"{name}:{variant}"
        model = config.model
        rows.append({"config": key, "dtype": dtype, "shape": list(shape),
                     "temp_mb": round(memory.temp_size_in_bytes / 2**20),
                     "total_mb": round(total / 2**20), "paper_mb": PAPER_MB.get(key),
                     "unet_pass_activations_mb": unet_pass_mb(config, shape),
                     "compile_s": round(time.perf_counter() - start, 1),
                     "steps": {"deqreg": (config.get("solver") or {}).get("max_steps"),
                               "unroll": f"{model.get('levels', 1)} levels x {model.get('steps')}"}.get(model.name)})
        if buffers and dump is not None:
            rows[-1]["largest_temporaries"] = largest_temporaries(dump, buffers)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="side of the cube (square with --ndim 2)")
    parser.add_argument("--sizes", default=None, help="comma-separated sides; overrides --size")
    parser.add_argument("--ndim", type=int, default=3, choices=(2, 3))
    parser.add_argument("--deq", default="deqreg,deqreg_s0,deqreg_remat", help="DEQReg variants to measure")
    parser.add_argument("--deq-steps", default="4,12,48,96")
    parser.add_argument("--unroll-steps", default="2,4,6,12")
    parser.add_argument("--variants", default=None,
                        help="unrolled variants (default vanilla,riir; with --paper vanilla,riir,gradirn)")
    parser.add_argument("--unroll-levels", default="1",
                        help="resolution levels of the unrolled baselines (steps are per level), e.g. 1,3")
    parser.add_argument("--skip-time", action="store_true", help="compile only: memory, no step times")
    parser.add_argument("--time", default="all", help="which runs to time, e.g. deqreg:48,unroll_riir:6")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--solvers", action="store_true", help="the solvers alone (solve_pairs), nothing else")
    parser.add_argument("--batch", type=int, default=2, help="pairs per batch with --solvers")
    parser.add_argument("--paper", action="store_true", help="the paper configs at paper size, compile only")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="with --paper: which configs/<name>.py")
    parser.add_argument("--full-size", action="store_true",
                        help="with --paper: at the dataset's full size (data.downsample=1; NLST 224x192x224)")
    parser.add_argument("--buffers", type=int, default=0,
                        help="with --paper: list this many of the largest temporaries of each step (XLA's buffer "
                             "assignment, dumped to a temporary folder)")
    parser.add_argument("--dtypes", default="float32",
                        help="with --paper: model.dtype values (activations), e.g. float32,bfloat16")
    parser.add_argument("--tol", type=float, default=1e-12,
                        help="DEQReg solver tolerance; the default runs every max_step (paper: 1e-3, early stop)")
    args = parser.parse_args()
    if args.paper:
        names = [n for n in args.configs.split(",") if n]
        unknown = sorted(set(names) - set(CONFIGS))
        if unknown:
            parser.error(f"unknown --configs {unknown}; choose from {CONFIGS}")
        variants = [v for v in (args.variants or "vanilla,riir,gradirn").split(",") if v]
        if set(variants) - {"vanilla", "riir", "gradirn"}:
            parser.error(f"unknown --variants {sorted(set(variants) - {'vanilla', 'riir', 'gradirn'})}; "
                         "choose from vanilla, riir, gradirn")
        dtypes = [d for d in args.dtypes.split(",") if d]
        if set(dtypes) - set(unet.DTYPES) or not dtypes:
            parser.error(f"unknown --dtypes {sorted(set(dtypes) - set(unet.DTYPES))}; choose from {tuple(unet.DTYPES)}")
        if args.buffers < 0:
            parser.error(f"--buffers must be >= 0; got {args.buffers}")
        with tempfile.TemporaryDirectory() as dump:
            if args.buffers:  # read when the backend starts, which nothing above has done yet
                os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                                           " --xla_dump_hlo_module_re=.*train_step.*").strip()
            runs = paper_memory(names, variants, dtypes, buffers=args.buffers, dump=Path(dump), full_size=args.full_size)
        print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__, "batch": 1,
                          "conv": os.environ["JAXREG_CONV"], "runs": runs}, indent=2))
        return
    if args.solvers:
        print(json.dumps(solver_memory(args.size, args.ndim, args.batch), indent=2))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.size]
    if any(size < 16 or size % 16 for size in sizes):  # the U-Net halves four times
        parser.error(f"--size/--sizes must be multiples of 16 (the U-Net's four halvings); got {sizes}")

    runs = [(name, int(s)) for name in args.deq.split(",") if name for s in args.deq_steps.split(",") if s]
    runs += [(f"unroll_{v}" + (f"_{n}levels" if int(n) > 1 else ""), int(s)) for n in args.unroll_levels.split(",") if n
             for v in (args.variants or "vanilla,riir").split(",") if v for s in args.unroll_steps.split(",") if s]
    timed = set() if args.skip_time else {f"{n}:{s}" for n, s in runs} if args.time == "all" else set(args.time.split(","))
    out = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
           "deqreg": dict(DEQ, tol=args.tol, **CORRECTION), "loss": LOSS, "optimizer": "adamw", "runs": []}
    for size in sizes:
        pair = synthetic_pair(jax.random.key(0), (size,) * args.ndim, anatomy="brain")
        batch = {k: np.asarray(pair[k], np.float32)[None] for k in ("fixed", "moving")}
        results: dict = {}
        for name, steps in runs:
            results.setdefault(name, {})[str(steps)] = measure(
                name, steps, batch, timed=f"{name}:{steps}" in timed, repeats=args.repeats, tol=args.tol)
        out["runs"].append({"shape": [size] * args.ndim, "batch": 1, "results": results, "ratios": ratios(results)})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
