"""Training: optimiser, train state, the shared train step, the loop.

What a run leaves on disk (config, checkpoints, metrics log) and how it is loaded back is
``jaxreg.runs``; the mesh is ``jaxreg.sharding``; the validation metrics are
``jaxreg.scoring``. The names users reach for are re-exported here.
"""

from jaxreg.runs.checkpoints import Checkpoints
from jaxreg.runs.workdir import load_config, save_config
from jaxreg.runs.writers import MetricWriter, read_metrics
from jaxreg.scoring import pair_metrics, summarize
from jaxreg.training import loop, optimizer, state
from jaxreg.training.loop import train_and_evaluate, validate
from jaxreg.training.optimizer import make_optimizer, make_schedule
from jaxreg.training.state import TrainState, create_state, make_train_step

__all__ = ["Checkpoints", "MetricWriter", "TrainState", "create_state", "load_config", "loop", "make_optimizer",
           "make_schedule", "make_train_step", "optimizer", "pair_metrics", "read_metrics", "save_config", "state",
           "summarize", "train_and_evaluate", "validate"]
