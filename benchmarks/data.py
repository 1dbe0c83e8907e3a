"""Speed of the data sources; prints one JSON object.

    python benchmarks/data.py [--repeats 5] [--disk_pairs 24] [--root TASK_FOLDER]

* ``synthetic``: the built-in generator (pairs/s after the compiling first call) at 64³
  and 128³ for each anatomy;
* ``disk``: the input pipeline (``jaxreg.data.pipeline``, batch 1, min-max normalisation)
  reading NIfTI pairs from a Learn2Reg OASIS-layout folder at 160×192×224 (written once
  into a temporary folder, or ``--root`` for your own task folder), for several reader
  thread counts, next to a plain sequential loop over the reader. Target: >= 4 pairs/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxreg import io
from jaxreg.data import learn2reg, pipeline, preprocess, sources
from jaxreg.data.synthetic import ANATOMIES, synthetic_pair

DISK_SHAPE = (160, 192, 224)
REAL_PAIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "oasis_lapirn_pair"


def _use_real_content(root: Path) -> bool:
    """Overwrites the synthetic layout's files with the two real OASIS brains (if present).

    Synthetic images carry float32 noise, which gzip cannot compress (25 MB per image);
    real MRI compresses ~10x and decompresses faster, so both are reported.
    """
    if not REAL_PAIR.is_dir():
        return False
    real = []
    for name in ("A", "B"):
        image = io.load_nifti(REAL_PAIR / f"image_{name}_160x192x144.nii.gz", dtype=np.float32).array
        labels = io.load_nifti(REAL_PAIR / f"image_{name}_160x192x144_seg.nii.gz").array.astype(np.int16)
        real.append([preprocess.crop_or_pad(x, np.eye(4), DISK_SHAPE)[0] for x in (image, labels)])
    for i, path in enumerate(sorted((root / "imagesTr").glob("*.nii.gz"))):
        image, labels = real[i % 2]
        io.save_nifti(path, image)
        io.save_nifti(root / "labelsTr" / path.name, labels)
        io.save_nifti(root / "masksTr" / path.name, (labels > 0).astype(np.uint8))
    return True


def _pairs_per_second(shape, anatomy, repeats):
    compile_start = time.perf_counter()
    jax.block_until_ready(synthetic_pair(jax.random.key(0), shape, anatomy=anatomy))
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(synthetic_pair(jax.random.key(i + 1), shape, anatomy=anatomy))
    return repeats / (time.perf_counter() - start), compile_s


def _disk(root, num_pairs, threads):
    data = {"source": "learn2reg", "root": str(root), "batch_size": 1, "normalize": "minmax", "prefetch": 8}
    folder = sources.open_source(data, "train")
    start = time.perf_counter()
    for i in range(min(num_pairs, len(folder))):
        folder[i]
    out = {"sequential_pairs_per_s": min(num_pairs, len(folder)) / (time.perf_counter() - start)}
    for n in threads:
        batches = iter(pipeline.from_config(dict(data, num_threads=n), "train"))
        next(batches)  # starts the threads
        start = time.perf_counter()
        for _ in range(num_pairs):
            next(batches)
        out[f"pipeline_{n}_threads_pairs_per_s"] = num_pairs / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--disk_pairs", type=int, default=24, help="pairs timed per disk setting")
    parser.add_argument("--disk_cases", type=int, default=6, help="images written for the disk benchmark")
    parser.add_argument("--root", help="a Learn2Reg task folder to read instead of a synthetic one")
    parser.add_argument("--skip_synthetic", action="store_true")
    args = parser.parse_args()
    result = {"backend": jax.default_backend(), "jax": jax.__version__, "synthetic": {}}
    for size in () if args.skip_synthetic else (64, 128):
        for anatomy in ANATOMIES:
            rate, compile_s = _pairs_per_second((size,) * 3, anatomy, args.repeats)
            result["synthetic"][f"{anatomy}_{size}^3"] = {"pairs_per_s": rate, "first_call_s": compile_s}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            start = time.perf_counter()
            root = learn2reg.write_learn2reg(tmp, task="OASIS", num_cases=args.disk_cases, num_val=1, shape=DISK_SHAPE)
            result["disk_layout_written_s"] = time.perf_counter() - start
        result["disk"] = {"root": str(args.root or f"synthetic OASIS layout {DISK_SHAPE}"),
                          **_disk(root, args.disk_pairs, threads=(1, 2, 4))}
        if args.root is None and _use_real_content(Path(root)):
            result["disk_real_content"] = {"root": f"OASIS layout {DISK_SHAPE}, the two real brains of {REAL_PAIR.name}",
                                           **_disk(root, args.disk_pairs, threads=(1, 2, 4))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
