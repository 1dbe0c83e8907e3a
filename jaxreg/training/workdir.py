"""A run's working directory: the config it was started with, and where things go.

``W/config.json`` (the full config, overrides applied), ``W/checkpoints/``,
``W/metrics.jsonl``, ``W/tensorboard/`` and ``W/eval/<split>/``. Saving the config makes
``eval.py --workdir W`` and a resumed ``train.py`` need nothing but the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from jaxreg.io import atomic_path

__all__ = ["CONFIG_FILE", "load_config", "save_config"]

CONFIG_FILE = "config.json"


def save_config(config: ml_collections.ConfigDict, workdir) -> Path:
    """Writes ``config`` to ``W/config.json`` (atomically) and returns the path."""
    path = Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(config.to_json_best_effort(indent=2, sort_keys=False) + "\n")
    return path


def load_config(workdir) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was trained with.

    Raises:
      FileNotFoundError: ``workdir`` or its ``config.json`` does not exist.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir {str(workdir)!r} does not exist; train first: "
                                f"python train.py --config configs/<name>.py --workdir {workdir}")
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {str(workdir)!r} is not a jaxreg training workdir.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
