"""Learn2Reg task folders (OASIS, NLST, ...), driven by their ``*_dataset.json``.

A task folder as distributed by Learn2Reg holds ``<NAME>_dataset.json`` and the folders it
names: ``imagesTr/<NAME>_<case>_<modality>.nii.gz`` and, where the task provides them,
``labelsTr/``, ``masksTr/`` and ``keypointsTr/`` (CSV, one ``x0,x1,x2`` voxel coordinate per
line, rows corresponding between the ``_0000`` and ``_0001`` files). The JSON lists
``training`` images, ``training_paired_images`` (paired tasks such as NLST: fixed ``_0000``,
moving ``_0001``) and the ``registration_val`` / ``registration_test`` pairs.

Arrays come back in the NIfTI file's array order (the order the Learn2Reg evaluation uses
for displacement fields and keypoints), with the affine kept, so a field predicted on these
arrays can be written with ``jaxreg.io.save_disp`` as a valid submission.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxreg import io
from jaxreg.data.pairs import make_pair, read_image
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["SPLITS", "Learn2RegTask", "open_task", "write_learn2reg"]

SPLITS = ("train", "val", "test")


def _case_and_modality(rel_path: str) -> tuple[str, str]:
    """``./imagesTr/NLST_0101_0001.nii.gz`` -> ``("0101", "0001")`` (the evaluator's rule)."""
    stem = os.path.basename(rel_path)
    stem = stem[: -len(".nii.gz")] if stem.endswith(".nii.gz") else os.path.splitext(stem)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"image name {rel_path!r} does not follow <NAME>_<case>_<modality>.nii.gz")
    return parts[-2], parts[-1]


@dataclass(frozen=True)
class Learn2RegTask:
    """A parsed Learn2Reg task folder. Build it with :func:`open_task`.

    Attributes:
      root: the task folder.
      name: task name from the JSON (e.g. ``"OASIS"``).
      shape: ``tensorImageShape`` of modality 0 (array order).
      paired: whether the task pairs images of one subject (``pairings == "paired"``).
      training_images: relative paths of the training images.
      split_pairs: for each split, the ``(fixed, moving)`` relative image paths.
    """

    root: Path
    name: str
    shape: tuple[int, ...]
    paired: bool
    training_images: tuple[str, ...]
    split_pairs: dict[str, tuple[tuple[str, str], ...]] = field(repr=False)

    def pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """``(fixed, moving)`` relative image paths of a split (``"train"``, ``"val"``, ``"test"``).

        ``"train"`` is ``training_paired_images`` for paired tasks; for unpaired tasks
        (OASIS) it is every ordered pair of distinct training subjects that are not used by
        the validation or test pairs (sample from it; do not iterate it all per epoch).
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
        return self.split_pairs[split]

    def path(self, rel_path: str) -> Path:
        return self.root / rel_path.removeprefix("./")

    def _optional(self, rel_image: str, folder: str, ext: str = ".nii.gz") -> Path | None:
        name = os.path.basename(rel_image)
        if ext != ".nii.gz":
            name = name[: -len(".nii.gz")] + ext
        candidate = self.root / folder / name
        return candidate if candidate.is_file() else None

    def load_image(self, rel_image: str) -> dict[str, np.ndarray]:
        """One image with whatever the task provides for it.

        Returns:
          dict with ``image`` float32 ``(*S)``, ``affine`` ``(4, 4)``, ``spacing``
          ``(3,)`` mm, and where present ``labels`` int32 ``(*S)``, ``mask`` uint8 ``(*S)``,
          ``points`` float64 ``(N, 3)`` voxel coordinates.
        """
        return read_image(
            self.path(rel_image),
            labels=self._optional(rel_image, "labelsTr"),
            mask=self._optional(rel_image, "masksTr"),
            points=self._optional(rel_image, "keypointsTr", ".csv"),
            missing=f"image listed in {self.name}_dataset.json is missing",
        )

    def load_pair(self, fixed: str, moving: str) -> dict[str, np.ndarray]:
        """A registration pair as a dict of numpy arrays.

        Keys: ``fixed``, ``moving`` (float32 ``(*S)``), ``spacing`` (fixed, mm),
        ``moving_spacing``, ``affine`` (fixed), ``ids`` (``"FFFF_MMMM"`` case ids), and where
        the task provides them ``fixed_labels``/``moving_labels``, ``fixed_mask``/
        ``moving_mask``, ``fixed_points``/``moving_points``.
        """
        ids = f"{_case_and_modality(fixed)[0]}_{_case_and_modality(moving)[0]}"
        return make_pair(self.load_image(fixed), self.load_image(moving), ids=ids,
                         where=f"task {self.name}, pair ({fixed!r}, {moving!r})")


def _find_json(root: Path) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"Learn2Reg task folder not found: {root}")
    found = sorted(root.glob("*_dataset.json"))
    if not found:
        raise FileNotFoundError(f"no *_dataset.json in Learn2Reg task folder {root}")
    if len(found) > 1:
        raise ValueError(f"expected one *_dataset.json in {root}; found {[p.name for p in found]}")
    return found[0]


def _pair_list(entries, key: str, json_path: Path) -> tuple[tuple[str, str], ...]:
    pairs = []
    for entry in entries or []:
        if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
            raise ValueError(f"{json_path}: every entry of `{key}` must have 'fixed' and 'moving'; got {entry!r}")
        pairs.append((entry["fixed"], entry["moving"]))
    return tuple(pairs)


def open_task(root: str | os.PathLike) -> Learn2RegTask:
    """Parses a Learn2Reg task folder (``*_dataset.json`` and the files it lists).

    Args:
      root: the task folder.

    Raises:
      FileNotFoundError: the folder or its ``*_dataset.json`` is missing.
      ValueError: the JSON lacks what a task needs, or its pair lists are malformed.
    """
    root = Path(root)
    json_path = _find_json(root)
    try:
        spec = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path} is not valid JSON: {err}") from err
    for key in ("name", "tensorImageShape", "training"):
        if key not in spec:
            raise ValueError(f"{json_path} must have the key {key!r} of a Learn2Reg dataset JSON.")
    shape = tuple(int(s) for s in spec["tensorImageShape"]["0"])
    training = tuple(entry["image"] for entry in spec["training"])
    val = _pair_list(spec.get("registration_val"), "registration_val", json_path)
    test = _pair_list(spec.get("registration_test"), "registration_test", json_path)
    paired = spec.get("pairings") == "paired" or bool(spec.get("training_paired_images"))
    if paired:
        train = _pair_list(spec.get("training_paired_images"), "training_paired_images", json_path)
        held_out = {p for pair in val + test for p in pair}
        train = tuple(pair for pair in train if not set(pair) & held_out)
    else:
        held_out = {_case_and_modality(p)[0] for pair in val + test for p in pair}
        subjects = [p for p in training if _case_and_modality(p)[0] not in held_out]
        train = tuple((f, m) for f in subjects for m in subjects if f != m)
    return Learn2RegTask(
        root=root,
        name=str(spec["name"]),
        shape=shape,
        paired=paired,
        training_images=training,
        split_pairs={"train": train, "val": val, "test": test},
    )


# The synthetic dataset in this layout, so the reader can be exercised without real data.
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
