"""Convolution layers: XLA's convolution, jaxreg's matmul path and PyTorch side by side; prints JSON.

    python benchmarks/conv.py [--case issue|voxelmorph|voxelmorph2d|denoiser] [--size 64] [--batch 1] [--repeats 5]
                              [--impls xla,matmul] [--no-torch]

``issue``: one 3×3×3, 32→32-channel convolution at ``size``³ (and a 3×3 one on a 2-D image of
``(4·size)``² pixels). ``voxelmorph``: every convolution of the VoxelMorph U-Net for a
``size``³ input, at its own resolution and widths (the sum is the convolution share of a
train step); ``voxelmorph2d``: the same for a ``size``² image (the 2-D demo: ``--size 128
--batch 4``). ``denoiser``: DiffuseReg's patch embedding, 2× transposed convolution and
3×3×3 conv-block layers at 32×128×128. For each layer: forward (``fwd_ms``) and forward +
backward (gradients of input and kernel, ``fwd_bwd_ms``), best of ``--repeats`` runs (the
minimum is the least disturbed by other processes), float32, channels last for jaxreg and
channels first for PyTorch (its native layout). Ratios are time / PyTorch's time.
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
from jax import lax

from jaxreg.models import conv as jconv
from jaxreg.models.unet import DECODER, ENCODER

SPECS = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1e3, 2)


def voxelmorph_layers(size: int, ndim: int = 3) -> list[dict]:
    """(spatial size, C_in, C_out) of every 3×3×3 convolution of the VoxelMorph U-Net (+ flow)."""
    layers, width, sides = [], 2, []
    for level, f in enumerate(ENCODER):
        layers.append({"name": f"encoder_{level}", "side": size >> level, "cin": width, "cout": f})
        sides.append(size >> level)
        width = f
    skips = list(ENCODER)
    for level, f in enumerate(DECODER[:len(ENCODER)]):
        layers.append({"name": f"decoder_{level}", "side": size >> (len(ENCODER) - level), "cin": width, "cout": f})
        width = f + skips.pop()
    for level, f in enumerate(DECODER[len(ENCODER):]):
        layers.append({"name": f"remaining_{level}", "side": size, "cin": width, "cout": f})
        width = f
    layers.append({"name": "flow", "side": size, "cin": width, "cout": 3})
    for layer in layers:
        layer.update(kind="conv", ndim=ndim, kernel=3, stride=1)
    return layers


def cases(name: str, size: int) -> list[dict]:
    if name == "issue":
        return [{"name": "conv3d_3x3x3_32to32", "kind": "conv", "ndim": 3, "side": size, "cin": 32, "cout": 32,
                 "kernel": 3, "stride": 1},
                {"name": "conv2d_3x3_32to32", "kind": "conv", "ndim": 2, "side": 4 * size, "cin": 32, "cout": 32,
                 "kernel": 3, "stride": 1}]
    if name == "voxelmorph":
        return voxelmorph_layers(size)
    if name == "voxelmorph2d":
        return voxelmorph_layers(size, 2)
    if name == "denoiser":
        shape = (32, 128, 128)
        return [{"name": "patch_embed", "kind": "conv", "ndim": 3, "shape": shape, "cin": 3, "cout": 48, "kernel": 2,
                 "stride": 2},
                {"name": "resblock_conv", "kind": "conv", "ndim": 3, "shape": (16, 64, 64), "cin": 48, "cout": 48,
                 "kernel": 3, "stride": 1},
                {"name": "up_2x", "kind": "transpose", "ndim": 3, "shape": (16, 64, 64), "cin": 96, "cout": 48,
                 "kernel": 2, "stride": 2}]
    raise ValueError(f"--case must be issue, voxelmorph, voxelmorph2d or denoiser; got {name!r}.")


def _jax_fn(case: dict):
    nd, k, s = case["ndim"], case["kernel"], case["stride"]
    if case["kind"] == "transpose":
        return lambda x, w: jconv.conv_transpose(x, w, (s,) * nd, "SAME", dimension_numbers=None)
    padding = "SAME" if s == 1 else "VALID"
    return lambda x, w: jconv.conv_general_dilated(x, w, (s,) * nd, padding, dimension_numbers=SPECS[nd])


def time_jax(case: dict, impl: str, repeats: int, x, w) -> dict:
    os.environ["JAXREG_CONV"] = impl  # read at trace time
    fn = _jax_fn(case)
    fwd = jax.jit(lambda x, w: fn(x, w))
    y = fwd(x, w)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
    bwd = jax.jit(lambda x, w, dy: jax.vjp(fn, x, w)[1](dy))
    compiled = bwd.lower(x, w, dy).compile()
    memory = compiled.memory_analysis()
    out = {"fwd_ms": _best(lambda: jax.block_until_ready(fwd(x, w)), repeats),
           "fwd_bwd_ms": _best(lambda: jax.block_until_ready(compiled(x, w, dy)), repeats)}
    if memory is not None:
        out["fwd_bwd_temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
    return out, (y, compiled(x, w, dy))


def time_torch(case: dict, repeats: int, x, w):
    try:
        import torch
    except ImportError:
        return None, None
    from torch.nn import functional as F

    nd, s = case["ndim"], case["stride"]
    channels_first = (0, nd + 1, *range(1, nd + 1))
    tx = torch.tensor(np.asarray(x).transpose(channels_first).copy(), requires_grad=True)
    if case["kind"] == "transpose":  # torch: (C_in, C_out, *k), a true transposed convolution
        tw = torch.tensor(np.asarray(w).transpose(nd, nd + 1, *range(nd)).copy(), requires_grad=True)
        op = {2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
        call = lambda: op(tx, tw, stride=s)
    else:
        tw = torch.tensor(np.asarray(w).transpose(nd + 1, nd, *range(nd)).copy(), requires_grad=True)
        op = {2: F.conv2d, 3: F.conv3d}[nd]
        padding = case["kernel"] // 2 if s == 1 else 0
        call = lambda: op(tx, tw, stride=s, padding=padding)
    with torch.no_grad():
        y = call()
    dy = torch.randn_like(y)

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        tx.grad = tw.grad = None
        call().backward(dy)

    return {"fwd_ms": _best(fwd, repeats), "fwd_bwd_ms": _best(fwd_bwd, repeats), "threads": torch.get_num_threads(),
            "torch": torch.__version__}, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="issue")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", default="xla,matmul")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    impls = args.impls.split(",")
    rows, totals = [], {}
    rng = np.random.default_rng(0)
    for case in cases(args.case, args.size):
        nd = case["ndim"]
        shape = tuple(case.get("shape", (case.get("side", args.size),) * nd))
        x = jnp.asarray(rng.normal(size=(args.batch, *shape, case["cin"])), jnp.float32)
        w = jnp.asarray(rng.normal(size=(*(case["kernel"],) * nd, case["cin"], case["cout"])) * 0.1, jnp.float32)
        row = {k: case[k] for k in ("name", "cin", "cout", "kernel", "stride")} | {"shape": list(shape)}
        results = {}
        for impl in impls:
            row[impl], results[impl] = time_jax(case, impl, args.repeats, x, w)
        if len(impls) > 1:  # the paths agree (forward, relative to the largest value)
            a, b = results[impls[0]][0], results[impls[1]][0]
            row["max_rel_diff"] = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        ref = None if args.no_torch else time_torch(case, args.repeats, x, w)[0]
        if ref is not None:
            row["torch"] = ref
            for impl in impls:
                for key in ("fwd_ms", "fwd_bwd_ms"):
                    row[impl][key.replace("_ms", "_vs_torch")] = round(row[impl][key] / ref[key], 3)
        for impl in [*impls, *(["torch"] if ref is not None else [])]:
            for key in ("fwd_ms", "fwd_bwd_ms"):
                totals.setdefault(impl, {}).setdefault(key, 0.0)
                totals[impl][key] = round(totals[impl][key] + row[impl][key], 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"backend": jax.default_backend(), "cpus": os.cpu_count(), "jax": jax.__version__,
                      "case": args.case, "size": args.size, "batch": args.batch, "layers": rows, "total": totals}, indent=2))


if __name__ == "__main__":
    main()
