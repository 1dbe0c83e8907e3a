"""The ``jaxreg`` command line: ``jaxreg register``, ``jaxreg apply`` and ``jaxreg example``.

    jaxreg register --fixed F.nii.gz --moving M.nii.gz --out DIR [--model W]
        [--moving-labels L.nii.gz [--fixed-labels K.nii.gz]] [--fixed-mask K.nii.gz]
        [--spacing 1,1,2.5] [--option levels=(4,2,1) --option similarity=mi ...]
    jaxreg apply --transform DIR --image X.nii.gz [--labels [linear]] [--inverse] [--outside zero|edge] --out Y.nii.gz
    jaxreg example --out DIR [--seed N] [--shape X,Y,Z]

``register`` reads NIfTI files (headers checked before reading; geometry as ITK reads it),
registers with :func:`jaxreg.register` (voxel spacing from the fixed header, or ``--spacing``;
when the two images do not share shape and affine, in world coordinates with each image on
its own grid, as :mod:`jaxreg.images` does, and says so) and writes into ``DIR``, which must
not exist or be empty:

* ``warped.nii.gz``: the moving image on the fixed grid (the fixed affine);
* ``disp.nii.gz``: the whole transform as one displacement in voxels (pull:
  ``warped(x) = moving(x + disp(x))``, the moving file's voxels), Learn2Reg format when
  the grids agree;
* ``inverse_disp.nii.gz``: the inverse, on the moving grid (``fixed(y + inverse_disp(y))`` is
  the fixed image in moving space): ``exp(−v)`` on the diffeomorphic path, else the
  deformation inverted by fixed-point iteration (``info.json``: ``inverse_method``,
  ``inverse_residual_voxels``);
* ``warped_labels.nii.gz`` (with ``--moving-labels``);
* ``transform/``: the transform (affine matrix, deformation, velocity) for ``jaxreg apply``
  and :func:`jaxreg.transform.load_transform`;
* ``itk/`` (3-D): ``warp.nii.gz``, ``affine.mat``, ``affine.txt`` (and ``inverse_warp.nii.gz``)
  for ANTs, ITK and 3D Slicer (:func:`jaxreg.transform.export_itk`);
* ``overview.png``: fixed, moving, warped, differences, grid and Jacobian map (colours: 1st-99th
  percentile, centred on 1), three orthogonal centre slices for 3-D, drawn with the voxel spacing,
  the view across the thickest voxel axis first, label contours with a legend (``--fixed-labels``:
  also dashed over the warped image);
* ``info.json``: method, options, steps, time, spacing, folding %, Dice before/after
  (with ``--fixed-labels``), the affine matrix, the files, and ``timings``: wall seconds of
  each phase (``import``, ``read``, ``register``, ``inverse``, ``outputs``, ``figure``; they add
  up to ``total``) and the registration's own (e.g. ``affine``, ``deformable``, ``compile``).

``apply`` warps an image on the moving grid (a label map with ``--labels``) onto the fixed
grid with a transform that ``register`` wrote (``--inverse``: a fixed-grid image onto the
moving grid).

``example`` writes a synthetic 3-D brain pair with label maps (:func:`jaxreg.data.write_example`:
``fixed.nii.gz``, ``moving.nii.gz``, ``fixed_labels.nii.gz``, ``moving_labels.nii.gz``, 1 mm voxels)
into ``DIR``, which must not exist or be empty, and prints the ``jaxreg register`` command to run on it.

Everything is first written to a temporary file or folder beside the target and moved in
only when complete, so a failure leaves nothing half-written. Errors print one
``error: ...`` line and exit with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from jaxreg.images import Image, on_grid, read_image, resample_to, same_space  # resample_to: re-exported

__all__ = ["main", "parse_option", "resample_to"]

# info.json notes a fixed-point inverse (no velocity) that is off by more than this many voxels.
INVERSE_WARNING_VOXELS = 0.1
#: register() keywords the command sets itself (not ``--option``s).
_SET_BY_COMMAND = {"model", "fixed_mask", "moving_labels", "key", "callback", "spacing"}


def parse_option(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` → ``(key, value)``: a Python literal (``(4, 2)``, ``0.5``) or else the bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--option must be KEY=VALUE (e.g. similarity=mi); got {text!r}.")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: a string option such as similarity=mi


def _plain(text: str) -> str:
    """Docstring text for ``--help``: ``:func:`name``` and ````code```` markup removed."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    return text.replace("``DIR``", "the --out folder").replace("``", "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxreg", description="jaxreg: deformable image registration in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="register a moving NIfTI image onto a fixed one",
                              description=_plain("\n\n".join(__doc__.split("\n\n")[2:4])),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    reg.add_argument("--fixed", required=True, help="fixed image (.nii or .nii.gz): the target grid; "
                     "(X, Y, Z, C) for several channels")
    reg.add_argument("--moving", required=True, help="moving image (.nii or .nii.gz), as many channels as --fixed")
    reg.add_argument("--out", required=True, help="output folder: must not exist or be empty")
    reg.add_argument("--model", default=None, help="a train.py workdir (default: classical optimisation)")
    reg.add_argument("--moving-labels", default=None, help="label map of the moving image, warped alongside")
    reg.add_argument("--fixed-labels", default=None,
                     help="label map of the fixed image: Dice before/after in info.json (needs --moving-labels)")
    reg.add_argument("--fixed-mask", default=None, help="mask on the fixed grid: where the similarity counts")
    reg.add_argument("--spacing", default=None, metavar="SX,SY[,SZ]",
                     help="voxel size of the fixed grid in mm, array axis order (default: the header's pixdim); "
                          "used by the registration only, the written files keep the input headers")
    reg.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                     help="an option of jaxreg.register / jaxreg.optimize.optimize or of the model (repeatable)")
    reg.add_argument("--no-progress", action="store_true", help="no progress bar")
    app = commands.add_parser("apply", help="apply a transform written by `jaxreg register` to another image",
                              description="Warps an image on the moving grid onto the fixed grid (or back with "
                                          "--inverse) with the transform `jaxreg register` wrote.")
    app.add_argument("--transform", required=True,
                     help="a `jaxreg register` output folder, its transform/ folder, or transform/transform.json")
    app.add_argument("--image", required=True, help="image on the moving grid (.nii or .nii.gz)")
    app.add_argument("--out", required=True, help="output .nii.gz (replaced atomically)")
    app.add_argument("--labels", nargs="?", const="nearest", choices=("nearest", "linear"), default=None,
                     help="a label map, integer output: nearest neighbour (default), or 'linear' (each label "
                          "interpolated, the largest wins, as ANTs' genericLabel); zero outside unless --outside edge")
    app.add_argument("--inverse", action="store_true",
                     help="the inverse transform: an image on the fixed grid onto the moving grid")
    app.add_argument("--outside", choices=("edge", "zero"), default=None,
                     help="where the transform reads outside the image: its edge values (the default for images, "
                          "as `register` writes warped.nii.gz) or zero (the default for --labels, as ANTs and ITK)")
    ex = commands.add_parser("example", help="write a synthetic 3-D brain pair with label maps to register",
                             description=_plain(__doc__.split("\n\n")[5]))
    ex.add_argument("--out", required=True, help="output folder: must not exist or be empty")
    ex.add_argument("--seed", default="0", help="random seed, 0 to 4294967295 (default 0): the same seed and "
                                                "shape give the same files")
    ex.add_argument("--shape", default=None, metavar="X,Y,Z",
                    help="image size in voxels (1 mm each), each side 16 to 256 (default 80,96,80)")
    return parser


