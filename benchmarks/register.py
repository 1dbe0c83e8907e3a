"""``jaxreg.register`` with its defaults (affine + SVF, ``jaxreg.optimize``) on real pairs, next to ANTs.

    python benchmarks/register.py [--data ../shared/data] [--cases aligned,rotated,anisotropic,thick,large,promise12,cine]
                                  [--ants] [--baseline] [--cli] [--option KEY=VALUE ...]

Prints one JSON object. For each case: Dice before/after per label and their mean, folded
voxels in % (Jacobian determinant <= 0), and the time of two calls in fresh JAX caches:
``cold`` (an empty persistent compilation cache: a first run ever) and ``warm`` (the
in-memory caches cleared, the compiled programs loaded from the persistent cache: any later
process), each as wall seconds and CPU seconds of this process (``time.process_time``, all
threads; on a shared machine the CPU seconds vary less than the wall seconds).

Cases (OASIS: two OASIS-1 brains 160x192x144, tissue labels 1, 2; seg A resampled through
the NIfTI headers onto image A's grid, nearest neighbour: seg A's header differs from image A's
(zooms 0.981/0.969, an offset of 3/6 voxels), so on the bare voxel grid 149 940 labelled voxels
lie outside the brain and through the headers none do; B is registered
onto A unless said otherwise):

* ``aligned``: the pair as shipped (already affinely aligned), both directions.
* ``rotated``: image and labels of B rotated 12° about array axis 0 through the centre and
  shifted 8 mm (diagonally in the plane of axes 0, 1), scipy ``affine_transform`` (linear /
  nearest, zeros outside).
* ``anisotropic``: every 5th slice along axis 2 (160x192x29), ``spacing=(1, 1, 5)``.
* ``thick``: every 10th slice along axis 2 (160x192x15), ``spacing=(1, 1, 10)``: the
  geometry of cine cardiac MRI (10 mm slices).
* ``large``: both images and segs zero-padded to 240x240x155 (the size of brain-tumour
  scans).
* ``two_grids``: B stored on another grid, as scans of one subject from two sessions are: voxels of
  1.25 × 1.1 × 1.2 mm (``--moving-spacing``), the field of view cut to the head plus 6 mm, its
  corner moved by (−6.4, −9.3, −4.6) mm
  (resampled with scipy, labels nearest), written as NIfTI files with their affines beside A;
  ``jaxreg.register`` on the two paths (each image with its own header) and ANTs on the same
  files. Compare with ``aligned`` B → A, the same pair on one grid.
* ``two_fields``: B not resampled (so no interpolation blurs the copy), zero-padded by 10 voxels on
  every side and its origin moved by (−10.4, −10.3, −10.6) mm: another grid and a wider field of
  view, registered from the files as ``two_grids``.
* ``promise12``: two prostate T2 MRI 32x128x128 with gland masks, both directions (needs
  ``h5py``, the ``bench`` extra).
* ``cine``: a thin-slice cardiac-like stack, 256x216x10 voxels at 1.41x1.41x9.87 mm: the
  library's synthetic cardiac pair (``jaxreg.data.synthetic_pair(anatomy="cardiac")``,
  256x216x70 at 1.41 mm, labels LV, myocardium, RV) with every 7th slice kept. Needs no data.

``--cli`` also times each case as a user waits for it: ``jaxreg register`` on NIfTI files
(spacing in the header, the fixed and moving labels given, progress bar on) in a fresh
process, once into an empty compilation cache (a first run ever) and once more (any later
run), wall seconds from command to files, with the Dice, folding and ``timings`` of its
``info.json``.

``--ants`` adds ANTs ``SyN`` (antspyx, the ``bench`` extra: rigid-free affine + SyN with its
defaults, the same spacing) on the same arrays; ``--baseline`` adds ``register(...,
affine=False)`` without ``spacing`` (the registration before the affine stage and the
spacing existed, up to the speed changes).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from jaxreg import images, io, metrics, register, spatial
from jaxreg import optimize as optimize_module
from jaxreg import optimize_affine as affine_module
from jaxreg.cli import parse_option
from jaxreg.optimize import optimize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("aligned", "rotated", "anisotropic", "thick", "large", "two_grids", "two_fields", "promise12", "cine")
OPTIONS: dict = {}  # --option KEY=VALUE: non-default options of jaxreg.register
CLI = False  # --cli: also time the command in fresh processes


def _load_average() -> str:
    """Other busy processes, read from /proc (Linux), so that timings can be judged."""
    try:
        with open("/proc/loadavg") as f:
            return f"{f.read().split()[0]} on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


def _dice(fixed_seg, warped_seg, moving_seg, labels) -> dict:
    before = np.asarray(metrics.dice(fixed_seg, moving_seg, labels=labels))
    after = np.asarray(metrics.dice(fixed_seg, warped_seg, labels=labels))
    return {
        "before": {str(k): round(float(v), 4) for k, v in zip(labels, before)} | {"mean": round(float(np.mean(before)), 4)},
        "after": {str(k): round(float(v), 4) for k, v in zip(labels, after)} | {"mean": round(float(np.mean(after)), 4)},
    }


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                 "load": _load_average()}


def _use_cache(path) -> None:
    """Points JAX's persistent compilation cache at ``path`` (as register's default does) and empties
    the in-memory caches."""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    try:  # JAX opens the cache directory once; make it open the new one
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):
        pass
    jax.clear_caches()


def _jaxreg(fixed, moving, fixed_seg, moving_seg, labels, spacing, **options) -> dict:
    run = lambda: jax.block_until_ready(register(fixed, moving, moving_labels=moving_seg, spacing=spacing,
                                                 **(OPTIONS | options)))
    with tempfile.TemporaryDirectory(prefix="jaxreg-xla-") as cache:
        _use_cache(cache)  # empty: a first run ever
        _, cold = _timed(run)
        jax.clear_caches()  # as in a new process: the programs come from the persistent cache
        result, warm = _timed(run)
        _use_cache(None)
    info = result.info
    return {
        "dice": _dice(fixed_seg, np.asarray(result.warped_labels), moving_seg, labels),
        "folding_percent": round(100 * float(metrics.folding_fraction(result.ddf)), 4),
        "time_cold": cold,
        "time_warm": warm,
        "affine": info.get("affine"),
        "affine_levels": list(info.get("affine_levels", [])),
        "levels": list(info["levels"]),
        "steps": list(info["steps"]),
        "matrix": np.round(result.matrix, 4).tolist(),
    }


def _ants(fixed, moving, fixed_seg, moving_seg, labels, spacing) -> dict:
    import ants  # optional: the `bench` extra

    spacing = tuple(float(s) for s in (spacing or (1.0,) * fixed.ndim))
    f = ants.from_numpy(np.asarray(fixed, np.float32), spacing=spacing)
    m = ants.from_numpy(np.asarray(moving, np.float32), spacing=spacing)
    result, timing = _timed(lambda: ants.registration(f, m, type_of_transform="SyN"))
    seg = ants.from_numpy(np.asarray(moving_seg, np.float32), spacing=spacing)
    warped = ants.apply_transforms(f, seg, result["fwdtransforms"], interpolator="nearestNeighbor").numpy()
    return {"dice": _dice(fixed_seg, np.rint(warped).astype(np.int32), moving_seg, labels), "time": timing,
            "type_of_transform": "SyN", "antspyx": getattr(ants, "__version__", "?")}


def _cli(fixed, moving, fixed_seg, moving_seg, spacing) -> dict:
    """``jaxreg register`` on NIfTI files in a fresh process: into an empty cache, then once more."""
    import nibabel as nib

    affine = np.diag(list(spacing or (1.0,) * fixed.ndim) + [1.0])
    out = {}
    with tempfile.TemporaryDirectory(prefix="jaxreg-cli-") as tmp:
        files = {}
        for name, array in (("fixed", fixed), ("moving", moving), ("fixed-labels", fixed_seg),
                            ("moving-labels", moving_seg)):
            files[name] = os.path.join(tmp, f"{name}.nii.gz")
            dtype = np.float32 if "labels" not in name else np.int16
            nib.save(nib.Nifti1Image(np.asarray(array, dtype), affine), files[name])
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
        env["JAXREG_COMPILATION_CACHE"] = os.path.join(tmp, "xla")  # empty: a first run ever
        for run in ("cold", "warm"):
            folder = os.path.join(tmp, run)
            command = [sys.executable, "-m", "jaxreg.cli", "register", "--out", folder]
            for name, path in files.items():
                command += [f"--{name}", path]
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                raise RuntimeError(f"jaxreg register failed: {done.stderr[-2000:]}")
            with open(os.path.join(folder, "info.json")) as f:
                info = json.load(f)
            out[run] = {"wall_s": round(wall, 1), "load": _load_average(), "dice": info.get("dice"),
                        "folding_percent": info.get("folding_percent"),
                        "timings": {k: round(v, 2) for k, v in (info.get("timings") or {}).items()}}
    return out


def _case(fixed, moving, fixed_seg, moving_seg, labels, *, spacing=None, ants=False, baseline=False) -> dict:
    out = {"shape": list(fixed.shape), "spacing": list(spacing) if spacing else None,
           "jaxreg": _jaxreg(fixed, moving, fixed_seg, moving_seg, labels, spacing)}
    if CLI:
        out["cli"] = _cli(fixed, moving, fixed_seg, moving_seg, spacing)
    if baseline:
        out["jaxreg_no_affine_no_spacing"] = _jaxreg(fixed, moving, fixed_seg, moving_seg, labels, None, affine=False)
    if ants:
        try:
            out["ants"] = _ants(fixed, moving, fixed_seg, moving_seg, labels, spacing)
        except ImportError:
            out["ants"] = "antspyx not installed (pip install 'jaxreg[bench]')"
    return out


def _oasis(folder: str) -> dict:
    """Images A, B and their segs, seg A resampled through the NIfTI headers onto image A's grid."""
    load = lambda name: io.load_nifti(os.path.join(folder, name))
    out = {}
    for k in "AB":
        image, seg = load(f"image_{k}_160x192x144.nii.gz"), load(f"image_{k}_160x192x144_seg.nii.gz")
        m = np.linalg.inv(seg.affine) @ image.affine  # seg voxel = inv(seg affine) @ image affine @ image voxel
        labels = ndi.affine_transform(np.asarray(seg.array, np.int32), m[:3, :3], m[:3, 3],
                                      output_shape=image.array.shape, order=0)
        out[k] = (np.asarray(image.array, np.float32), labels)
    return out


