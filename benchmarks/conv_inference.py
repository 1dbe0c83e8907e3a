"""3-D inference with a trained model, XLA convolutions vs the matmul path; prints JSON.

    python benchmarks/conv_inference.py [--workdir W] [--shape 160,192,224] [--impls xla,matmul] [--repeats 2]

Each path runs in its own process (``JAXREG_CONV=xla`` / ``matmul``, see docs/performance.md).
With ``--workdir`` (a 3-D VoxelMorph or DEQReg run of ``train.py``): ``jaxreg.register(fixed,
moving, model=W)`` on two random volumes of ``--shape``, the first call (compiling) and the
best of ``--repeats`` later calls. Without: the VoxelMorph network's forward pass
(``methods.build({"name": "voxelmorph"}).predict``, jitted) at that shape, first call and
best later call, and XLA's compiled temporary memory for it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--shape", default="160,192,224")
    parser.add_argument("--impls", default="xla,matmul")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.child:
        print(json.dumps(child(args.workdir, shape, args.repeats)))
        return
    rows = []
    for impl in args.impls.split(","):
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
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