def _load(path: str, name: str, *, channels: bool = False) -> Image:
    """A 2-D or 3-D NIfTI image with its grid (:func:`jaxreg.images.read_image`); errors name ``--name``."""
    return read_image(path, f"--{name}", channels=channels)


def _load_companion(path: str | None, name: str, image: Image, what: str):
    """A label map or mask that must lie on ``image``'s grid (``None`` without ``path``)."""
    if not path:
        return None
    other = _load(path, name)
    if not same_space(other.shape, other.affine, image.shape, image.affine):
        if tuple(other.shape) != tuple(image.shape):
            got = f"shape {tuple(other.shape)} vs the {what}'s {tuple(image.shape)}"
        else:
            got = f"the same shape {tuple(image.shape)} but affine {_matrix_text(other.affine)} vs the {what}'s " \
                  f"{_matrix_text(image.affine)}"
        raise ValueError(f"--{name} must share the {what}'s shape and affine; got {got}.")
    return other.array


def _matrix_text(matrix) -> str:
    """A matrix on one line, rows in brackets, 4 decimals (for error messages)."""
    rows = np.round(np.asarray(matrix, np.float64), 4) + 0.0  # + 0.0: no "-0"
    return "[" + ", ".join("[" + ", ".join(f"{v:g}" for v in row) + "]" for row in rows) + "]"


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {path!r} exists and is not an empty folder; give a new folder (nothing was done).")
    return out


def _parse_spacing(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--spacing must be 2 or 3 comma-separated finite sizes > 0 in mm (e.g. 1,1,2.5); "
                         f"got {text!r}.")
    return values


