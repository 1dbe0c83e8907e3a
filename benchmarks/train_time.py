"""Where the time of a short ``train.py`` run goes: tracing, lowering and compiling each jitted
function, the training steps, validation and the rest; prints one JSON object.

    python benchmarks/train_time.py [--config deqreg_nlst] [--shape 48,32,48] [--steps 4]
        [--eval-every 2] [--cases 4]

Writes a Learn2Reg folder of ``--cases`` synthetic cases (the config's task layout: NLST with
keypoints and masks, OASIS with labels; ``jaxreg.data.learn2reg.write_learn2reg``) at
``--shape`` into a temporary directory, then runs ``jaxreg.training.train_and_evaluate`` with
the config (``configs/<name>.py`` as shipped) for ``--steps`` steps, validating every
``--eval-every`` on one pair, in this process. JAX's own monitoring events give the seconds
spent tracing (``trace_s``), lowering to StableHLO (``lower_s``) and compiling (``compile_s``)
per jitted function; ``metrics.jsonl`` gives the time of each step (``log_every = 1``). The
report's ``phases`` splits the run's wall time into compilation (all three), steps after the
first, and the rest (validation after compiling, data, checkpoints, start-up).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_configs import CONFIGS, load  # noqa: E402

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "compile_s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="deqreg_nlst", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--shape", default="48,32,48", help="volume side lengths, comma-separated")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases (one is the validation pair's)")
    parser.add_argument("--top", type=int, default=8, help="functions listed, by total compilation time")
    args = parser.parse_args()
    if args.config not in CONFIGS or args.config.startswith("diffusereg"):
        parser.error(f"--config must be one of {[c for c in CONFIGS if not c.startswith('diffusereg')]}; "
                     f"got {args.config!r}")
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape must be comma-separated whole numbers; got {args.shape!r}")
    if len(shape) != 3 or any(s < 16 or s % 16 for s in shape):
        parser.error(f"--shape must be three multiples of 16 (the U-Net's four halvings); got {args.shape!r}")
    if args.steps < 1 or args.eval_every < 0 or args.cases < 3:
        parser.error("--steps must be >= 1, --eval-every >= 0 and --cases >= 3")

    start = time.perf_counter()
    from jax import monitoring

    from jaxreg.data.learn2reg import write_learn2reg
    from jaxreg.runs.writers import read_metrics
    from jaxreg.training import train_and_evaluate

    import_s = time.perf_counter() - start
    per_function: dict = collections.defaultdict(lambda: collections.Counter())

    def listen(event, duration, **kwargs):
        if event in EVENTS:
            entry = per_function[kwargs.get("fun_name", "?")]
            entry[EVENTS[event]] += duration
            entry["calls"] += event == "/jax/core/compile/backend_compile_duration"

    config = load(args.config)
    task = "NLST" if args.config.endswith("nlst") else "OASIS"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_learn2reg(Path(tmp) / "data", task=task, num_cases=args.cases, num_val=1, shape=shape, seed=0)
        monitoring.register_event_duration_secs_listener(listen)  # the run's compilations, not the data's
        config.data.root = str(root)
        training = config.training
        training.num_steps, training.eval_every, training.checkpoint_every = args.steps, args.eval_every, args.steps
        training.val_pairs, training.log_every, training.progress = 1, 1, False
        if "decay_steps" in config.optimizer:
            config.optimizer.decay_steps = args.steps
        run_start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the validation lines; stdout is the JSON
            train_and_evaluate(config, Path(tmp) / "run")
        run_s = time.perf_counter() - run_start
        train = [row for row in read_metrics(Path(tmp) / "run") if row.get("split") == "train"]
    step_s = [1.0 / row["steps_per_s"] for row in train]
    compilation = {name: {k: round(v, 2) if k != "calls" else v for k, v in c.items()}
                   for name, c in per_function.items()}
    total = {k: round(sum(c.get(k, 0.0) for c in per_function.values()), 2) for k in EVENTS.values()}
    compiling = sum(total.values())
    later_steps = sum(step_s[1:])
    top = sorted(compilation.items(), key=lambda kv: -sum(v for k, v in kv[1].items() if k != "calls"))
    print(json.dumps({
        "config": args.config, "shape": list(shape), "steps": args.steps, "eval_every": args.eval_every,
        "import_s": round(import_s, 2), "run_s": round(run_s, 2),
        "step_s": [round(s, 3) for s in step_s],
        "phases": {"compilation_s": round(compiling, 2), "steps_after_first_s": round(later_steps, 2),
                   "rest_s": round(run_s - compiling - later_steps, 2)},
        "compilation_total": total, "compiled_functions": len(compilation),
        "by_function": dict(top[:args.top]),
    }, indent=2))


if __name__ == "__main__":
    main()
