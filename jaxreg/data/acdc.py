"""ACDC cardiac cine-MRI: end-diastole / end-systole pairs of one patient.

Layout (the ``database`` folder of the ACDC challenge download)::

    ROOT/training/patient001 .. patient100/   ROOT/testing/patient101 .. patient150/
        Info.cfg                        # "ED: 1", "ES: 12", "Group: DCM", "Height: 184.0", ...
        patientNNN_frameXX.nii.gz       # XX = the ED and ES frame numbers (1-based, 2 digits)
        patientNNN_frameXX_gt.nii.gz    # labels 0 background, 1 RV, 2 Myo, 3 LV (optional here)
        patientNNN_4d.nii.gz            # the whole cine sequence (not used)

Frames are stored ``(X, Y, Z)``: the short-axis plane, then the few slices (e.g.
216 x 256 x 10 at 1.5625 x 1.5625 x 10 mm). A frame is addressed by the key
``"patient001/ED"`` or ``"patient001/ES"``; pairs are ED fixed, ES moving.

The public files keep the voxel size only in ``pixdim``: their sform (``sform_code = 2``)
is ``diag(-1, -1, 1)`` and their qform is unset, so nibabel's ``img.affine`` says 1 mm
voxels. Frames are read with :func:`jaxreg.io.load_nifti`, which reads the header as ITK
does (:func:`jaxreg.io.nifti_geometry`: spacing from ``pixdim``, orientation and origin
from the sform), so resampling sees the real 10 mm slices.

Preprocessing, per frame and in this order (the DiffuseReg protocol by default):

1. resample to ``spacing`` (mm, file axis order) — linear for images, nearest for labels;
2. transpose to ``(D, H, W) = (file Z, file X, file Y)``, slices first;
3. centre crop / pad to ``shape`` (images padded with their minimum, labels with 0);
4. rescale intensities linearly to ``out_range`` (optionally between ``percentiles``).

Each step updates the affine, so the returned ``affine`` maps output voxels to the same
world points (mm) as the file does, and ``spacing`` is the voxel size along the output axes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxreg import io
from jaxreg.data import preprocess
from jaxreg.data.learn2reg import SPLITS
from jaxreg.data.pairs import make_pair, read_image
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["LABELS", "PHASES", "ACDCDataset", "open_acdc", "read_info", "write_acdc"]

PHASES = ("ED", "ES")
LABELS = {1: "RV", 2: "Myo", 3: "LV"}
_INTS, _FLOATS = ("ED", "ES", "NbFrame"), ("Height", "Weight")
_PATIENT = re.compile(r"patient\d+")
_TO_DHW = (2, 0, 1)  # file (X, Y, Z) -> (Z, X, Y)


def read_info(path: str | os.PathLike) -> dict[str, int | float | str]:
    """Parses a patient's ``Info.cfg`` (``Name: value`` lines).

    Returns:
      dict with ints ``ED``, ``ES`` (1-based frame numbers) and ``NbFrame``, floats
      ``Height`` (cm) and ``Weight`` (kg), and any other field as a string (``Group``).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a line is not ``Name: value``, a number does not parse, or ED/ES is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ACDC Info.cfg not found: {path}")
    info: dict[str, int | float | str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = (part.strip() for part in line.partition(":"))
        if not sep or not name:
            raise ValueError(f"{path}: line {number} must be 'Name: value'; got {line!r}")
        try:
            info[name] = int(value) if name in _INTS else float(value) if name in _FLOATS else value
        except ValueError:
            kind = "an integer" if name in _INTS else "a number"
            raise ValueError(f"{path}: {name} must be {kind}; got {value!r}") from None
    for phase in PHASES:
        if phase not in info:
            raise ValueError(f"{path} must give the {phase} frame as a line '{phase}: <frame>'; "
                             f"got the fields {sorted(info)}")
        if info[phase] < 1:
            raise ValueError(f"{path}: {phase} is a 1-based frame number; got {info[phase]}")
    return info


def _parse_key(key: str) -> tuple[str, str]:
    """``"patient001/ED"`` -> ``("patient001", "ED")``."""
    patient, sep, phase = key.partition("/") if isinstance(key, str) else ("", "", "")
    if not sep or not _PATIENT.fullmatch(patient):
        raise ValueError(f"an ACDC key must look like 'patient001/ED' or 'patient001/ES'; got {key!r}")
    if phase not in PHASES:
        raise ValueError(f"the phase of ACDC key {key!r} must be one of {PHASES}; got {phase!r}")
    return patient, phase


@dataclass(frozen=True)
class ACDCDataset:
    """An ACDC ``database`` folder with its preprocessing. Build it with :func:`open_acdc`.

    Attributes:
      root: the folder holding ``training/`` (and ``testing/``).
      spacing: target voxel size (mm, file axis order X, Y, Z), or None to keep the file's.
      shape: output ``(D, H, W)`` after crop/pad, or None to keep the resampled size.
      out_range: ``(low, high)`` of the rescaled intensities, or None to keep them.
      percentiles: intensity percentiles mapped to ``out_range`` (None: min and max).
      split_patients: for each split, the patient names (sorted).
      folders: patient name -> its folder.
    """

    root: Path
    spacing: tuple[float, float, float] | None
    shape: tuple[int, int, int] | None
    out_range: tuple[float, float] | None
    percentiles: tuple[float, float] | None
    split_patients: dict[str, tuple[str, ...]] = field(repr=False)
    folders: dict[str, Path] = field(repr=False)

    def patients(self, split: str) -> tuple[str, ...]:
        """Patient names of a split (``"train"``, ``"val"``, ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
        return self.split_patients[split]

    def pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """``(fixed, moving)`` keys of a split: ``("patientNNN/ED", "patientNNN/ES")`` per patient."""
        return tuple((f"{p}/ED", f"{p}/ES") for p in self.patients(split))

    def folder(self, patient: str) -> Path:
        """The folder of a patient (``"patient001"``), under ``training/`` or ``testing/``."""
        if patient not in self.folders:
            raise FileNotFoundError(f"ACDC patient folder not found: {self.root / 'training' / patient} "
                                    f"(nor under {self.root / 'testing'})")
        return self.folders[patient]

    def info(self, patient: str) -> dict[str, int | float | str]:
        """The patient's parsed ``Info.cfg`` (see :func:`read_info`)."""
        return read_info(self.folder(patient) / "Info.cfg")

    def load_image(self, key: str) -> dict[str, np.ndarray]:
        """One preprocessed frame.

        Args:
          key: ``"patientNNN/ED"`` or ``"patientNNN/ES"``.

        Returns:
          dict with ``image`` float32 ``(D, H, W)``, ``affine`` ``(4, 4)`` (output voxel ->
          world mm), ``spacing`` ``(3,)`` float64 mm along the output axes, and, when the
          ``_gt`` file exists, ``labels`` int32 ``(D, H, W)`` (0 bg, 1 RV, 2 Myo, 3 LV).
        """
        patient, phase = _parse_key(key)
        folder = self.folder(patient)
        frame = int(read_info(folder / "Info.cfg")[phase])
        path = folder / f"{patient}_frame{frame:02d}.nii.gz"
        gt = path.with_name(f"{patient}_frame{frame:02d}_gt.nii.gz")
        record = read_image(path, labels=gt if gt.is_file() else None, ndim=3,
                            missing=f"ACDC {phase} frame {frame} (from Info.cfg) not found")
        image, affine, labels = record["image"], record["affine"], record.get("labels")

        if self.spacing is not None:
            if labels is not None:
                labels, _ = preprocess.resample_to_spacing(labels, affine, self.spacing, order=0)
            image, affine = preprocess.resample_to_spacing(image, affine, self.spacing, order=1)
        # Slices first, as the papers' (D, H, W); permuting the affine's columns the same way
        # keeps voxel (d, h, w) at the world point of file voxel (h, w, d).
        image = np.ascontiguousarray(image.transpose(_TO_DHW))
        labels = None if labels is None else np.ascontiguousarray(labels.transpose(_TO_DHW))
        affine = affine[:, [*_TO_DHW, 3]]
        if self.shape is not None:
            if labels is not None:
                labels, _ = preprocess.crop_or_pad(labels, affine, self.shape, cval=0)
            # Padding with the minimum makes the padded border background after rescaling.
            image, affine = preprocess.crop_or_pad(image, affine, self.shape, cval=float(image.min()))
        if self.out_range is not None:
            image = preprocess.rescale_intensity(image, out_range=self.out_range, percentiles=self.percentiles)
        out = {"image": image.astype(np.float32, copy=False), "affine": affine,
               "spacing": preprocess.spacing_of(affine)}
        if labels is not None:
            out["labels"] = labels.astype(np.int32, copy=False)
        return out

    def load_pair(self, fixed_key: str, moving_key: str) -> dict[str, np.ndarray]:
        """A registration pair (any two frame keys) as a dict of numpy arrays.

        Keys: ``fixed``, ``moving`` float32 ``(D, H, W)``, ``spacing`` (fixed, mm, output
        axes), ``moving_spacing``, ``affine`` (fixed), ``ids`` (``"patient001_ED_ES"``, or
        ``"patient001_ED_patient002_ES"`` across patients) and, when both frames have
        ground truth, ``fixed_labels``/``moving_labels`` int32 ``(D, H, W)``.
        """
        (fp, fphase), (mp, mphase) = _parse_key(fixed_key), _parse_key(moving_key)
        ids = f"{fp}_{fphase}_{mphase}" if fp == mp else f"{fp}_{fphase}_{mp}_{mphase}"
        return make_pair(self.load_image(fixed_key), self.load_image(moving_key), ids=ids,
                         where=f"ACDC pair ({fixed_key!r}, {moving_key!r}; pass `shape` to open_acdc to crop/pad)")


def _patients(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _PATIENT.fullmatch(p.name))


def _positive(value, n: int, name: str, kind=float):
    if value is None:
        return None
    out = tuple(kind(v) for v in value)
    if len(out) != n or any(v <= 0 for v in out):
        raise ValueError(f"`{name}` must be {n} positive values or None; got {value!r}")
    return out


def open_acdc(
    root: str | os.PathLike,
    *,
    num_val: int = 0,
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 3.15),
    shape: tuple[int, int, int] | None = (32, 128, 128),
    out_range: tuple[float, float] | None = (-1.0, 1.0),
    percentiles: tuple[float, float] | None = None,
) -> ACDCDataset:
    """Opens an ACDC ``database`` folder (or a folder that contains ``database/``).

    Args:
      root: the folder holding ``training/patientNNN`` (and ``testing/patientNNN``).
      num_val: the last ``num_val`` training patients (sorted) form ``"val"``; the rest
        ``"train"``; ``testing/`` is ``"test"`` (the papers use 100 train / 50 test).
      spacing: resample to this voxel size (mm, file axis order X, Y, Z); None: no resampling.
      shape: centre crop/pad the ``(D, H, W)`` output to this; None: keep the size.
      out_range: rescale intensities linearly to ``(low, high)``; None: keep them.
      percentiles: e.g. ``(0.5, 99.5)``: map these percentiles (not min/max) to
        ``out_range``, clipping beyond.

    Raises:
      FileNotFoundError: ``root``, ``root/training`` or its patient folders are missing.
      ValueError: bad ``num_val``, ``spacing``, ``shape``, ``out_range`` or ``percentiles``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ACDC folder not found: {root}")
    if not (root / "training").is_dir() and (root / "database" / "training").is_dir():
        root = root / "database"
    training = _patients(root / "training")
    if not training:
        raise FileNotFoundError(f"ACDC folder {root} must hold training/patientNNN folders; found none "
                                f"in {root / 'training'}")
    if not 0 <= num_val <= len(training):
        raise ValueError(f"`num_val` must be in [0, {len(training)}] (the training patients); got {num_val}")
    if out_range is not None and (len(out_range) != 2 or not out_range[0] < out_range[1]):
        raise ValueError(f"`out_range` must be (low, high) with low < high, or None; got {out_range!r}")
    if percentiles is not None and (out_range is None or len(percentiles) != 2
                                    or not 0 <= percentiles[0] < percentiles[1] <= 100):
        raise ValueError(f"`percentiles` must be (lo, hi) with 0 <= lo < hi <= 100, and needs `out_range`; "
                         f"got {percentiles!r} with out_range={out_range!r}")
    testing = _patients(root / "testing")
    folders = {p: root / "training" / p for p in training} | {p: root / "testing" / p for p in testing}
    cut = len(training) - num_val
    return ACDCDataset(
        root=root,
        spacing=_positive(spacing, 3, "spacing"),
        shape=_positive(shape, 3, "shape", int),
        out_range=None if out_range is None else (float(out_range[0]), float(out_range[1])),
        percentiles=None if percentiles is None else (float(percentiles[0]), float(percentiles[1])),
        split_patients={"train": tuple(training[:cut]), "val": tuple(training[cut:]), "test": tuple(testing)},
        folders=folders,
    )


def write_acdc(
    root: str | os.PathLike,
    *,
    num_train: int = 4,
    num_test: int = 2,
    shape: tuple[int, int, int] = (40, 36, 8),
    spacing: tuple[float, float, float] = (1.5625, 1.5625, 10.0),
    seed: int = 0,
) -> Path:
    """Writes a synthetic ACDC ``database`` folder in the real layout (without ``_4d`` files).

    Training patients are ``patient001..`` ``num_train``, testing patients ``patient101..``.
    Each patient is one cardiac :func:`synthetic_pair`: fixed -> the ED frame (1), moving
    (contracted) -> the ES frame (random in 8..15), both with ``_gt`` labels (uint8; 1 RV,
    2 Myo, 3 LV), images float32, affine ``diag(spacing)``, plus an ``Info.cfg``.

    Args:
      root: the folder to write (created if needed).
      num_train: patients in ``training/`` (1..100).
      num_test: patients in ``testing/`` (0..50).
      shape: frame size ``(X, Y, Z)``; X, Y >= 16 (the short-axis plane).
      spacing: voxel size ``(X, Y, Z)`` in mm.
      seed: same seed, same database.

    Returns:
      ``root``.
    """
    if not 1 <= num_train <= 100 or not 0 <= num_test <= 50:
        raise ValueError(f"need 1 <= num_train <= 100 and 0 <= num_test <= 50; got {num_train=} and {num_test=}")
    sx, sy, sz = (int(s) for s in shape)
    if min(sx, sy) < 16 or sz < 1:
        raise ValueError(f"`shape` must be (X, Y, Z) with X, Y >= 16 and Z >= 1; got {shape!r}")
    root = Path(root)
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), num_train + num_test)
    numbers = [*range(1, num_train + 1), *range(101, 101 + num_test)]
    # The generator needs >= 16 voxels per axis: draw the slices on a finer grid and keep Z
    # of them evenly spaced, like thick short-axis slices. Rings lie in its last two axes.
    depth = max(sz, 16)
    rows = np.rint(np.linspace(0, depth - 1, sz)).astype(int)
    (root / "testing").mkdir(parents=True, exist_ok=True)
    for number, key in zip(numbers, keys, strict=True):
        name = f"patient{number:03d}"
        folder = root / ("training" if number <= 100 else "testing") / name
        folder.mkdir(parents=True, exist_ok=True)
        es = int(rng.integers(8, 16))
        pair = synthetic_pair(key, (depth, sx, sy), anatomy="cardiac")
        for frame, which in ((1, "fixed"), (es, "moving")):
            image = np.asarray(pair[which])[rows].transpose(1, 2, 0).astype(np.float32)
            labels = np.asarray(pair[f"{which}_labels"])[rows].transpose(1, 2, 0).astype(np.uint8)
            io.save_nifti(folder / f"{name}_frame{frame:02d}.nii.gz", image, affine)
            io.save_nifti(folder / f"{name}_frame{frame:02d}_gt.nii.gz", labels, affine)
        info = {
            "ED": 1,
            "ES": es,
            "Group": str(rng.choice(["NOR", "MINF", "DCM", "HCM", "RV"])),
            "Height": round(float(rng.uniform(150.0, 195.0)), 1),
            "NbFrame": int(rng.integers(max(es + 5, 20), 36)),
            "Weight": round(float(rng.uniform(50.0, 110.0)), 1),
        }
        with io.atomic_path(folder / "Info.cfg") as tmp:  # never a half-written Info.cfg
            Path(tmp).write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    return root