def _option_names() -> set[str]:
    """The keywords ``--option`` may set on the classical path: register()'s and optimize()'s."""
    from jaxreg import optimize, register

    names = set()
    for function in (register, optimize.optimize):
        names |= {p.name for p in inspect.signature(function).parameters.values() if p.kind == p.KEYWORD_ONLY}
    return names - _SET_BY_COMMAND


def _check_options(options: dict) -> None:
    valid = _option_names()
    unknown = sorted(set(options) - valid)
    if "spacing" in unknown:
        raise ValueError("--option spacing: give the voxel size as --spacing SX,SY,SZ.")
    if unknown:
        raise ValueError(f"unknown --option {', '.join(unknown)}; valid options: {', '.join(sorted(valid))}.")


def _dice(fixed_labels: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    """Per-label and mean Dice of the fixed labels with the moving labels before and after (higher is better)."""
    from jaxreg import metrics

    fixed_labels, before, after = (np.rint(a).astype(np.int32) for a in (fixed_labels, before, after))
    labels = sorted(int(v) for v in (set(np.unique(fixed_labels)) | set(np.unique(before))) - {0})
    if not labels:
        raise ValueError("--fixed-labels and --moving-labels hold no nonzero label.")
    scores = {k: np.asarray(metrics.dice(fixed_labels, a, labels=labels), np.float64) for k, a in
              (("before", before), ("after", after))}

    def listed(x):
        return [None if np.isnan(v) else float(v) for v in x]

    return {"labels": labels, "before": listed(scores["before"]), "after": listed(scores["after"]),
            "mean_before": float(np.nanmean(scores["before"])), "mean_after": float(np.nanmean(scores["after"]))}


class _Phases:
    """Wall seconds of consecutive phases (``info.json``'s ``timings``), from construction on."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        """Ends phase ``name`` (begun where the previous one ended)."""
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now

    def timings(self, registration: dict | None = None) -> dict[str, float]:
        """The registration's own timings, then each phase and ``total`` (seconds since construction)."""
        return {**(registration or {}), **self.seconds, "total": time.perf_counter() - self.start}


def register_files(args: argparse.Namespace) -> dict:
    """What ``jaxreg register`` does; returns ``info.json``'s content."""
    phases = _Phases()
    import jax
    from tqdm.auto import tqdm

    from jaxreg import io, metrics, register
    from jaxreg import transform as transform_lib
    from jaxreg.evaluation import figures

    phases.done("import")
    out = _check_out(args.out)  # every check that needs no image comes before reading any
    options = dict(args.option)
    if args.model is None:
        _check_options(options)
    spacing = _parse_spacing(args.spacing)
    if args.fixed_labels and not args.moving_labels:
        raise ValueError("--fixed-labels needs --moving-labels (Dice compares the two).")

    fixed = _load(args.fixed, "fixed", channels=True)
    moving = _load(args.moving, "moving", channels=True)
    labels = _load_companion(args.moving_labels, "moving-labels", moving, "moving image")
    fixed_labels = _load_companion(args.fixed_labels, "fixed-labels", fixed, "fixed image")
    mask = _load_companion(args.fixed_mask, "fixed-mask", fixed, "fixed image")
    ndim = len(fixed.shape)
    if ndim != len(moving.shape):
        raise ValueError(f"--fixed and --moving must both be 2-D or both 3-D; got shapes {fixed.array.shape} and "
                         f"{moving.array.shape}.")
    if spacing is None:
        spacing, spacing_source = fixed.spacing, "header"
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"--fixed {args.fixed!r}: its header's voxel size {spacing} is not positive; "
                             "give --spacing.")
    elif len(spacing) != ndim:
        raise ValueError(f"--spacing must give {ndim} sizes for {ndim}-D images; got {args.spacing!r}.")
    else:
        spacing_source = "--spacing"

    two_grids = not same_space(fixed.shape, fixed.affine, moving.shape, moving.affine)
    if two_grids:
        print(f"note: --moving {moving.shape} is not on the grid of --fixed {fixed.shape} (shape or affine differ): "
              "registering in world coordinates, each image on its own grid.", file=sys.stderr)
    if labels is not None:
        labels = np.rint(labels).astype(np.int32)

    phases.done("read")
    bar = None
    callback = None
    if args.model is None and not args.no_progress:
        from jaxreg._progress import restart_clock
        from jaxreg.register import register_stages

        total = sum(sum(steps) for _, _, steps in register_stages(fixed.shape, spacing=spacing, **options))
        bar = tqdm(desc="register", unit="step", file=sys.stderr, total=total)

        done = {}  # level -> last step reported (the callback comes every few steps)

        def callback(level, step, loss):
            level, step = int(level), int(step)
            first = not done
            bar.update(max(step - done.get(level, -1), 0))
            done[level] = step
            if first:  # the first report comes after compiling: the ETA counts steps from here
                restart_clock(bar)
            bar.set_postfix(level=level, loss=f"{float(loss):.4f}")

    try:
        result = register(fixed, moving, model=args.model, spacing=tuple(spacing), fixed_mask=mask,
                          moving_labels=labels, callback=callback, **options)
    finally:
        if bar is not None:
            bar.close()

    phases.done("register")

    # The transform points into the moving file's grid (registered in world coordinates), so that
    # `jaxreg apply` takes images as they lie beside the moving image, interpolated once.
    transform = transform_lib.from_registration(result, fixed_affine=fixed.affine, moving_affine=moving.affine,
                                                moving_shape=moving.shape, steps=options.get("integration_steps"))
    inverse, backward, residual = _inverse(transform)
    phases.done("inverse")
    # Each field once; warped and warped_labels through the field and program `jaxreg apply` uses.
    disp = transform_lib.total_ddf(transform.matrix, transform.deformation, shape=fixed.shape)
    warped = np.asarray(transform_lib.apply(transform, moving.array, ddf=disp))
    warped_labels = None if labels is None else np.asarray(transform_lib.apply(
        transform, labels, labels=options.get("label_interpolation", "nearest"), ddf=disp))
    disp = np.asarray(disp)
    jacobian = np.asarray(jax.jit(metrics.jacobian_determinant)(result.ddf))  # for folding % and the figure
    folding = float(np.count_nonzero(jacobian <= 0) / jacobian.size) * 100
    info = {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array)) else v) for k, v in result.info.items()}
    info.pop("spacing", None)
    info.update(fixed=os.path.abspath(args.fixed), moving=os.path.abspath(args.moving), two_grids=two_grids,
                folding_percent=folding, shape=list(fixed.shape), spacing=list(spacing), spacing_source=spacing_source,
                matrix=transform.matrix.tolist(), transform="transform/transform.json",
                inverse="inverse_disp.nii.gz",
                inverse_method="exp(-v)" if transform.velocity is not None else (
                    "affine" if residual is None else "fixed-point inversion"))
    if residual is not None:
        info["inverse_residual_voxels"] = residual
        if residual > INVERSE_WARNING_VOXELS:
            info["inverse_note"] = (f"the deformation has no velocity and its fixed-point inverse is off by up to "
                                    f"{residual:.2f} voxels (where it folds, no inverse exists)")
            print(f"note: {info['inverse_note']}.", file=sys.stderr)
    # "before": the moving image and labels on the fixed grid through the headers alone
    before = None if labels is None else on_grid(moving._replace(array=labels), fixed, order=0)
    if fixed_labels is not None:
        info["dice"] = _dice(fixed_labels, before, warped_labels)

    with io.atomic_folder(out) as staging:
        io.save_nifti(staging / "warped.nii.gz", warped, fixed.affine)
        _save_field(staging / "disp.nii.gz", disp, fixed.affine)
        _save_field(staging / "inverse_disp.nii.gz", inverse, moving.affine)
        if warped_labels is not None:
            io.save_nifti(staging / "warped_labels.nii.gz", warped_labels, fixed.affine)
        transform_lib.save_transform(staging / "transform", transform)
        info["itk"] = None
        if ndim == 3:
            files = transform_lib.export_itk(staging / "itk", transform, inverse_deformation=backward)
            info["itk"] = {k: f"itk/{v}" for k, v in files.items()}
        phases.done("outputs")
        show = (lambda a: a.mean(-1) if a.ndim > ndim else a)  # noqa: E731  (channels: their mean)
        figures.pair_figure(staging / "overview.png", show(fixed.array), show(on_grid(moving, fixed)), show(warped),
                            result.ddf, jacobian=jacobian, fixed_labels=fixed_labels, moving_labels=before,
                            warped_labels=warped_labels, spacing=tuple(spacing),
                            title=f"{info['method']}: {info['time_s']:.1f} s, folding {folding:.3f} %")
        phases.done("figure")
        info["timings"] = phases.timings(result.info.get("timings"))
        (staging / "info.json").write_text(json.dumps(info, indent=2, default=str))
    return info


