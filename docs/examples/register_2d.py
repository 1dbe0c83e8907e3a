"""Register two 2-D images with ``jaxreg.register`` and save an overview figure.

    python docs/examples/register_2d.py FIXED.png MOVING.png --out pair.png   # your own two images
    python docs/examples/register_2d.py FIXED.png MOVING.png --option similarity=mi --option levels=(4,2,1)
    python docs/examples/register_2d.py                       # the classic ANTs slices r16 ← r64

FIXED and MOVING are any image files matplotlib reads (PNG, JPEG, ...; colour is averaged
to grey) or 2-D NIfTI files, of the same size in pixels. ``--option KEY=VALUE``
(repeatable) passes a keyword option to ``jaxreg.register`` (e.g. ``similarity=mi``,
``levels=(4,2,1)``, ``affine=False``; an unknown name is refused with the list of valid
ones), as ``jaxreg register --option`` does.

Without arguments it registers ``r64slice.jpg`` onto ``r16slice.jpg``, two real 256×256
T1 brain slices of the ANTs demo data (``data/`` of the GitHub repository ANTsX/ANTsPy;
``ants.get_data("r16")`` downloads them). The project keeps a copy in ``../shared/data/
ants_slices`` beside the repository, which is not shipped: elsewhere, pass two files.
Prints one JSON line: similarity before and after (global normalised cross-correlation,
higher is better), folding %, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import jaxreg
from jaxreg.cli import parse_option
from jaxreg.evaluation import figures

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ants_slices"


def read_image(path: str) -> np.ndarray:
    """A 2-D float32 image from an image file or a NIfTI file."""
    if path.endswith((".nii", ".nii.gz")):
        return np.squeeze(jaxreg.io.load_nifti(path, dtype=np.float32).array)
    import matplotlib.image

    image = np.asarray(matplotlib.image.imread(path), np.float32)
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def ncc(a, b) -> float:
    """Global normalised cross-correlation in [-1, 1], higher is better."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", nargs="?", default=str(DEFAULT_DATA / "r16slice.jpg"), help="fixed image file")
    parser.add_argument("moving", nargs="?", default=str(DEFAULT_DATA / "r64slice.jpg"), help="moving image file")
    parser.add_argument("--out", default="register_2d.png", help="overview figure (PNG)")
    parser.add_argument("--similarity", default=None, help="lncc | mse | mi (default: jaxreg's)")
    parser.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="a keyword option of jaxreg.register (repeatable), e.g. levels=(4,2,1)")
    args = parser.parse_args()
    for path in (args.fixed, args.moving):
        if not Path(path).exists():
            parser.error(f"no such file {path!r} (pass two image files; the default slices are the project's "
                         f"copy of the ANTs demo data in ../shared/data/ants_slices)")
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    if fixed.shape != moving.shape:
        parser.error(f"the images must have the same size; got {fixed.shape} ({args.fixed}) and "
                     f"{moving.shape} ({args.moving})")
    options = dict(args.option)
    if args.similarity is not None:
        options["similarity"] = args.similarity

    start = time.perf_counter()
    try:
        result = jaxreg.register(fixed, moving, **options)
    except ValueError as error:
        parser.exit(1, f"error: {error}\n")
    seconds = time.perf_counter() - start
    folding = 100 * float(jaxreg.metrics.folding_fraction(result.ddf))
    figures.pair_figure(args.out, fixed, moving, np.asarray(result.warped), np.asarray(result.ddf),
                        title=f"{Path(args.moving).name} → {Path(args.fixed).name}: {seconds:.1f} s")
    print(json.dumps({"fixed": args.fixed, "moving": args.moving, "options": {k: repr(v) for k, v in options.items()},
                      "ncc_before": ncc(fixed, moving), "ncc_after": ncc(fixed, result.warped),
                      "folding_percent": folding, "seconds": seconds, "figure": args.out}))


if __name__ == "__main__":
    main()
