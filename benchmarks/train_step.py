"""The VoxelMorph train step: jaxreg (XLA and matmul convolutions) and PyTorch side by side; prints JSON.

    python benchmarks/train_step.py [--sizes 64,128] [--repeats 3] [--batch 1] [--similarity lncc|mse]
                                    [--impls xla,matmul] [--no-torch]

For every size, in one process: the jaxreg step with each convolution path of
``jaxreg.models.conv`` (``JAXREG_CONV=xla`` / ``matmul``, see docs/performance.md) and, when
PyTorch is installed, the same step in PyTorch (VoxelMorph U-Net with the same widths,
``grid_sample`` warp with border clamping, the same loss, Adam). Loss: similarity
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
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import methods, models
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
    except ImportError:
        return None
    from torch import nn
    from torch.nn import functional as F

    class UNet(nn.Module):  # VoxelMorph's vxm U-Net, the widths of jaxreg.models.unet
        def __init__(self, enc=models.unet.ENCODER, dec=models.unet.DECODER):
            super().__init__()
            self.enc, width = nn.ModuleList(), 2
            for f in enc:
                self.enc.append(nn.Conv3d(width, f, 3, padding=1))
                width = f
            self.up, skips = nn.ModuleList(), list(enc)
            for f in dec[:len(enc)]:
                self.up.append(nn.Conv3d(width, f, 3, padding=1))
                width = f + skips.pop()
            self.rest = nn.ModuleList()
            for f in dec[len(enc):]:
                self.rest.append(nn.Conv3d(width, f, 3, padding=1))
                width = f
            self.flow = nn.Conv3d(width, 3, 3, padding=1)
            nn.init.normal_(self.flow.weight, std=1e-5)
            nn.init.zeros_(self.flow.bias)

        def forward(self, x):
            act = lambda y: F.leaky_relu(y, 0.2)
            skips = []
            for conv in self.enc:
                x = act(conv(x))
                skips.append(x)
                x = F.max_pool3d(x, 2)
            for conv in self.up:
                x = F.interpolate(act(conv(x)), scale_factor=2, mode="nearest")
                x = torch.cat([x, skips.pop()], dim=1)
            for conv in self.rest:
                x = act(conv(x))
            return self.flow(x)

    def warp(moving, ddf):  # pull, voxel units, linear, border clamp (jaxreg's warp defaults)
        sizes = torch.tensor(moving.shape[2:], dtype=ddf.dtype)
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=ddf.dtype) for s in moving.shape[2:]], indexing="ij"))
        coords = (grid[None] + ddf) / (sizes - 1).view(1, 3, 1, 1, 1) * 2 - 1
        return F.grid_sample(moving, coords.permute(0, 2, 3, 4, 1).flip(-1), align_corners=True, padding_mode="border")

    def lncc(f, w, win=9):
        box = torch.ones(1, 1, win, win, win)
        s = lambda x: F.conv3d(x, box, padding=win // 2)
        n = float(win**3)
        sf, sw, sff, sww, sfw = s(f), s(w), s(f * f), s(w * w), s(f * w)
        cross, vf, vw = sfw - sf * sw / n, sff - sf * sf / n, sww - sw * sw / n
        return 1 - torch.mean(cross * cross / (vf * vw + 1e-5))

    def diffusion(u):
        return sum(torch.mean(torch.diff(u, dim=a) ** 2) for a in (2, 3, 4)) / 3

    torch.manual_seed(0)
    net = UNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    fixed, moving = (torch.tensor(rng.random((batch_size, 1, size, size, size)), dtype=torch.float32) for _ in range(2))

    def step():
        opt.zero_grad(set_to_none=True)
        ddf = net(torch.cat([moving, fixed], dim=1))
        warped = warp(moving, ddf)
        sim = F.mse_loss(warped, fixed) if similarity == "mse" else lncc(fixed, warped)
        loss = sim + WEIGHT * diffusion(ddf)
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
    parser.add_argument("--similarity", default="lncc", choices=("lncc", "mse"))
    parser.add_argument("--impls", default="xla,matmul", help="jaxreg convolution paths to run (JAXREG_CONV values)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch step")
    args = parser.parse_args()
    result = {"backend": jax.default_backend(), "cpus": os.cpu_count(), "jax": jax.__version__,
              "similarity": args.similarity, "weight": WEIGHT, "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        row = {"shape": [size] * 3, "batch": args.batch}
        for impl in args.impls.split(","):
            row[impl] = jaxreg_step(size, args.batch, args.repeats, args.similarity, impl)
        ref = None if args.no_torch else torch_step(size, args.batch, args.repeats, args.similarity)
        if ref is not None:
            row["torch"] = ref
            for impl in args.impls.split(","):
                row[impl]["ratio_vs_torch"] = round(row[impl]["step_s"] / ref["step_s"], 3)
        if "xla" in row and "matmul" in row:
            row["matmul_speedup_vs_xla"] = round(row["xla"]["step_s"] / row["matmul"]["step_s"], 2)
        result["sizes"].append(row)
        print(json.dumps(row), flush=True, file=__import__("sys").stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
