"""``jaxreg.register`` with its defaults (classical optimisation, ``jaxreg.optimize``) on real pairs.

    python benchmarks/register.py [--data ../shared/data] [--pairs oasis,promise12]

Prints one JSON object. For each pair and direction ("B->A" registers B onto A: A is
fixed): Dice before/after per label and their mean, folded voxels in % (Jacobian
determinant <= 0), wall time of a first call that includes compilation (the JAX caches are
cleared before it) and of a second call with the compiled programs, and the options used.

Pairs (skipped with a note when their files are absent):

* ``oasis_lapirn_pair``: two OASIS-1 brains 160x192x144, tissue labels 1, 2. The header of
  ``image_A..._seg.nii.gz`` has another affine than its image (zooms 0.981, 0.969 and an
  offset of 3, 6 voxels): as stored, the seg voxels do not overlay image A. Dice is given
  both ways: ``voxel_grid`` (segs as stored; the convention of the numbers in DESIGN.md
  §6, ANTs SyN 0.639 -> 0.650) and ``header_affine`` (seg A resampled through the two
  headers onto image A's grid, nearest neighbour; then seg A > 0 equals image A > 0 exactly).
* ``promise12_pair``: two prostate T2 MRI 32x128x128 with gland masks (needs ``h5py``,
  the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage as ndi

from jaxreg import io, metrics, register, spatial
from jaxreg.cli import parse_option
from jaxreg import optimize as optimize_module
from jaxreg.optimize import optimize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _contended() -> str:
    """Other busy processes, read from /proc (Linux), so that timings can be judged."""
    try:
        with open("/proc/loadavg") as f:
            return f"load average {f.read().split()[0]} on {os.cpu_count()} CPUs at start"
    except OSError:
        return "unknown"


def _dice(fixed_seg, moving_seg, ddf, labels) -> dict:
    warped = np.asarray(spatial.warp(jnp.asarray(moving_seg), ddf, order=0))
    before = np.asarray(metrics.dice(fixed_seg, moving_seg, labels=labels))
    after = np.asarray(metrics.dice(fixed_seg, warped, labels=labels))
    return {
        "before": {str(k): round(float(v), 4) for k, v in zip(labels, before)} | {"mean": round(float(np.mean(before)), 4)},
        "after": {str(k): round(float(v), 4) for k, v in zip(labels, after)} | {"mean": round(float(np.mean(after)), 4)},
    }


OPTIONS: dict = {}  # --option KEY=VALUE: non-default options of jaxreg.register


def _register(fixed, moving) -> tuple:
    jax.clear_caches()  # the first call pays compilation, as a user's first call does
    start = time.perf_counter()
    result = register(fixed, moving, **OPTIONS)
    jax.block_until_ready(result.warped)
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = register(fixed, moving, **OPTIONS)
    jax.block_until_ready(result.warped)
    second = time.perf_counter() - start
    return result, first, second


def _run(name, images, segs, labels, note_segs=None) -> dict:
    out = {}
    for fixed_key, moving_key in ((0, 1), (1, 0)):
        direction = f"{images[moving_key][0]}->{images[fixed_key][0]}"
        result, first, second = _register(images[fixed_key][1], images[moving_key][1])
        entry = {
            "shape": list(images[fixed_key][1].shape),
            "folding_percent": round(100 * float(metrics.folding_fraction(result.ddf)), 4),
            "time_first_s": round(first, 2),
            "time_second_s": round(second, 2),
            "steps": list(result.info["steps"]),
            "levels": list(result.info["levels"]),
            "loss_first_last": [round(float(result.info["losses"][0]), 4), round(float(result.info["losses"][-1]), 4)],
        }
        for variant, seg_pair in segs.items():
            entry[f"dice_{variant}" if len(segs) > 1 else "dice"] = _dice(
                seg_pair[fixed_key], seg_pair[moving_key], result.ddf, labels)
        out[direction] = entry
    if note_segs:
        out["note"] = note_segs
    return out


def _oasis(folder: str) -> dict:
    load = lambda name: io.load_nifti(os.path.join(folder, name))
    img = {k: load(f"image_{k}_160x192x144.nii.gz") for k in "AB"}
    seg = {k: load(f"image_{k}_160x192x144_seg.nii.gz") for k in "AB"}
    stored = [np.asarray(seg[k].array, np.int32) for k in "AB"]
    resampled = []
    for k in "AB":  # seg voxel = inv(seg affine) @ image affine @ image voxel
        m = np.linalg.inv(seg[k].affine) @ img[k].affine
        resampled.append(ndi.affine_transform(stored["AB".index(k)], m[:3, :3], m[:3, 3],
                                               output_shape=img[k].array.shape, order=0))
    images = [("A", np.asarray(img["A"].array, np.float32)), ("B", np.asarray(img["B"].array, np.float32))]
    return _run("oasis", images, {"voxel_grid": stored, "header_affine": resampled}, (1, 2),
                "dice_voxel_grid: segs as stored (DESIGN.md 6 convention); dice_header_affine: segs "
                "resampled through their NIfTI headers onto the image grids (seg A's header differs "
                "from image A's).")


def _promise(path: str) -> dict:
    import h5py  # optional: the `bench` extra

    with h5py.File(path, "r") as f:
        images = [(str(i), np.asarray(f[f"image{i}"][()], np.float32)) for i in (0, 1)]
        segs = [np.asarray(f[f"label{i}"][()], np.int32) for i in (0, 1)]
    return _run("promise12", images, {"gland": segs}, (1,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"),
                        help="folder holding oasis_lapirn_pair/ and promise12_pair/")
    parser.add_argument("--pairs", default="oasis,promise12", help="comma-separated subset")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a non-default option of jaxreg.register, e.g. 'levels=(8,4,2)' (repeatable)")
    args = parser.parse_args()
    wanted = set(args.pairs.split(","))
    OPTIONS.update(parse_option(text) for text in args.option)

    report = {
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "options": {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
                    for k, p in inspect.signature(optimize).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and k not in ("fixed_mask", "callback")} | OPTIONS,
        "exact_gradient_max_voxels": optimize_module.EXACT_GRADIENT_MAX_VOXELS,
        "contended": _contended(),
        "pairs": {},
        "skipped": {},
    }
    oasis_dir = os.path.join(args.data, "oasis_lapirn_pair")
    promise_file = os.path.join(args.data, "promise12_pair", "promise12_demo2.h5")
    if "oasis" in wanted:
        if os.path.isdir(oasis_dir):
            report["pairs"]["oasis"] = _oasis(oasis_dir)
        else:
            report["skipped"]["oasis"] = f"{oasis_dir} not found"
    if "promise12" in wanted:
        if not os.path.isfile(promise_file):
            report["skipped"]["promise12"] = f"{promise_file} not found"
        else:
            try:
                report["pairs"]["promise12"] = _promise(promise_file)
            except ImportError:
                report["skipped"]["promise12"] = "h5py not installed (pip install 'jaxreg[bench]')"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