def rotate_and_shift(image, labels, *, degrees=12.0, axis=0, shift_mm=8.0):
    """``image`` and ``labels`` rotated about array ``axis`` through the centre and shifted (1 mm voxels)."""
    centre = (np.array(image.shape, float) - 1) / 2
    vector = np.zeros(3)
    vector[axis] = np.deg2rad(degrees)
    rotation = Rotation.from_rotvec(vector).as_matrix()
    shift = np.array([shift_mm, shift_mm, 0.0]) / np.sqrt(2)  # 8 mm along the diagonal of axes 0, 1
    offset = centre - rotation @ centre + shift  # output voxel y reads input voxel R (y - c) + c + shift
    return (ndi.affine_transform(image, rotation, offset, order=1).astype(np.float32),
            ndi.affine_transform(labels, rotation, offset, order=0).astype(np.int32))


def _oasis_cases(folder: str, wanted, *, ants: bool, baseline: bool, moving_spacing=(1.25, 1.1, 1.2)) -> dict:
    data = _oasis(folder)
    (a, seg_a), (b, seg_b) = data["A"], data["B"]
    labels = (1, 2)
    out = {}
    if "aligned" in wanted:
        out["aligned"] = {"B->A": _case(a, b, seg_a, seg_b, labels, ants=ants),
                          "A->B": _case(b, a, seg_b, seg_a, labels, ants=ants)}
    if "rotated" in wanted:
        moved, moved_seg = rotate_and_shift(b, seg_b)
        out["rotated"] = _case(a, moved, seg_a, moved_seg, labels, ants=ants)
    for name, step in (("anisotropic", 5), ("thick", 10)):
        if name in wanted:
            cut = lambda x: np.ascontiguousarray(x[:, :, ::step])
            out[name] = _case(cut(a), cut(b), cut(seg_a), cut(seg_b), labels, spacing=(1.0, 1.0, float(step)),
                              ants=ants, baseline=baseline)
    if "two_grids" in wanted:
        out["two_grids"] = _two_grids(a, b, seg_a, seg_b, labels, ants=ants, spacing=moving_spacing)
    if "two_fields" in wanted:
        out["two_fields"] = _two_fields(a, b, seg_a, seg_b, labels, ants=ants)
    if "large" in wanted:
        pad = lambda x: np.pad(x, [(40, 40), (24, 24), (5, 6)])
        out["large"] = _case(pad(a), pad(b), pad(seg_a), pad(seg_b), labels, ants=ants)
    return out