def _inverse(transform):
    """``(inverse_disp, inverse deformation or None, residual in voxels or None)`` of a transform.

    The inverse deformation serves ``inverse_disp`` and ``itk/inverse_warp``: ``exp(−v)`` on the
    svf path; without a velocity (the ddf path, trained models) the fixed-point inverse, whose
    residual ``max |w + u∘(id + w)|`` says how exact it is.
    """
    from jaxreg import transform as transform_lib

    backward = residual = None
    if transform.velocity is not None:
        backward = transform_lib.inverse_deformation(transform.velocity, steps=transform.steps)
    elif transform.deformation is not None:
        backward, residual = transform_lib.invert_deformation(transform.deformation)
    inverse = transform_lib.inverse_ddf(transform.matrix, transform.velocity, shape=transform.moving_shape,
                                        steps=transform.steps, inverse_deformation=backward)
    return np.asarray(inverse), backward, residual


def _save_field(path: Path, field: np.ndarray, affine: np.ndarray) -> None:
    from jaxreg import io

    if field.shape[-1] == 3:
        io.save_disp(path, field, affine=affine)
    else:
        io.save_nifti(path, field.astype(np.float32), affine)


def apply_file(args: argparse.Namespace) -> Path:
    """What ``jaxreg apply`` does; returns the written file."""
    from jaxreg import io
    from jaxreg import transform as transform_lib

    out = Path(args.out)
    if not (args.out.endswith(".nii.gz") or args.out.endswith(".nii")):
        raise ValueError(f"--out must end in .nii or .nii.gz; got {args.out!r}.")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: the folder {str(out.parent)!r} does not exist.")
    transform = transform_lib.load_transform(args.transform)
    image = _load(args.image, "image", channels=not args.labels)
    try:
        mode = None if args.outside is None else ("nearest" if args.outside == "edge" else "constant")
        array = np.rint(image.array).astype(np.int32) if args.labels else image.array
        warped = transform_lib.apply(transform, array, affine=image.affine, mode=mode, inverse=args.inverse,
                                     labels=args.labels)
    except ValueError as err:
        if not str(err).startswith("`image`"):
            raise
        raise ValueError(f"--image {args.image!r}: {err}") from err
    warped = np.asarray(warped)
    if args.labels:
        warped = np.rint(warped).astype(np.int32)
    io.save_nifti(out, warped, transform.moving_affine if args.inverse else transform.fixed_affine)
    return out


