"""Time of ``import jaxreg`` in a fresh interpreter, and which heavy packages it loads.

    python benchmarks/import_time.py                       # this tree, 5 fresh interpreters
    python benchmarks/import_time.py --against /other/tree # side by side with another checkout
    python benchmarks/import_time.py --module jaxreg.cli   # what a `jaxreg` command imports

Each sample is a new ``python -X importtime -c "import jaxreg"`` (or ``--module``); the number is
the cumulative time of that module's line (microseconds → seconds), which includes jax itself.
``import jax`` alone is measured the same way in the same loop, for scale (the two medians are
noisy at the tenth of a second, so their difference is not reported), and so is ``import ml_dtypes``
with its version (JAX's dtypes: 0.7.0's extension module took 1.1-1.2 s to load on the 2-core CPU,
0.6.0's 0.01 s, hence ``pyproject.toml``'s pin). ``--module jaxreg.cli`` times what a ``jaxreg``
command imports instead. With ``--against`` the two trees alternate sample by sample, so a busy
machine slows both alike, and
``ratio_against_over_this`` compares the medians. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HEAVY = ("orbax", "matplotlib", "flax", "optax", "nibabel", "ml_collections", "tensorflow_datasets", "scipy")


def _cumulative_s(tree: Path | None, module: str) -> float:
    """Cumulative import time of ``module`` (s) in a fresh interpreter with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(tree) if tree else os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env,
                         capture_output=True, text=True, check=True, cwd=tree or None).stderr
    line = [row for row in out.splitlines() if row.rstrip().endswith(f"| {module}")][-1]
    return int(line.split("|")[1]) / 1e6


def _heavy_loaded(tree: Path, module: str) -> list[str]:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(tree)),
                         capture_output=True, text=True, check=True, cwd=tree).stdout.strip()
    return [m for m in out.split(",") if m]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="fresh interpreters per tree")
    parser.add_argument("--against", default="", help="another checkout of jaxreg to compare with")
    parser.add_argument("--module", default="jaxreg", help="the module of jaxreg to import (e.g. jaxreg.cli)")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    trees = {"this": Path(__file__).resolve().parents[1]}
    if args.against:
        other = Path(args.against).resolve()
        if not (other / "jaxreg" / "__init__.py").is_file():
            parser.error(f"--against {args.against!r} is not a jaxreg checkout (no jaxreg/__init__.py there)")
        trees["against"] = other
    if args.module != "jaxreg" and not args.module.startswith("jaxreg."):
        parser.error(f"--module must be jaxreg or one of its modules; got {args.module!r}")
    times = {name: [] for name in trees}
    jax_only, dtypes_only = [], []
    for _ in range(args.samples):
        jax_only.append(_cumulative_s(None, "jax"))
        dtypes_only.append(_cumulative_s(None, "ml_dtypes"))
        for name, tree in trees.items():
            times[name].append(_cumulative_s(tree, args.module))
    import ml_dtypes

    key = f"import_{args.module.replace('.', '_')}_s"
    result = {"samples": args.samples, "module": args.module, "import_jax_s": round(statistics.median(jax_only), 3),
              "import_ml_dtypes_s": round(statistics.median(dtypes_only), 3), "ml_dtypes": ml_dtypes.__version__}
    for name, tree in trees.items():
        result[name] = {"tree": str(tree), key: round(statistics.median(times[name]), 3),
                        "heavy_modules_loaded": _heavy_loaded(tree, args.module)}
    if "against" in result:
        result["ratio_against_over_this"] = round(result["against"][key] / result["this"][key], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