def _two_grids(a, b, seg_a, seg_b, labels, *, ants: bool, spacing=(1.25, 1.1, 1.2)) -> dict:
    """B on its own grid (module docstring), registered from NIfTI files onto A."""
    spacing = np.asarray(spacing, np.float64)
    inside = np.argwhere(b > 0.05 * b.max())
    lo, hi = inside.min(0) - 6.0, inside.max(0) + 6.0  # the head plus 6 mm, in A's (1 mm) voxels
    origin = lo - np.array([6.4, 9.3, 4.6])  # the crop's corner in mm, off A's voxel grid
    shape = tuple(int(n) for n in np.ceil((hi - origin) / spacing) + 1)
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = origin
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")).reshape(3, -1)
    coords = affine[:3, :3] @ grid + affine[:3, 3:]  # moving voxel -> mm = A's voxel (A's grid is 1 mm at 0)
    moving = ndi.map_coordinates(b, coords, order=1, mode="constant").reshape(shape).astype(np.float32)
    moving_seg = ndi.map_coordinates(seg_b, coords, order=0, mode="constant").reshape(shape).astype(np.int16)
    out = {"moving_shape": list(shape), "moving_spacing": spacing.tolist(), "moving_origin_mm": origin.tolist()}
    return out | _files_case(a, seg_a, moving, moving_seg, affine, labels, ants=ants)


