"""The ``jaxreg`` command line: ``jaxreg register --fixed F --moving M --out DIR``.

    jaxreg register --fixed F.nii.gz --moving M.nii.gz [--model W] [--moving-labels L.nii.gz]
        [--fixed-mask K.nii.gz] [--option levels=(4,2,1) --option similarity=mi ...] --out DIR

Reads NIfTI files (headers checked before reading), resamples the moving image (and
labels) onto the fixed image's grid when the two do not share shape and affine (and says
so), registers with :func:`jaxreg.register` and writes into ``DIR``:

* ``warped.nii.gz``: the moving image on the fixed grid (the fixed affine);
* ``disp.nii.gz``: the displacement in voxels, Learn2Reg format (``(D, H, W, 3)``, pull);
* ``warped_labels.nii.gz`` (with ``--moving-labels``);
* ``overview.png``: slices of fixed, moving, warped, differences, grid and Jacobian map;
* ``info.json``: method, options, steps, time, folding %.

Everything is first written to a temporary folder beside ``DIR`` and moved in only when
complete, so a failure leaves ``DIR`` as it was. Errors print one ``error: ...`` line and
exit with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["main", "parse_option", "resample_to"]


def parse_option(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` → ``(key, value)``: a Python literal (``(4, 2)``, ``0.5``) or else the bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--option must be KEY=VALUE (e.g. similarity=mi); got {text!r}.")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: a string option such as similarity=mi


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxreg", description="jaxreg: deformable image registration in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="register a moving NIfTI image onto a fixed one",
                              description=__doc__.split("\n\n")[2])
    reg.add_argument("--fixed", required=True, help="fixed image (.nii or .nii.gz): the target grid")
    reg.add_argument("--moving", required=True, help="moving image (.nii or .nii.gz)")
    reg.add_argument("--out", required=True, help="output folder (created; existing outputs are replaced)")
    reg.add_argument("--model", default=None, help="a train.py workdir (default: classical optimisation)")
    reg.add_argument("--moving-labels", default=None, help="label map of the moving image, warped alongside")
    reg.add_argument("--fixed-mask", default=None, help="mask on the fixed grid: where the similarity counts")
    reg.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                     help="an option of jaxreg.optimize.optimize or of the model (repeatable)")
    reg.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _load(path: str, name: str):
    from jaxreg import io

    if not os.path.exists(path):
        raise FileNotFoundError(f"--{name}: no such file {path!r}.")
    volume = io.load_nifti(path, dtype=np.float32)
    array = volume.array
    while array.ndim > 2 and array.shape[-1] == 1:  # 2-D images stored as (H, W, 1)
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"--{name}: {path!r} must hold a 2-D or 3-D image; got shape {volume.array.shape}.")
    return array, volume.affine


def resample_to(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray, *,
                order: int = 1) -> np.ndarray:
    """``array`` (with voxel-to-world ``affine``) sampled on the grid of ``shape`` and ``target_affine``.

    Linear (``order=1``) or nearest-neighbour (``order=0``, labels) interpolation; zero
    outside ``array``. 2-D images use the in-plane part of the affines.
    """
    from scipy import ndimage

    ndim = len(shape)
    keep = list(range(ndim)) + [3]
    a = np.asarray(affine, np.float64)[np.ix_(keep, keep)]
    b = np.asarray(target_affine, np.float64)[np.ix_(keep, keep)]
    to_source = np.linalg.solve(a, b)  # target voxel -> world -> source voxel
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0).reshape(ndim, -1)
    coords = to_source[:ndim, :ndim] @ grid + to_source[:ndim, ndim:]
    out = ndimage.map_coordinates(np.asarray(array, np.float32), coords, order=order, mode="constant", cval=0.0)
    return out.reshape(shape)


def _same_space(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-4)


def _load_companion(path: str | None, name: str, image: np.ndarray, affine: np.ndarray, what: str):
    """A label map or mask that must lie on ``image``'s grid (``None`` without ``path``)."""
    if not path:
        return None
    array, array_affine = _load(path, name)
    if not _same_space(array.shape, array_affine, image.shape, affine):
        raise ValueError(f"--{name} must share the {what}'s shape and affine; got {array.shape} vs {image.shape}.")
    return array


