"""A ``train.py`` workdir on disk: its config, checkpoints and metrics log, and loading a trained run.

Training writes these; evaluation, ``jaxreg.load_model`` and DiffuseReg's teacher read them
back (:func:`jaxreg.runs.restore.load_run`). The package sits below both training and
evaluation, so neither imports the other.
"""

from jaxreg.runs import checkpoints, restore, workdir, writers
from jaxreg.runs.checkpoints import Checkpoints
from jaxreg.runs.restore import Run, load_run, load_teacher, resolve_step
from jaxreg.runs.workdir import apply_overrides, load_config, save_config
from jaxreg.runs.writers import MetricWriter, read_metrics

__all__ = ["Checkpoints", "MetricWriter", "Run", "apply_overrides", "checkpoints", "load_config", "load_run",
           "load_teacher", "read_metrics", "resolve_step", "restore", "save_config", "workdir", "writers"]
