"""Speed of the data sources; prints one JSON object.

    python benchmarks/data.py [--repeats 5]

So far: the built-in synthetic generator (pairs/s after the compiling first call) at 64³
and 128³ for each anatomy. The folder/TFDS pipeline from NIfTI on disk joins when it lands.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from jaxreg.data.synthetic import ANATOMIES, synthetic_pair


def _pairs_per_second(shape, anatomy, repeats):
    compile_start = time.perf_counter()
    jax.block_until_ready(synthetic_pair(jax.random.key(0), shape, anatomy=anatomy))
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(synthetic_pair(jax.random.key(i + 1), shape, anatomy=anatomy))
    return repeats / (time.perf_counter() - start), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {"backend": jax.default_backend(), "jax": jax.__version__, "synthetic": {}}
    for size in (64, 128):
        for anatomy in ANATOMIES:
            rate, compile_s = _pairs_per_second((size,) * 3, anatomy, args.repeats)
            result["synthetic"][f"{anatomy}_{size}^3"] = {"pairs_per_s": rate, "first_call_s": compile_s}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
