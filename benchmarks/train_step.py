"""The VoxelMorph train step: compiled memory and time per step; prints one JSON object.

    python benchmarks/train_step.py [--sizes 64,128] [--repeats 3] [--batch 1]

Memory is XLA's ``memory_analysis()`` of the compiled step (temporaries, arguments,
outputs; meaningful on CPU too, see DESIGN.md §5). Time is wall time per step after the
compiling call, LNCC (window 9) + diffusion, AdamW.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import models
from jaxreg.training import create_state, make_optimizer, make_train_step


def measure(size: int, batch_size: int, repeats: int) -> dict:
    module, _, loss_fn, _ = models.build({"name": "voxelmorph"}, {"similarity": "lncc", "window": 9, "weight": 0.01})
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.random((batch_size, size, size, size)), jnp.float32) for k in ("fixed", "moving")}
    params = module.init(jax.random.key(0), batch["fixed"][..., None], batch["moving"][..., None])
    optimizer = make_optimizer({"learning_rate": 1e-4, "grad_clip": 1.0})
    state = create_state(params, optimizer, jax.random.key(1))
    step = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(repeats):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    out = {"shape": [size] * 3, "batch": batch_size, "compile_s": compile_s,
           "step_s": (time.perf_counter() - start) / repeats, "loss": float(metrics["loss"])}
    if memory is not None:
        out["temp_mb"] = memory.temp_size_in_bytes / 2**20
        out["argument_mb"] = memory.argument_size_in_bytes / 2**20
        out["output_mb"] = memory.output_size_in_bytes / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    result = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
              "steps": [measure(int(s), args.batch, args.repeats) for s in args.sizes.split(",")]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
