"""Lay the synthetic dataset out on disk in the real datasets' layouts.

So that the real readers can be exercised end to end (and demos run) without real data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from jaxreg import io
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["write_learn2reg"]

_TASKS = {
    # name: (anatomy, paired, spacing in mm)
    "OASIS": ("brain", False, (1.0, 1.0, 1.0)),
    "NLST": ("lung", True, (1.5, 1.5, 1.5)),
}


def write_learn2reg(
    root: str | os.PathLike,
    *,
    task: str = "OASIS",
    num_cases: int = 6,
    num_val: int = 2,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
) -> Path:
    """Writes a synthetic Learn2Reg task folder (``<task>_dataset.json`` + NIfTI/CSV files).

    ``"OASIS"``: unpaired brain-like images with ``labelsTr`` and ``masksTr``; the last
    ``num_val + 1`` cases form chained ``registration_val`` pairs, as in the real task.
    ``"NLST"``: paired lung-like ``_0000`` (fixed) / ``_0001`` (moving) images with
    ``masksTr`` and corresponding ``keypointsTr`` CSVs; the last ``num_val`` cases are the
    validation pairs.

    Returns:
      The task folder.
    """
    if task not in _TASKS:
        raise ValueError(f"`task` must be one of {tuple(_TASKS)}; got {task!r}.")
    if num_val < 1 or num_cases < num_val + 2:
        raise ValueError(f"need num_val >= 1 and num_cases >= num_val + 2; got {num_cases=} and {num_val=}.")
    anatomy, paired, spacing = _TASKS[task]
    root = Path(root)
    folders = ["imagesTr", "masksTr"] + (["keypointsTr"] if paired else ["labelsTr"])
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    keys = jax.random.split(jax.random.key(seed), num_cases)
    training, paired_images = [], []

    def name(case, modality):
        return f"{task}_{case:04d}_{modality:04d}.nii.gz"

    for case, key in enumerate(keys, start=1):
        pair = {k: np.asarray(v) for k, v in synthetic_pair(key, shape, anatomy=anatomy).items()}
        # OASIS uses one image per subject (the pair's moving image); NLST both time points.
        images = [(0, "moving")] if not paired else [(0, "fixed"), (1, "moving")]
        for modality, which in images:
            fname = name(case, modality)
            io.save_nifti(root / "imagesTr" / fname, pair[which].astype(np.float32), affine)
            io.save_nifti(root / "masksTr" / fname, (pair[f"{which}_labels"] > 0).astype(np.uint8), affine)
            entry = {"image": f"./imagesTr/{fname}", "mask": f"./masksTr/{fname}"}
            if paired:
                csv = fname[: -len(".nii.gz")] + ".csv"
                io.save_keypoints(root / "keypointsTr" / csv, pair[f"{which}_points"])
                entry["keypoints"] = f"./keypointsTr/{fname}"  # sic: the real JSON says .nii.gz
            else:
                io.save_nifti(root / "labelsTr" / fname, pair[f"{which}_labels"].astype(np.int16), affine)
                entry["label"] = f"./labelsTr/{fname}"
            training.append(entry)
        if paired:
            paired_images.append({"fixed": f"./imagesTr/{name(case, 0)}", "moving": f"./imagesTr/{name(case, 1)}"})

    if paired:
        train_pairs, val = paired_images[:-num_val], paired_images[-num_val:]
    else:
        train_pairs = []
        first = num_cases - num_val
        val = [{"fixed": f"./imagesTr/{name(c, 0)}", "moving": f"./imagesTr/{name(c + 1, 0)}"}
               for c in range(first, num_cases)]
    spec = {
        "name": task,
        "release": "synthetic",
        "description": f"jaxreg synthetic stand-in for Learn2Reg {task} ({anatomy}-like)",
        "pairings": "paired" if paired else "unpaired",
        "registration_direction": {"fixed": 0, "moving": 1 if paired else 0},
        "modality": {"0": "CT", "1": "CT"} if paired else {"0": "MR"},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "numTraining": len(training),
        "training": training,
        "numPairedTraining": len(train_pairs) + (len(val) if paired else 0),
        "training_paired_images": train_pairs + (val if paired else []),
        "numRegistration_val": len(val),
        "registration_val": val,
        "numRegistration_test": 0,
        "registration_test": [],
    }
    (root / f"{task}_dataset.json").write_text(json.dumps(spec, indent=1))
    return root