def register_files(args: argparse.Namespace) -> dict:
    """What ``jaxreg register`` does; returns ``info.json``'s content."""
    import jax
    from tqdm.auto import tqdm

    from jaxreg import io, metrics, register
    from jaxreg.evaluation import figures

    fixed, fixed_affine = _load(args.fixed, "fixed")
    moving, moving_affine = _load(args.moving, "moving")
    labels = _load_companion(args.moving_labels, "moving-labels", moving, moving_affine, "moving image")
    mask = _load_companion(args.fixed_mask, "fixed-mask", fixed, fixed_affine, "fixed image")
    if fixed.ndim != moving.ndim:
        raise ValueError(f"--fixed and --moving must both be 2-D or both 3-D; got shapes {fixed.shape} and {moving.shape}.")
    resampled = not _same_space(fixed.shape, fixed_affine, moving.shape, moving_affine)
    if resampled:
        print(f"note: --moving {moving.shape} is not on the grid of --fixed {fixed.shape} (shape or affine differ): "
              "resampling it onto the fixed grid first.", file=sys.stderr)
        moving = resample_to(moving, moving_affine, fixed.shape, fixed_affine)
        if labels is not None:
            labels = resample_to(labels, moving_affine, fixed.shape, fixed_affine, order=0)
    if labels is not None:
        labels = np.rint(labels).astype(np.int32)

    options = dict(args.option)
    bar = None
    callback = None
    if args.model is None and not args.no_progress:
        from jaxreg.optimize import pyramid

        steps = pyramid(fixed.shape, **{k: options[k] for k in ("levels", "steps") if k in options})[1]
        bar = tqdm(desc="register", unit="step", file=sys.stderr, total=sum(steps))

        done = {}  # level -> last step reported (the callback comes every few steps)

        def callback(level, step, loss):
            level, step = int(level), int(step)
            bar.update(max(step - done.get(level, -1), 0))
            done[level] = step
            bar.set_postfix(level=level, loss=f"{float(loss):.4f}")

    try:
        result = register(fixed, moving, model=args.model, fixed_mask=mask, moving_labels=labels, callback=callback,
                          **options)
    finally:
        if bar is not None:
            bar.close()
    ddf = np.asarray(result.ddf)
    folding = float(metrics.folding_fraction(ddf)) * 100
    info = {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array)) else v) for k, v in result.info.items()}
    info.update(fixed=os.path.abspath(args.fixed), moving=os.path.abspath(args.moving), resampled=resampled,
                folding_percent=folding, shape=list(fixed.shape))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        io.save_nifti(staging / "warped.nii.gz", np.asarray(result.warped), fixed_affine)
        if ddf.shape[-1] == 3:
            io.save_disp(staging / "disp.nii.gz", ddf, affine=fixed_affine)
        else:
            io.save_nifti(staging / "disp.nii.gz", ddf.astype(np.float32), fixed_affine)
        if result.warped_labels is not None:
            io.save_nifti(staging / "warped_labels.nii.gz", np.asarray(result.warped_labels).astype(np.int32),
                          fixed_affine)
        figures.pair_figure(staging / "overview.png", fixed, moving, np.asarray(result.warped), ddf,
                            moving_labels=labels, warped_labels=None if labels is None else result.warped_labels,
                            title=f"{info['method']}: {info['time_s']:.1f} s, folding {folding:.3f} %")
        (staging / "info.json").write_text(json.dumps(info, indent=2, default=str))
        out.mkdir(exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxreg`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        info = register_files(args)
    except (ValueError, OSError, KeyError, TypeError) as err:
        if os.environ.get("JAXREG_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"registered in {info['time_s']:.1f} s (folding {info['folding_percent']:.3f} %): outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
