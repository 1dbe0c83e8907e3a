"""Compile seconds of random draws inside ``jit``: ``jax.random.normal(key, shape)`` against
``jaxreg._random.normal`` (the same values, drawn flat and reshaped), and of the synthetic pair.

    python benchmarks/random_compile.py [--repeats 3]

Each number is ``jax.jit(f).lower(key).compile()`` wall seconds with the persistent
compilation cache off, at XLA's default optimisation level (what a user's process compiles);
the two draws alternate, so a busy machine slows both alike, and the medians are reported with
their ratio. ``synthetic_pair`` is the first call of ``jaxreg.data.synthetic_pair`` (what
``jaxreg example`` and every training run on the built-in data compile), in a fresh
interpreter per sample, with ``--against TREE`` side by side with another checkout. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(16, 16, 16, 12), (8, 8, 8, 3), (64, 64, 64, 3), (2, 32, 32, 32, 3)]

_PAIR = """
import time, jax
from jaxreg.data import synthetic_pair
start = time.perf_counter()
jax.block_until_ready(synthetic_pair(jax.random.key(0), {shape}, anatomy="brain"))
print(time.perf_counter() - start)
"""


def _compile_s(fn, key) -> float:
    import jax

    start = time.perf_counter()
    jax.jit(fn).lower(key).compile()
    return time.perf_counter() - start


def _pair_s(tree: str | None, shape) -> float:
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, "-c", _PAIR.format(shape=tuple(shape))], env=env, capture_output=True,
                         text=True, check=True, cwd=tree or None)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default=None, help="another checkout, for the synthetic pair side by side")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from jaxreg import _random

    key = jax.random.key(0)
    draws = []
    for shape in SHAPES:
        theirs, ours = [], []
        for _ in range(args.repeats):
            theirs.append(_compile_s(lambda k, s=shape: jax.random.normal(k, s), key))
            ours.append(_compile_s(lambda k, s=shape: _random.normal(k, s), key))
        draws.append({"shape": list(shape), "jax_random_normal_s": statistics.median(theirs),
                      "flat_reshaped_s": statistics.median(ours),
                      "ratio": statistics.median(theirs) / statistics.median(ours)})
    pairs = []
    for shape in [(48, 48), (16, 16, 16), (96, 96, 96)]:
        row = {"shape": list(shape), "this_s": statistics.median(_pair_s(None, shape) for _ in range(args.repeats))}
        if args.against:
            row["against_s"] = statistics.median(_pair_s(args.against, shape) for _ in range(args.repeats))
            row["ratio_against_over_this"] = row["against_s"] / row["this_s"]
        pairs.append(row)
    print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__, "draws": draws,
                      "synthetic_pair_first_call": pairs}, indent=1))


if __name__ == "__main__":
    main()
