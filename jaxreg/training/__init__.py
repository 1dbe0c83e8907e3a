"""Training: optimiser, train state and the shared train step."""

from jaxreg.training import optimizer, state
from jaxreg.training.optimizer import make_optimizer, make_schedule
from jaxreg.training.state import TrainState, create_state, make_train_step

__all__ = ["TrainState", "create_state", "make_optimizer", "make_schedule", "make_train_step", "optimizer", "state"]
