"""neurite-oasis (OASIS-1 as preprocessed by A. Dalca for neurite/VoxelMorph): DEQReg's OASIS.

Layout of ``neurite-oasis.v1.0.tar``: one folder per subject, named by its id,
``ROOT/OASIS_OAS1_0001_MR1/`` ... (414 subjects), each holding ``aligned_norm.nii.gz``
(skull-stripped, bias-corrected, affinely aligned T1, intensities in [0, 1],
160 x 192 x 224 at 1 mm), ``aligned_seg35.nii.gz`` (35 labels, 0 background), and other
files this reader ignores (``aligned_seg4``, ``aligned_orig``, ``slice_*`` 2-D files, and
root files such as ``seg35_labels.txt``). Subjects are the sorted folders matching
``OASIS_OAS1_*_MR1`` that contain ``aligned_norm.nii.gz``.

Arrays come back in the file's array order with its affine (no reorientation), so a
displacement field predicted on them (voxel units, array axes) refers to the file grid.

Split: the sorted subject list is shuffled with ``np.random.default_rng(seed)`` and cut
into ``split_sizes`` (train, val, test) subjects in that order; DEQReg uses 300/30/84.
With a ``workdir`` the split is stored in ``workdir/oasis_split.json`` the first time and
read back from there afterwards (the stored split wins over ``seed`` and ``split_sizes``),
so runs on other machines or with a changed folder listing use the same subjects.

Resampling: ``shape=(128, 128, 128)`` (DEQReg's setting) resamples images linearly and
label maps by nearest neighbour over the same field of view
(:func:`jaxreg.data.preprocess.resample_to_shape`), with the affine updated to match.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxreg import io
from jaxreg.data import preprocess
from jaxreg.data.learn2reg import SPLITS
from jaxreg.data.pairs import make_pair, read_image
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["SPLIT_FILE", "NeuriteOasisDataset", "open_neurite_oasis", "write_neurite_oasis"]

SPLIT_FILE = "oasis_split.json"
_IMAGE, _SEG = "aligned_norm.nii.gz", "aligned_seg35.nii.gz"


@dataclass(frozen=True)
class NeuriteOasisDataset:
    """An opened neurite-oasis folder with its split. Build it with :func:`open_neurite_oasis`.

    Attributes:
      root: the dataset folder.
      subject_ids: every subject found in ``root`` (sorted), including any left out of the split.
      shape: target spatial shape, or None for the files' own shape.
      labels: kept label values, or None for all.
      split_file: where the split is stored, or None without a ``workdir``.
      split: for each of ``SPLITS``, its subject ids.
    """

    root: Path
    subject_ids: tuple[str, ...]
    shape: tuple[int, int, int] | None
    labels: tuple[int, ...] | None
    split_file: Path | None
    split: dict[str, tuple[str, ...]] = field(repr=False)

    def subjects(self, split: str) -> tuple[str, ...]:
        """Subject ids of a split (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
        return self.split[split]

    def pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """``(fixed_id, moving_id)`` pairs of a split.

        ``"train"``: every ordered pair of distinct training subjects (n(n-1) pairs; sample
        from it). ``"val"``/``"test"``: consecutive subjects chained, ``(s0, s1), (s1, s2), ...``
        (as Learn2Reg's OASIS validation pairs).
        """
        ids = self.subjects(split)
        if split == "train":
            return tuple((f, m) for f in ids for m in ids if f != m)
        return tuple(itertools.pairwise(ids))

    def load_image(self, subject_id: str) -> dict[str, np.ndarray]:
        """One subject, resampled to ``shape`` if set.

        Returns:
          dict with ``image`` float32 ``(*S)`` (intensities in [0, 1]), ``affine`` ``(4, 4)``
          voxel-to-world (mm), ``spacing`` ``(3,)`` float64 mm, and, where
          ``aligned_seg35.nii.gz`` exists, ``labels`` int32 ``(*S)`` (only the kept values,
          others 0).
        """
        if subject_id not in self.subject_ids:
            raise ValueError(f"`subject_id` must be a subject folder of {self.root}; got {subject_id!r}.")
        seg_path = self.root / subject_id / _SEG
        record = read_image(self.root / subject_id / _IMAGE, labels=seg_path if seg_path.is_file() else None, ndim=3,
                            missing=f"neurite-oasis image of subject {subject_id} is missing")
        image, affine, labels = record["image"], record["affine"], record.get("labels")
        if labels is not None and self.labels is not None:  # keep the original values, not 1..n
            labels = np.where(np.isin(labels, self.labels), labels, 0).astype(np.int32)
        if self.shape is not None and self.shape != image.shape:
            if labels is not None:
                labels, _ = preprocess.resample_to_shape(labels, affine, self.shape, order=0)
            image, affine = preprocess.resample_to_shape(image, affine, self.shape, order=1)
        out = {"image": image.astype(np.float32), "affine": affine, "spacing": preprocess.spacing_of(affine)}
        if labels is not None:
            out["labels"] = labels
        return out

    def load_pair(self, fixed_id: str, moving_id: str) -> dict[str, np.ndarray]:
        """A registration pair, with the keys of :meth:`Learn2RegTask.load_pair`.

        Keys: ``fixed``, ``moving`` float32 ``(*S)``, ``spacing`` (fixed, ``(3,)`` mm),
        ``moving_spacing``, ``affine`` (fixed, ``(4, 4)``), ``ids`` (``"<fixed_id>_<moving_id>"``)
        and, when both subjects have ``aligned_seg35``, ``fixed_labels``/``moving_labels`` int32.
        """
        return make_pair(self.load_image(fixed_id), self.load_image(moving_id), ids=f"{fixed_id}_{moving_id}",
                         where=f"neurite-oasis pair ({fixed_id!r}, {moving_id!r})")


def _read_split(path: Path, found: Sequence[str]) -> dict[str, tuple[str, ...]]:
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(stored, dict) or not all(
            isinstance(stored.get(s), list) and all(isinstance(i, str) for i in stored[s]) for s in SPLITS):
        raise ValueError(f"{path} must map each of {SPLITS} to a list of subject ids.")
    split = {s: tuple(stored[s]) for s in SPLITS}
    everything = [i for s in SPLITS for i in split[s]]
    if len(set(everything)) != len(everything):
        raise ValueError(f"{path}: a subject appears twice in the stored split.")
    if missing := sorted(set(everything) - set(found)):
        raise FileNotFoundError(f"{path} names subjects missing (or without {_IMAGE}) in the dataset "
                                f"folder: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return split


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:  # readers never see a half-written split
        Path(tmp).write_text(json.dumps(payload, indent=1))


def open_neurite_oasis(
    root: str | os.PathLike,
    *,
    workdir: str | os.PathLike | None = None,
    split_sizes: Sequence[int] = (300, 30, 84),
    seed: int = 0,
    shape: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
) -> NeuriteOasisDataset:
    """Opens a neurite-oasis folder and fixes its train/val/test split.

    Args:
      root: the extracted ``neurite-oasis.v1.0`` folder (holding ``OASIS_OAS1_*_MR1/``).
      workdir: if given, the split is read from ``workdir/oasis_split.json`` when it exists,
        otherwise written there (atomically).
      split_sizes: numbers of (train, val, test) subjects; set it for a partial download.
      seed: seed of the shuffle that draws the split (unused when a stored split is read).
      shape: spatial shape to resample to, e.g. ``(128, 128, 128)``; None keeps 160x192x224.
      labels: seg35 label values to keep (original values; all others become 0); None keeps all.

    Raises:
      FileNotFoundError: ``root`` or its subject folders are missing, or the stored split
        names subjects missing from ``root``.
      ValueError: bad ``split_sizes``/``shape``/``labels``, fewer subjects than
        ``sum(split_sizes)``, or a malformed stored split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"neurite-oasis folder not found: {root}")
    found = tuple(sorted(p.name for p in root.glob("OASIS_OAS1_*_MR1") if (p / _IMAGE).is_file()))
    if not found:
        raise FileNotFoundError(f"no OASIS_OAS1_*_MR1 subject folders with {_IMAGE} in {root}")
    sizes = tuple(split_sizes)
    if len(sizes) != 3 or not all(isinstance(n, (int, np.integer)) and n >= 0 for n in sizes):
        raise ValueError(f"`split_sizes` must be 3 non-negative integers (train, val, test); got {split_sizes!r}.")
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
            raise ValueError(f"`shape` must be None or 3 positive integers; got {shape!r}.")
        shape = tuple(int(n) for n in shape)
    if labels is not None:
        labels = tuple(labels)
        if not labels or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in labels):
            raise ValueError(f"`labels` must be None or a non-empty sequence of positive integers; got {labels!r}.")
        labels = tuple(int(v) for v in labels)
    split_file = None if workdir is None else Path(workdir) / SPLIT_FILE
    if split_file is not None and split_file.is_file():
        split = _read_split(split_file, found)
    else:
        if len(found) < sum(sizes):
            raise ValueError(f"`split_sizes` {sizes} needs {sum(sizes)} subjects; {root} has {len(found)}. "
                             "Pass smaller split_sizes for a partial download.")
        order = [found[i] for i in np.random.default_rng(seed).permutation(len(found))]
        bounds = np.cumsum((0,) + sizes)
        split = {s: tuple(order[a:b]) for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}
        if split_file is not None:
            _write_json(split_file, {**{s: list(split[s]) for s in SPLITS}, "seed": int(seed),
                                            "root": str(root.resolve())})
    return NeuriteOasisDataset(root=root, subject_ids=found, shape=shape, labels=labels,
                               split_file=split_file, split=split)


def write_neurite_oasis(
    root: str | os.PathLike, *, num_subjects: int = 6, shape: tuple[int, int, int] = (32, 32, 32), seed: int = 0
) -> Path:
    """Writes synthetic subjects in the neurite-oasis layout (for tests and demos).

    Subject ``i`` (1-based) is ``ROOT/OASIS_OAS1_{i:04d}_MR1/`` with ``aligned_norm.nii.gz``
    (float32, the brain-like moving image of a :func:`synthetic_pair` with 35 labels,
    background set to 0 and rescaled to [0, 1]) and ``aligned_seg35.nii.gz`` (int16,
    labels 0..35); identity affine (1 mm voxels).

    Returns:
      ``root``.
    """
    if num_subjects < 1:
        raise ValueError(f"`num_subjects` must be >= 1; got {num_subjects!r}.")
    root = Path(root)
    for i, key in enumerate(jax.random.split(jax.random.key(seed), num_subjects), start=1):
        pair = synthetic_pair(key, shape, anatomy="brain", num_labels=35)
        labels = np.asarray(pair["moving_labels"])
        # Skull-stripped like the real data: nothing outside the brain.
        image = preprocess.rescale_intensity(np.where(labels > 0, np.asarray(pair["moving"]), 0.0), out_range=(0, 1))
        folder = root / f"OASIS_OAS1_{i:04d}_MR1"
        folder.mkdir(parents=True, exist_ok=True)
        io.save_nifti(folder / _IMAGE, image, np.eye(4))
        io.save_nifti(folder / _SEG, labels.astype(np.int16), np.eye(4))
    return root
