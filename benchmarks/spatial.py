"""Speed of the spatial core on a full-size volume; prints one JSON object.

    python benchmarks/spatial.py [--shape 160,192,224] [--repeats 5]

Times (median of ``repeats``, seconds, after a warm-up/compile call):
* ``warp`` forward (trilinear, jitted) vs ``scipy.ndimage.map_coordinates(order=1)`` on the
  same image and coordinates, and their ratio (target: jaxreg >= 5x faster on a 2-core CPU);
* ``warp`` forward + gradient w.r.t. the field, also as a ratio to scipy's forward;
* LNCC (window 5) and SSIM (window 9) loss + gradient w.r.t. the warped image.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage as ndi

import jaxreg
from jaxreg import losses


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="160,192,224", help="volume shape D,H,W")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    rng = np.random.default_rng(0)
    image_np = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2)
    ddf_np = (rng.normal(size=(*shape, 3)) * 2).astype(np.float32)
    image, ddf = jnp.asarray(image_np), jnp.asarray(ddf_np)

    warp = jax.jit(jaxreg.warp)
    warp_grad = jax.jit(jax.value_and_grad(lambda d, i: jnp.mean(jaxreg.warp(i, d) ** 2)))
    lncc_grad = jax.jit(jax.value_and_grad(lambda w, f: losses.lncc(f, w, window=5)))
    ssim_grad = jax.jit(jax.value_and_grad(lambda w, f: losses.ssim(f, w, data_range=1.0)))
    moved = warp(image, ddf)

    coords = np.moveaxis(np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape],
                                              indexing="ij"), -1) + ddf_np, -1, 0)
    t_scipy = _median_time(lambda: ndi.map_coordinates(image_np, coords, order=1, mode="nearest"),
                           max(1, args.repeats // 2))
    t_warp = _median_time(lambda: warp(image, ddf), args.repeats)
    result = {
        "shape": list(shape),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "warp_forward_s": t_warp,
        "scipy_map_coordinates_s": t_scipy,
        "warp_speedup_vs_scipy": t_scipy / t_warp,
        "warp_forward_and_grad_s": _median_time(lambda: warp_grad(ddf, image), args.repeats),
        "lncc5_loss_and_grad_s": _median_time(lambda: lncc_grad(moved, image), args.repeats),
        "ssim9_loss_and_grad_s": _median_time(lambda: ssim_grad(moved, image), args.repeats),
        "target_warp_speedup": 5.0,
    }
    # scipy has no gradient: this ratio says how many scipy forward warps one jaxreg
    # forward+backward costs (< 1 means even the training step's warp beats scipy's forward).
    result["warp_forward_and_grad_over_scipy_forward"] = result["warp_forward_and_grad_s"] / t_scipy
    result["meets_target"] = result["warp_speedup_vs_scipy"] >= result["target_warp_speedup"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