def _two_fields(a, b, seg_a, seg_b, labels, *, ants: bool) -> dict:
    """B as it is (no resampling), zero-padded by 10 voxels on every side and its header's origin moved
    by (−10.4, −10.3, −10.6) mm: another grid and a wider field of view, the content 0.3-0.6 mm off A's."""
    affine = np.eye(4)
    affine[:3, 3] = [-10.4, -10.3, -10.6]
    out = {"moving_shape": [s + 20 for s in b.shape], "moving_origin_mm": affine[:3, 3].tolist()}
    return out | _files_case(a, seg_a, np.pad(b, 10), np.pad(seg_b, 10).astype(np.int16), affine, labels, ants=ants)


def _files_case(a, seg_a, moving, moving_seg, affine, labels, *, ants: bool) -> dict:
    """A (1 mm, at the origin) and a moving image with its ``affine``, written as NIfTI files and registered
    from them by ``jaxreg.register`` (each image with its own header) and by ANTs."""
    import nibabel as nib

    out = {}
    with tempfile.TemporaryDirectory(prefix="jaxreg-two-grids-") as tmp:
        files = {name: os.path.join(tmp, f"{name}.nii.gz") for name in ("fixed", "moving", "moving_seg")}
        nib.save(nib.Nifti1Image(a, np.eye(4)), files["fixed"])
        nib.save(nib.Nifti1Image(moving, affine), files["moving"])
        nib.save(nib.Nifti1Image(moving_seg, affine), files["moving_seg"])
        result, timing = _timed(lambda: register(files["fixed"], files["moving"], moving_labels=files["moving_seg"],
                                                 **OPTIONS))
        before = images.resample_to(moving_seg, affine, a.shape, np.eye(4), order=0).astype(np.int32)  # headers
        out["jaxreg"] = {"dice": _dice(seg_a, np.asarray(result.warped_labels), before, labels), "time": timing,
                         "folding_percent": round(100 * float(metrics.folding_fraction(result.ddf)), 4),
                         "timings": {k: round(v, 2) for k, v in result.info["timings"].items()}}
        if ants:
            try:
                import ants as antspy

                f, m = antspy.image_read(files["fixed"]), antspy.image_read(files["moving"])
                reg, timing = _timed(lambda: antspy.registration(f, m, type_of_transform="SyN"))
                warped = antspy.apply_transforms(f, antspy.image_read(files["moving_seg"]), reg["fwdtransforms"],
                                                 interpolator="nearestNeighbor").numpy()
                after = np.asarray(metrics.dice(seg_a, np.rint(warped).astype(np.int32), labels=labels))
                out["ants"] = {"dice_after": {str(k): round(float(v), 4) for k, v in zip(labels, after)}
                               | {"mean": round(float(np.mean(after)), 4)}, "time": timing}
            except ImportError:
                out["ants"] = "antspyx not installed (pip install 'jaxreg[bench]')"
    return out


