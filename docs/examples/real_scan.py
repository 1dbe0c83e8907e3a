"""Real scans from the command line: affine + deformable, inverse, apply, export to ANTs.

    python docs/examples/real_scan.py [--data DIR] [--work DIR] [--figure docs/figures/real_scan.png]

Builds a realistic pair from the two OASIS brains of the project's ``../shared/data`` (not
shipped): the fixed scan is brain B (1 mm); the moving scan is brain A with 2 mm axial
slices, lying 8° rotated and 6 mm shifted in the scanner (its header says where, as a
scanner would). Then runs what a user runs::

    jaxreg register --fixed fixed.nii.gz --moving moving.nii.gz \\
        --moving-labels moving_seg.nii.gz --fixed-labels fixed_seg.nii.gz --out OUT
    jaxreg apply --transform OUT --image moving_seg.nii.gz --labels --out seg_on_fixed.nii.gz
    jaxreg apply --transform OUT --image fixed.nii.gz --inverse --outside zero --out fixed_on_moving.nii.gz

and ``antsApplyTransforms -d 3 -r fixed.nii.gz -i moving.nii.gz -t OUT/itk/warp.nii.gz
-t OUT/itk/affine.mat`` (through antspyx, if installed), and draws the figure. Prints one
JSON line: Dice before/after, seconds, max |jaxreg − ANTs| of the warped image. The figure's
title gives ``register_time_s``: the seconds ``jaxreg register`` reports for the registration
(affine and deformable stages, compilation included: the run starts with an empty compilation
cache, ``WORK/xla_cache``); ``register_s`` is the whole command (start-up and files too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from jaxreg import cli, io  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "oasis_lapirn_pair"


def misplaced(angle_deg: float, shift_mm) -> np.ndarray:
    """A rigid world motion: rotation about the S axis, then a shift (mm)."""
    a = np.deg2rad(angle_deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = shift_mm
    return m


def make_pair(data: Path, work: Path) -> dict[str, str]:
    """fixed = B; moving = A with 2 mm slices, placed elsewhere in the scanner; their label maps."""
    image = {k: io.load_nifti(data / f"image_{k}_160x192x144.nii.gz", dtype=np.float32) for k in "AB"}
    seg = {k: io.load_nifti(data / f"image_{k}_160x192x144_seg.nii.gz", dtype=np.float32) for k in "AB"}
    # seg A's header differs from image A's: put it on image A's grid through the headers
    seg_a = cli.resample_to(seg["A"].array, seg["A"].affine, image["A"].array.shape, image["A"].affine, order=0)
    thick = ndimage.gaussian_filter1d(image["A"].array, 0.85, axis=2)[:, :, ::2]  # 2 mm slices
    moving_affine = misplaced(8.0, [6.0, -4.0, 3.0]) @ image["A"].affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    paths = {"fixed": work / "fixed.nii.gz", "fixed_seg": work / "fixed_seg.nii.gz",
             "moving": work / "moving.nii.gz", "moving_seg": work / "moving_seg.nii.gz"}
    io.save_nifti(paths["fixed"], image["B"].array, image["B"].affine)
    io.save_nifti(paths["fixed_seg"], np.rint(seg["B"].array).astype(np.int16), seg["B"].affine)
    io.save_nifti(paths["moving"], thick, moving_affine)
    io.save_nifti(paths["moving_seg"], np.rint(seg_a[:, :, ::2]).astype(np.int16), moving_affine)
    return {k: str(v) for k, v in paths.items()}


def jaxreg_command(*args: str, cache: Path) -> float:
    """Runs ``jaxreg ARGS`` (the installed command's module) and returns its wall seconds.

    ``cache`` is the process's compilation cache (``JAXREG_COMPILATION_CACHE``): a new folder
    makes the first ``register`` compile everything, so its time does not depend on what
    earlier runs left in ``~/.cache``.
    """
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxreg.cli", *args], check=True,
                   env={**os.environ, "JAXREG_COMPILATION_CACHE": str(cache)})
    return time.perf_counter() - start


#: The two fixed-label contours: (level, colour, legend text). Labels: 1 = CSF, 2 = grey + white matter.
CONTOURS = ((0.5, "tab:orange", "fixed labels: edge of labels 1 and 2 together"),
            (1.5, "tab:cyan", "fixed labels: edge of label 2 (grey + white matter)"))


def draw(path: Path, paths: dict, out: Path, ants_warped, report: dict) -> None:
    """The figure: 2 rows × 3 panels, axial slices; the fixed labels' contours over the first three."""
    from matplotlib.lines import Line2D  # noqa: PLC0415

    load = lambda p: nib.load(str(p)).get_fdata()  # noqa: E731
    fixed, fixed_seg = load(paths["fixed"]), load(paths["fixed_seg"])
    moving_nifti = nib.load(paths["moving"])
    fixed_affine = nib.load(paths["fixed"]).affine
    before = cli.resample_to(moving_nifti.get_fdata(), moving_nifti.affine, fixed.shape, fixed_affine)
    warped = load(out / "warped.nii.gz")
    moving, on_moving = moving_nifti.get_fdata(), load(Path(paths["fixed"]).parent / "fixed_on_moving.nii.gz")
    z, zm = fixed.shape[2] // 2, moving.shape[2] // 2
    seg = fixed_seg[:, :, z]
    panels = [(fixed[:, :, z], seg, "fixed (brain B, 1 mm)"),
              (before[:, :, z], seg, f"moving through the headers\nDice {report['dice_before']:.3f}"),
              (warped[:, :, z], seg, f"jaxreg register: warped\nDice {report['dice_after']:.3f}")]
    if ants_warped is not None:
        panels.append((ants_warped[:, :, z], None,
                       f"antsApplyTransforms with out/itk/\nmax |ANTs − jaxreg| {report['max_abs_ants_minus_jaxreg']:.1e}"))
    panels += [(moving[:, :, zm], None, "moving as stored\n(brain A, 2 mm slices)"),
               (on_moving[:, :, zm], None, "fixed on the moving grid\n(jaxreg apply --inverse)")]
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(10, 4.3 * rows + 1.3), layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, contours, title) in zip(axes.ravel(), panels):
        ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=np.percentile(fixed, 99.5))
        if contours is not None:
            ax.contour(np.rot90(contours), levels=[c[0] for c in CONTOURS], colors=[c[1] for c in CONTOURS],
                       linewidths=0.9)
        ax.set_title(title, fontsize=13)
    fig.legend(handles=[Line2D([], [], color=color, linewidth=2, label=text) for _, color, text in CONTOURS],
               loc="outside lower center", ncols=2, fontsize=12, frameon=False)
    fig.suptitle(f"OASIS A → B, affine + deformable: jaxreg register took {report['register_time_s']:.0f} s\n"
                 f"({report['cpu_cores']}-core CPU, compilation included; axial slices)", fontsize=14)
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of the OASIS pair (image_{A,B}_...)")
    parser.add_argument("--work", default="real_scan", help="a new folder for the inputs and outputs")
    parser.add_argument("--figure", default="real_scan.png", help="the PNG to write")
    parser.add_argument("--option", action="append", default=[], help="--option for jaxreg register (repeatable)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        parser.error(f"no folder {args.data!r} (the OASIS pair lives in ../shared/data/oasis_lapirn_pair)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    paths = make_pair(Path(args.data), work)
    out = work / "out"
    options = [a for o in args.option for a in ("--option", o)]
    cache = work / "xla_cache"
    register_s = jaxreg_command("register", "--fixed", paths["fixed"], "--moving", paths["moving"],
                                "--moving-labels", paths["moving_seg"], "--fixed-labels", paths["fixed_seg"],
                                "--out", str(out), "--no-progress", *options, cache=cache)
    apply_s = jaxreg_command("apply", "--transform", str(out), "--image", paths["moving_seg"], "--labels",
                             "--out", str(work / "seg_on_fixed.nii.gz"), cache=cache)
    jaxreg_command("apply", "--transform", str(out), "--image", paths["fixed"], "--inverse", "--outside", "zero",
                   "--out", str(work / "fixed_on_moving.nii.gz"), cache=cache)
    info = json.loads((out / "info.json").read_text())
    report = {"register_s": register_s, "register_time_s": info["time_s"], "cpu_cores": os.cpu_count(), "apply_s": apply_s, "dice_before": info["dice"]["mean_before"],
              "dice_after": info["dice"]["mean_after"], "folding_percent": info["folding_percent"],
              "matrix": info["matrix"]}
    ants_warped = None
    try:
        import ants
    except ImportError:
        report["ants"] = "antspyx not installed"
    else:
        ants_warped = ants.apply_transforms(ants.image_read(paths["fixed"]), ants.image_read(paths["moving"]),
                                            transformlist=[str(out / "itk" / "warp.nii.gz"),
                                                           str(out / "itk" / "affine.mat")]).numpy()
        warped = nib.load(str(out / "warped.nii.gz")).get_fdata()
        disp = nib.load(str(out / "disp.nii.gz")).get_fdata()  # pull, in the moving file's voxels
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in warped.shape], indexing="ij"), -1)
        points, shape = grid + disp, nib.load(paths["moving"]).shape
        inside = np.all((points >= 0) & (points <= np.array(shape) - 1), axis=-1)  # ANTs: 0 outside the scan
        report["max_abs_ants_minus_jaxreg"] = float(np.abs(ants_warped - warped)[inside].max())
        report["image_max"] = float(warped.max())
    draw(Path(args.figure), paths, out, ants_warped, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
