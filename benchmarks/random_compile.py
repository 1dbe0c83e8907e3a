"""Compile seconds of random draws inside ``jit``: ``jax.random.normal(key, shape)`` against
``jaxreg._random.normal`` (the same values, drawn flat and reshaped), and of the synthetic pair.

    python benchmarks/random_compile.py [--repeats 3] [--against TREE]

Each number is ``jax.jit(f).lower(key).compile()`` wall seconds with the persistent
compilation cache off, at XLA's default optimisation level (what a user's process compiles);
the two draws alternate, so a busy machine slows both alike, and the medians are reported with
their ratio. ``synthetic_pair`` is the first call of ``jaxreg.data.synthetic_pair`` (what
``jaxreg example`` and every training run on the built-in data compile), in a fresh
interpreter per sample, with ``--against TREE`` side by side with another checkout.
``init`` is the compile of ``jax.jit(method.init)`` of the demo configs' networks (what
``train.py`` compiles before its first step), the same way. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(16, 16, 16, 12), (8, 8, 8, 3), (64, 64, 64, 3), (2, 32, 32, 32, 3)]

_PAIR = """
import time, jax
from jaxreg.data import synthetic_pair
start = time.perf_counter()
jax.block_until_ready(synthetic_pair(jax.random.key(0), {shape}, anatomy="brain"))
print(time.perf_counter() - start)
"""

_INIT = """
import importlib.util, time, jax, numpy as np
from jaxreg import methods
spec = importlib.util.spec_from_file_location("c", "configs/{config}.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config({arg!r})
method = methods.build_from_config(config)
images = np.zeros((1, *config.data.options.shape), np.float32)
lowered = jax.jit(method.init).lower(jax.random.key(0), {{"fixed": images, "moving": images}})
start = time.perf_counter()
lowered.compile()
print(time.perf_counter() - start)
"""
INIT_CONFIGS = [("deqreg_demo", None), ("voxelmorph_demo", "3d"), ("diffusereg_demo", None)]


def _compile_s(fn, key) -> float:
    import jax

    start = time.perf_counter()
    jax.jit(fn).lower(key).compile()
    return time.perf_counter() - start


def _fresh_s(tree: str | None, code: str) -> float:
    """Seconds printed last by ``code`` in a fresh interpreter, with ``tree`` first on the path."""
    tree = tree or ROOT
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tree)
    return float(out.stdout.strip().splitlines()[-1])


def _side_by_side(rows, codes, against, repeats):
    out = []
    for row, code in zip(rows, codes):
        row["this_s"] = statistics.median(_fresh_s(None, code) for _ in range(repeats))
        if against:
            row["against_s"] = statistics.median(_fresh_s(against, code) for _ in range(repeats))
            row["ratio_against_over_this"] = row["against_s"] / row["this_s"]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default=None, help="another checkout: the synthetic pair and the inits side by side")
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
    shapes = [(48, 48), (16, 16, 16), (96, 96, 96)]
    pairs = _side_by_side([{"shape": list(s)} for s in shapes], [_PAIR.format(shape=s) for s in shapes],
                          args.against, args.repeats)
    inits = _side_by_side([{"config": c, "arg": a} for c, a in INIT_CONFIGS],
                          [_INIT.format(config=c, arg=a) for c, a in INIT_CONFIGS], args.against, args.repeats)
    print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__, "draws": draws,
                      "synthetic_pair_first_call": pairs, "init_compile": inits}, indent=1))


if __name__ == "__main__":
    main()
