"""DiffuseReg's teacher: a frozen trained registration run, and the statistics of its fields.

DiffuseReg learns the fields ``φ₀`` of a one-shot teacher (the paper: VTN; here any trained
jaxreg registration model, e.g. the VoxelMorph demo), z-scored per channel with statistics
computed on the training set. :func:`prepare_diffusion` loads the teacher named by
``diffusion.teacher_workdir``, computes the statistics once and stores them in
``W/diffusion_stats.json`` (a resumed run reads them back, so its targets never change) and
in the run's config (``diffusion.mean``/``std``), so inference needs only the workdir.
``load_teacher`` and ``TEACHER_MODELS`` live in ``jaxreg.runs.restore`` and are
re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxreg.data import pipeline, transforms
from jaxreg.io import atomic_path
from jaxreg.runs.restore import TEACHER_MODELS, load_teacher  # re-exported: a teacher is a trained run

__all__ = ["STATS_FILE", "TEACHER_MODELS", "field_statistics", "load_teacher", "prepare_diffusion"]

STATS_FILE = "diffusion_stats.json"


def field_statistics(teacher: Callable, data, *, limit: int = 0, progress: bool = True) -> dict:
    """Per-channel mean and std (voxels) of the teacher's fields over the training split.

    Returns:
      ``{"mean": [ndim], "std": [ndim], "pairs": n}``.
    """
    predict = jax.jit(teacher)
    total, total_sq, count, pairs = None, None, 0, 0
    records = pipeline.records(data, "train", limit=limit or None)
    total_pairs = pipeline.num_records(data, "train", limit=limit or None)
    factor = pipeline.downsample_factor(data)
    for record in tqdm(records, total=total_pairs, desc="teacher fields", unit="pair", disable=not progress):
        record = transforms.downsample(record, factor)  # the teacher's fields at the training size
        ddf = np.asarray(predict(np.asarray(record["fixed"])[None], np.asarray(record["moving"])[None]), np.float64)[0]
        flat = ddf.reshape(-1, ddf.shape[-1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
        count, pairs = count + flat.shape[0], pairs + 1
    if not pairs:
        raise ValueError("the training split has no pairs to compute the teacher's field statistics on.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist(), "pairs": pairs}


def prepare_diffusion(config: ml_collections.ConfigDict, workdir, *, is_main: bool = True
                      ) -> tuple[ml_collections.ConfigDict, Callable]:
    """The config with ``diffusion.mean``/``std`` filled, and the teacher function.

    Reads ``W/diffusion_stats.json`` when a previous start wrote it; otherwise computes the
    statistics on ``diffusion.stats_pairs`` training pairs (0: all) and writes it.
    """
    diffusion = config.diffusion
    _, teacher = load_teacher(diffusion.get("teacher_workdir"), step=diffusion.get("teacher_step", "latest"))
    path = Path(workdir) / STATS_FILE
    if path.is_file():
        stats = json.loads(path.read_text())
    else:
        stats = field_statistics(teacher, config.data, limit=int(diffusion.get("stats_pairs", 0) or 0),
                                 progress=bool(config.training.get("progress", True)) and is_main)
        if is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(stats, indent=2) + "\n")
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    config.diffusion.mean, config.diffusion.std = list(stats["mean"]), list(stats["std"])
    return config, teacher