def example_files(args: argparse.Namespace) -> dict[str, Path]:
    """What ``jaxreg example`` does; returns the written files (:func:`jaxreg.data.write_example`)."""
    _check_out(args.out)
    from jaxreg.data import example
    from jaxreg.register import enable_compilation_cache

    seed = example.check_seed(args.seed, name="--seed")
    shape = example.DEFAULT_SHAPE if args.shape is None else example.check_shape(args.shape, name="--shape")
    enable_compilation_cache()  # a second `jaxreg example` (and `register`) loads the compiled generator
    return example.write_example(args.out, seed=seed, shape=shape)


def _register_command(files: dict[str, Path], out: str) -> str:
    """The ``jaxreg register`` command line for the files of ``jaxreg example`` (shell-quoted)."""
    from shlex import quote

    return (f"jaxreg register --fixed {quote(str(files['fixed']))} --moving {quote(str(files['moving']))} "
            f"--moving-labels {quote(str(files['moving_labels']))} --fixed-labels {quote(str(files['fixed_labels']))} "
            f"--out {quote(str(Path(out) / 'registered'))}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxreg`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "apply":
            written = apply_file(args)
        elif args.command == "example":
            written = example_files(args)
        else:
            info = register_files(args)
    except (ValueError, OSError, KeyError, TypeError) as err:
        if os.environ.get("JAXREG_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    if args.command == "apply":
        print(f"wrote {written}")
        return 0
    if args.command == "example":
        print(f"wrote a synthetic brain pair with label maps to {args.out}: "
              f"{', '.join(path.name for path in written.values())}")
        print(f"register it with:\n  {_register_command(written, args.out)}")
        return 0
    print(f"registered in {info['time_s']:.1f} s (folding {info['folding_percent']:.3f} %): outputs in {args.out}")
    if "dice" in info:
        dice = info["dice"]
        print(f"Dice {dice['mean_before']:.3f} -> {dice['mean_after']:.3f} (mean of {len(dice['labels'])} labels; "
              "per label in info.json)")
    return 0


def run() -> None:
    """The ``jaxreg`` console command: :func:`main`, then an exit without the interpreter's teardown.

    Once every output is in place and the streams are flushed, nothing is left to do, but a
    normal exit still spends 0.5–0.8 s freeing JAX's compiled programs, arrays and modules
    (measured on the 2-core CPU after a 3-D registration). ``os._exit`` skips that. Errors
    that :func:`main` does not turn into a status (a bug) propagate and exit as usual.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
