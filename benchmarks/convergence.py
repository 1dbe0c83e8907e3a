"""DEQReg's convergence study (paper Fig. 3 / Table 2): quality vs inference steps; prints the JSON.

    python benchmarks/convergence.py W_deqreg W_riir W_gradirn [--steps 1,2,4,8,16,32,48,64,96] \\
        [--split test] [--limit N] [--checkpoint latest] [--out DIR]
    python benchmarks/convergence.py --plot-only W1/eval/convergence/convergence.json [--out DIR]

Each workdir is a trained ``deqreg`` or ``unroll`` run. Writes ``convergence.json``,
``convergence.png`` (Dice and folding % vs steps) and ``convergence.md`` (Table 2-like)
into ``--out`` (default ``W1/eval/convergence``); see ``jaxreg.evaluation.convergence``.
``--plot-only`` redraws the PNG and the table from a saved ``convergence.json`` (seconds;
no scoring) into ``--out`` (default: the JSON's folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxreg.evaluation.convergence import STEPS, convergence_study


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` → ``(1, 2, 4)``."""
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers; got {text!r}.") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"--steps must be positive integers; got {text!r}.")
    return steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="*", help="trained deqreg / unroll workdirs")
    parser.add_argument("--steps", type=parse_steps, default=STEPS, help="inference step counts, e.g. 1,2,4,8")
    parser.add_argument("--split", default="test", help="train | val | test")
    parser.add_argument("--limit", type=int, default=0, help="only the first N pairs (0: all)")
    parser.add_argument("--checkpoint", default="latest", help="latest | best | a step number (every run)")
    parser.add_argument("--out", default=None, help="output folder (default: W1/eval/convergence)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="redraw convergence.png/.md from this saved convergence.json (no workdirs, no scoring)")
    args = parser.parse_args(argv)
    if args.plot_only:
        if args.workdirs:
            parser.error("--plot-only takes no workdirs (the runs are those of the JSON).")
        from jaxreg.evaluation.convergence import convergence_replot  # noqa: PLC0415

        try:
            result = convergence_replot(args.plot_only, out_dir=args.out)
        except (FileNotFoundError, ValueError) as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        print((Path(result["out_dir"]) / "convergence.json").read_text(), end="")
        return result
    if not args.workdirs:
        parser.error("give at least one workdir (or --plot-only JSON).")
    out = args.out or Path(args.workdirs[0]) / "eval" / "convergence"
    result = convergence_study(args.workdirs, steps=args.steps, split=args.split, limit=args.limit or None,
                               step=args.checkpoint, out_dir=out, progress=not args.no_progress)
    print((Path(result["out_dir"]) / "convergence.json").read_text(), end="")  # the file: NaN written as null
    return result


if __name__ == "__main__":
    main()
