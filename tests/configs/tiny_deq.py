"""A DEQReg run small enough for tests: 16² synthetic brains, a 2-level U-Net, T = 4 solver steps.

``tiny_2d()`` is the shared base of this config and ``tiny_unroll.py`` (the same data,
loss and schedule as ``tiny.py``, in 2-D).
"""

import importlib.util
from pathlib import Path

_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_2d():
    """The 2-D demo shrunk: 16² pairs with 4 labels, 2 training steps, no validation."""
    config = _load("voxelmorph_demo").get_config("2d")
    config.data.num_pairs = {"train": 4, "val": 2, "test": 3}
    config.data.options.shape = (16, 16)
    config.data.options.num_labels = 4
    config.data.batch_size = 1
    config.data.num_threads = 1
    config.model.encoder = (4, 8)
    config.model.decoder = (8, 8, 4)
    config.model.integration_steps = 0
    config.loss.window = 5
    config.loss.weight = 0.1
    config.optimizer.decay_steps = 2
    config.optimizer.warmup_steps = 0
    config.training.num_steps = 2
    config.training.log_every = 1
    config.training.eval_every = 0
    config.training.checkpoint_every = 2
    config.training.ema_decay = 0.0
    config.training.async_checkpoints = False
    config.training.tensorboard = False
    config.training.progress = False
    return config


def get_config(arg=None):
    """Tiny DEQReg: Anderson, T = 4 steps, S = 2 corrected states (``arg`` unused)."""
    del arg
    default = _load("default")
    config = tiny_2d()
    default.deqreg_model(config.model)
    config.model.correction_states = 2
    config.solver = default.deq_solver()
    config.solver.max_steps = 4
    return config
