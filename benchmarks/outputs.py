"""How fast ``.nii.gz`` files of a registration's size can be written; prints one JSON object.

    python benchmarks/outputs.py [--shape 240,240,155] [--repeats 3] [--threads 2]

Two arrays as ``jaxreg register`` writes them: a displacement field ``(*shape, 3)`` float32
(a smooth random field, a few voxels; its low mantissa bits are as incompressible as a real
field's) and a warped image ``shape`` float32 (a smooth random "head" in a zero background).
For each, the median seconds (of ``repeats``) from the array to a complete file on disk, and
the file's size in bytes, for each way of writing it:

* ``nibabel``: ``nib.save`` to ``.nii.gz`` (stdlib gzip, nibabel's level 1): what jaxreg did;
* ``nii``: ``nib.save`` to ``.nii``, no compression (the floor: building the bytes and writing);
* ``zlib_L``: the NIfTI bytes (``img.to_file_map`` into memory) gzip-compressed in one stdlib
  ``zlib`` call at level ``L``;
* ``isal_L``: the same with ISA-L (``isal.igzip.compress``, levels 0-3), one thread;
* ``isal_L_threads_T``: ISA-L's threaded writer (``isal.igzip_threaded``, ``T`` threads);
* ``jaxreg``: ``jaxreg.io.save_nifti`` as shipped (``jaxreg_gzip`` says how: the bytes in
  memory, then ISA-L's threaded writer, or the stdlib's ``gzip`` without ``isal``), with its
  checks and the ``fsync`` of its atomic write, which the other ways skip.

``seconds.to_bytes`` is the part of every in-memory way spent building the uncompressed bytes;
``jaxreg_speedup`` is ``seconds.nibabel / seconds.jaxreg``. Every file is read back with
nibabel and compared with the array (a mismatch raises).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from io import BytesIO

import nibabel as nib
import numpy as np
from scipy import ndimage

from jaxreg import io as jio


def _nifti_bytes(img: nib.Nifti1Image) -> memoryview:
    buffer = BytesIO()
    img.to_file_map(img.make_file_map({"image": buffer, "header": buffer}))
    return buffer.getbuffer()


def _zlib(level):
    def write(path, img):
        with open(path, "wb") as f:
            f.write(gzip.compress(_nifti_bytes(img), compresslevel=level, mtime=0))
    return write


def _isal(level, threads=None):
    from isal import igzip, igzip_threaded

    def write(path, img):
        raw = _nifti_bytes(img)
        with open(path, "wb") as f:
            if threads is None:
                f.write(igzip.compress(raw, compresslevel=level, mtime=0))
            else:
                with igzip_threaded.open(f, "wb", compresslevel=level, threads=threads) as out:
                    out.write(raw)
    return write


def _arrays(shape):
    rng = np.random.default_rng(0)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), 6) for _ in range(3)], -1)
    field *= 3.0 / np.abs(field).max()
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij"))
    head = (grid ** 2).sum(0) < 0.7
    image = np.where(head, ndimage.gaussian_filter(rng.random(shape, np.float32), 2) * 1000, 0).astype(np.float32)
    return {"field": field, "image": image}


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="240,240,155", help="volume shape X,Y,Z")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of the threaded ISA-L writer")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    writers = {"nibabel": lambda path, img: nib.save(img, path), "nii": lambda path, img: nib.save(img, path),
               "zlib_1": _zlib(1), "zlib_6": _zlib(6)}
    try:
        for level in range(4):
            writers[f"isal_{level}"] = _isal(level)
        for level in (0, 1):
            writers[f"isal_{level}_threads_{args.threads}"] = _isal(level, args.threads)
    except ImportError:
        pass  # without isal: stdlib only
    writers["jaxreg"] = lambda path, img: jio.save_nifti(path, np.asarray(img.dataobj), img.affine)

    result = {"shape": list(shape), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "nibabel": nib.__version__, "repeats": args.repeats,
              "jaxreg_gzip": f"level {jio.GZIP_LEVEL}, " + ("zlib" if jio._igzip_threaded is None else
                                                            f"isal {jio._GZIP_THREADS} threads")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, array in _arrays(shape).items():
            img = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]))
            seconds, sizes = {}, {}
            seconds["to_bytes"] = _median_time(lambda: _nifti_bytes(img), args.repeats)
            for way, write in writers.items():
                path = os.path.join(tmp, f"{name}_{way}.nii" + ("" if way == "nii" else ".gz"))
                seconds[way] = _median_time(lambda: write(path, img), args.repeats)
                sizes[way] = os.path.getsize(path)
                back = np.asarray(nib.load(path).dataobj)
                if back.dtype != array.dtype or not np.array_equal(back, array):
                    raise AssertionError(f"{way}: {path} does not read back as the array")
                os.unlink(path)
            result[name] = {"array_shape": list(array.shape), "raw_bytes": array.nbytes, "seconds": seconds,
                            "bytes": sizes, "ratio": {k: v / array.nbytes for k, v in sizes.items()},
                            "jaxreg_speedup": seconds["nibabel"] / seconds["jaxreg"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
