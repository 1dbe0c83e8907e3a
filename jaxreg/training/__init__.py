"""Training: optimiser, train state, the shared train step, sharding, checkpoints, the loop."""

from jaxreg.training import (
           checkpoints,
           optimizer,
           sharding,
           state,
           validation,
           workdir,
           writers,
)
from jaxreg.training.checkpoints import Checkpoints
from jaxreg.training.loop import train_and_evaluate, validate
from jaxreg.training.optimizer import make_optimizer, make_schedule
from jaxreg.training.state import TrainState, create_state, make_train_step
from jaxreg.training.validation import pair_metrics, summarize
from jaxreg.training.workdir import load_config, save_config
from jaxreg.training.writers import MetricWriter, read_metrics

__all__ = ["Checkpoints", "MetricWriter", "TrainState", "checkpoints", "create_state", "load_config", "make_optimizer",
           "make_schedule", "make_train_step", "optimizer", "pair_metrics", "read_metrics", "save_config", "sharding",
           "state", "summarize", "train_and_evaluate", "validate", "validation", "workdir", "writers"]
