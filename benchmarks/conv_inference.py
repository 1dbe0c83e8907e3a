"""3-D inference with a trained model: XLA convolutions, the matmul path and PyTorch; prints JSON.

    python benchmarks/conv_inference.py [--workdir W] [--shape 160,192,224] [--impls xla,matmul,torch] [--repeats 2]

Each path runs in its own process (``JAXREG_CONV=xla`` / ``matmul``, see docs/performance.md;
``torch``: the same VoxelMorph U-Net in PyTorch, ``_torch_voxelmorph.py``, skipped when PyTorch
is not installed).
With ``--workdir`` (a 3-D VoxelMorph or DEQReg run of ``train.py``): ``jaxreg.register(fixed,
moving, model=W)`` on two random volumes of ``--shape``, the first call (compiling) and the
best of ``--repeats`` later calls. Without: the VoxelMorph network's forward pass
(``methods.build({"name": "voxelmorph"}).predict``, jitted) at that shape, first call and
best later call, and XLA's compiled temporary memory for it. ``torch``: that network's forward
pass under ``torch.no_grad()`` followed by the warp of the moving image (``grid_sample``) on the
same two volumes, what ``register(model=W)`` computes for a VoxelMorph run; ``ratio_vs_torch``
is a path's later call over PyTorch's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time


def _timed(run, out: dict, repeats: int) -> dict:
    start = time.perf_counter()
    run()
    out["first_call_s"] = round(time.perf_counter() - start, 2)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    out["call_s"] = round(min(times), 2)
    return out


def torch_child(shape: tuple[int, ...], repeats: int) -> dict:
    import numpy as np
    import torch

    import _torch_voxelmorph as peer

    rng = np.random.default_rng(0)
    fixed, moving = (torch.tensor(rng.random(shape).astype(np.float32))[None, None] for _ in range(2))
    torch.manual_seed(0)
    net = peer.UNet().eval()

    def run():
        with torch.no_grad():
            return peer.warp(moving, net(torch.cat([moving, fixed], dim=1)))

    out = {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(), "shape": list(shape),
           "what": "voxelmorph forward + warp (torch.no_grad)"}
    return _timed(run, out, repeats)


def child(workdir: str | None, shape: tuple[int, ...], repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    fixed, moving = (rng.random(shape).astype(np.float32) for _ in range(2))
    out = {"impl": os.environ["JAXREG_CONV"], "shape": list(shape)}
    if workdir:
        import jaxreg

        model = jaxreg.load_model(workdir)
        run = lambda: jax.block_until_ready(jaxreg.register(fixed, moving, model=model).ddf)
        out["what"] = f"register(model={model.name})"
    else:
        from jaxreg import methods

        method = methods.build({"name": "voxelmorph"}, {})
        f, m = jnp.asarray(fixed)[None], jnp.asarray(moving)[None]
        params = jax.jit(method.init)(jax.random.key(0), {"fixed": f, "moving": m})
        predict = jax.jit(method.predict)
        memory = predict.lower(params, f, m).compile().memory_analysis()
        if memory is not None:
            out["temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
        run = lambda: jax.block_until_ready(predict(params, f, m))
        out["what"] = "voxelmorph forward (jit)"
    return _timed(run, out, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--shape", default="160,192,224")
    parser.add_argument("--impls", default="xla,matmul,torch", help="xla, matmul (jaxreg's paths) and torch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.child:
        impl = os.environ["JAXREG_CONV"]
        print(json.dumps(torch_child(shape, args.repeats) if impl == "torch" else child(args.workdir, shape, args.repeats)))
        return
    rows = []
    for impl in args.impls.split(","):
        if impl == "torch" and importlib.util.find_spec("torch") is None:
            print("PyTorch is not installed: no torch row", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--child", "--shape", args.shape, "--repeats", str(args.repeats)]
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        done = subprocess.run(cmd, env={**os.environ, "JAXREG_CONV": impl}, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"cpus": os.cpu_count(), "runs": rows}
    by = {r["impl"]: r for r in rows}
    if "xla" in by and "matmul" in by:
        result["speedup"] = {k: round(by["xla"][k] / by["matmul"][k], 2) for k in ("first_call_s", "call_s")}
    if "torch" in by:
        for row in rows:
            if row["impl"] != "torch":
                row["ratio_vs_torch"] = round(row["call_s"] / by["torch"]["call_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
