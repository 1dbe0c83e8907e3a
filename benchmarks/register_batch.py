"""``register(..., batch=True)`` on B pairs against B calls of ``register`` and against
``jax.jit(jax.vmap(register))`` (the traceable core), side by side; prints JSON.

    python benchmarks/register_batch.py [--pairs 4] [--shape 64,64,64] [--repeats 2]

The pairs are synthetic (smooth random textures, each moving image a smoothly deformed and
shifted copy). Both ways run once to compile, then ``--repeats`` times; the best time is
reported (wall seconds), with the largest difference between the ways' fields (voxels)
and the speed-ups ``loop_s / batch_s`` and ``vmap_s / batch_s``. On a CPU the pairs share the same cores either way;
on a GPU the batch fills the device (one program for all pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from scipy import ndimage as ndi

import jaxreg


def _pairs(count: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fixed, moving = [], []
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    for _ in range(count):
        image = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
        field = np.stack([ndi.gaussian_filter(rng.normal(size=shape), 6.0) for _ in shape])
        field *= 2.0 / np.abs(field).max()
        shift = rng.uniform(-2, 2, size=len(shape))
        fixed.append(image)
        moving.append(ndi.map_coordinates(image, grid + field + shift.reshape((-1,) + (1,) * len(shape)), order=1,
                                          mode="nearest"))
    return np.asarray(fixed, np.float32), np.asarray(moving, np.float32)


def _best(fn, repeats: int) -> tuple[object, float, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, first, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--shape", default="64,64,64")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape must be 2 or 3 comma-separated integers, e.g. 64,64,64; got {args.shape!r}")
    if len(shape) not in (2, 3) or min(shape) < 16 or args.pairs < 1 or args.repeats < 1:
        parser.error(f"--shape needs 2 or 3 sides >= 16 and --pairs, --repeats >= 1; got --shape {args.shape} "
                     f"--pairs {args.pairs} --repeats {args.repeats}")
    fixed, moving = _pairs(args.pairs, shape)
    batch, batch_first, batch_s = _best(lambda: jaxreg.register(fixed, moving, batch=True).ddf, args.repeats)
    loop, loop_first, loop_s = _best(lambda: [jaxreg.register(f, m).ddf for f, m in zip(fixed, moving)],
                                     args.repeats)
    mapped_core = jax.jit(jax.vmap(lambda f, m: jaxreg.register(f, m).ddf))
    mapped, vmap_first, vmap_s = _best(lambda: mapped_core(fixed, moving), args.repeats)
    difference = max(float(np.max(np.abs(np.asarray(batch[i]) - np.asarray(d)))) for i, d in enumerate(loop))
    vmap_difference = float(np.max(np.abs(np.asarray(batch) - np.asarray(mapped))))
    print(json.dumps({
        "backend": jax.default_backend(), "devices": str(jax.devices()[0]), "cpus": os.cpu_count(),
        "pairs": args.pairs, "shape": list(shape),
        "batch": {"first_call_s": round(batch_first, 2), "best_s": round(batch_s, 2)},
        "loop": {"first_call_s": round(loop_first, 2), "best_s": round(loop_s, 2)},
        "vmap_of_the_core": {"first_call_s": round(vmap_first, 2), "best_s": round(vmap_s, 2)},
        "speedup": round(loop_s / batch_s, 2), "max_field_difference_voxels": difference,
        "vmap_over_batch": round(vmap_s / batch_s, 2), "max_field_difference_vmap_voxels": vmap_difference,
    }, indent=2))


if __name__ == "__main__":
    main()
