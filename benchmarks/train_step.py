"""The VoxelMorph train step: jaxreg (XLA and matmul convolutions) and PyTorch side by side; prints JSON.

    python benchmarks/train_step.py [--sizes 64,128] [--repeats 3] [--batch 1] [--similarity mse,lncc]
                                    [--impls xla,matmul] [--no-torch]

For every size and loss (both by default), in one process: the jaxreg step with each convolution path of
``jaxreg.models.conv`` (``JAXREG_CONV=xla`` / ``matmul``, see docs/performance.md) and, when
PyTorch is installed, the same step in PyTorch (``_torch_voxelmorph.py``: VoxelMorph U-Net with
the same widths, ``grid_sample`` warp with border clamping, the same loss, Adam). Loss: similarity
(``mse``, or ``lncc`` window 9) + 0.01 · diffusion, no integration; optimiser Adam(W)
lr 1e-4 without weight decay or clipping, batch 1 by default. Time is the best of
``--repeats`` steps after the compiling call (the minimum is the least disturbed by
other processes on a shared machine); ``ratio_vs_torch`` is jaxreg time / PyTorch time.
Memory is XLA's ``memory_analysis()`` of the compiled step (temporaries, arguments,
outputs; meaningful on CPU, unlike ``peak_memory_in_bytes``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import methods
from jaxreg.training import create_state, make_optimizer, make_train_step

WEIGHT = 0.01


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def jaxreg_step(size: int, batch_size: int, repeats: int, similarity: str, impl: str) -> dict:
    os.environ["JAXREG_CONV"] = impl  # read when the step is traced
    loss = {"similarity": similarity, "window": 9, "weight": WEIGHT}
    module, _, loss_fn, _ = methods.build({"name": "voxelmorph"}, loss)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.random((batch_size, size, size, size)), jnp.float32) for k in ("fixed", "moving")}
    params = module.init(jax.random.key(0), batch["fixed"][..., None], batch["moving"][..., None])
    optimizer = make_optimizer({"learning_rate": 1e-4})
    state = create_state(params, optimizer, jax.random.key(1))
    step = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

    def run():
        nonlocal state, metrics
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)

    out = {"impl": impl, "compile_s": round(compile_s, 2), "step_s": round(_best(run, repeats), 4),
           "loss": float(metrics["loss"])}
    if memory is not None:
        out["temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
    return out


def torch_step(size: int, batch_size: int, repeats: int, similarity: str) -> dict | None:
    try:
        import torch
        from torch.nn import functional as F

        import _torch_voxelmorph as peer
    except ImportError:
        return None

    torch.manual_seed(0)
    net = peer.UNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    fixed, moving = (torch.tensor(rng.random((batch_size, 1, size, size, size)), dtype=torch.float32) for _ in range(2))

    def step():
        opt.zero_grad(set_to_none=True)
        ddf = net(torch.cat([moving, fixed], dim=1))
        warped = peer.warp(moving, ddf)
        sim = F.mse_loss(warped, fixed) if similarity == "mse" else peer.lncc(fixed, warped)
        loss = sim + WEIGHT * peer.diffusion(ddf)
        loss.backward()
        opt.step()
        return float(loss)

    loss = step()
    return {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "step_s": round(_best(step, repeats), 4), "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--similarity", default="mse,lncc", help="losses to time, comma separated: mse, lncc")
    parser.add_argument("--impls", default="xla,matmul", help="jaxreg convolution paths to run (JAXREG_CONV values)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch step")
    args = parser.parse_args()
    similarities = args.similarity.split(",")
    if not set(similarities) <= {"mse", "lncc"}:
        parser.error(f"--similarity takes mse and/or lncc; got {args.similarity!r}")
    result = {"backend": jax.default_backend(), "cpus": os.cpu_count(), "jax": jax.__version__,
              "weight": WEIGHT, "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        for similarity in similarities:
            row = {"shape": [size] * 3, "batch": args.batch, "similarity": similarity}
            for impl in args.impls.split(","):
                row[impl] = jaxreg_step(size, args.batch, args.repeats, similarity, impl)
            ref = None if args.no_torch else torch_step(size, args.batch, args.repeats, similarity)
            if ref is not None:
                row["torch"] = ref
                for impl in args.impls.split(","):
                    row[impl]["ratio_vs_torch"] = round(row[impl]["step_s"] / ref["step_s"], 3)
            if "xla" in row and "matmul" in row:
                row["matmul_speedup_vs_xla"] = round(row["xla"]["step_s"] / row["matmul"]["step_s"], 2)
            result["sizes"].append(row)
            print(json.dumps(row), flush=True, file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