def _promise(path: str, *, ants: bool) -> dict:
    import h5py  # optional: the `bench` extra

    with h5py.File(path, "r") as f:
        images = [np.asarray(f[f"image{i}"][()], np.float32) for i in (0, 1)]
        segs = [np.asarray(f[f"label{i}"][()], np.int32) for i in (0, 1)]
    return {"1->0": _case(images[0], images[1], segs[0], segs[1], (1,), ants=ants),
            "0->1": _case(images[1], images[0], segs[1], segs[0], (1,), ants=ants)}


def _cine(*, ants: bool) -> dict:
    """The synthetic cardiac-like thin-slice stack (module docstring)."""
    from jaxreg.data import synthetic_pair

    pair = synthetic_pair(jax.random.key(0), (256, 216, 70), anatomy="cardiac")
    cut = lambda x: np.ascontiguousarray(np.asarray(x)[:, :, ::7])  # noqa: E731
    return _case(cut(pair["fixed"]), cut(pair["moving"]), cut(pair["fixed_labels"]), cut(pair["moving_labels"]),
                 (1, 2, 3), spacing=(1.41, 1.41, 9.87), ants=ants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"),
                        help="folder holding oasis_lapirn_pair/ and promise12_pair/")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--ants", action="store_true", help="also run ANTs SyN (antspyx) on every case")
    parser.add_argument("--moving-spacing", default="1.25,1.1,1.2",
                        help="two_grids: the voxel size (mm) of the moving copy's grid")
    parser.add_argument("--baseline", action="store_true",
                        help="also run register(affine=False) without spacing on the anisotropic cases")
    parser.add_argument("--cli", action="store_true",
                        help="also time `jaxreg register` in fresh processes (empty cache, then warm)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a non-default option of jaxreg.register, e.g. 'levels=(8,4,2)' (repeatable)")
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    if wanted - set(CASES):
        parser.error(f"unknown --cases {sorted(wanted - set(CASES))}; choose from {CASES}")
    OPTIONS.update(parse_option(text) for text in args.option)
    global CLI
    CLI = args.cli

    report = {
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "options": {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
                    for k, p in inspect.signature(optimize).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and k not in ("fixed_mask", "callback")} | OPTIONS,
        "exact_gradient_max_voxels": optimize_module.EXACT_GRADIENT_MAX_VOXELS,
        "affine_steps_per_level": affine_module.STEPS_PER_LEVEL,
        "load_at_start": _load_average(),
        "cases": {},
        "skipped": {},
    }
    oasis_dir = os.path.join(args.data, "oasis_lapirn_pair")
    promise_file = os.path.join(args.data, "promise12_pair", "promise12_demo2.h5")
    oasis_wanted = wanted - {"promise12", "cine"}
    if "cine" in wanted:
        report["cases"]["cine"] = _cine(ants=args.ants)
    if oasis_wanted:
        if os.path.isdir(oasis_dir):
            report["cases"].update(_oasis_cases(oasis_dir, oasis_wanted, ants=args.ants, baseline=args.baseline,
                                                moving_spacing=tuple(float(v) for v in args.moving_spacing.split(","))))
        else:
            report["skipped"]["oasis"] = f"{oasis_dir} not found"
    if "promise12" in wanted:
        if not os.path.isfile(promise_file):
            report["skipped"]["promise12"] = f"{promise_file} not found"
        else:
            try:
                report["cases"]["promise12"] = _promise(promise_file, ants=args.ants)
            except ImportError:
                report["skipped"]["promise12"] = "h5py not installed (pip install 'jaxreg[bench]')"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
