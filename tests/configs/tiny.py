"""A run small enough for tests: 16³ synthetic brains, a 2-level U-Net, a handful of steps."""

import importlib.util
from pathlib import Path

_DEMO = Path(__file__).resolve().parents[2] / "configs" / "voxelmorph_demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("voxelmorph_demo", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _demo().get_config("3d")
    config.data.num_pairs = {"train": 8, "val": 2, "test": 3}
    config.data.options.shape = (16, 16, 16)
    config.data.options.num_labels = 4
    config.data.num_threads = 1
    config.model.encoder = (4, 8)
    config.model.decoder = (8, 8, 4)
    config.model.integration_steps = 0
    config.loss.window = 5
    config.optimizer.decay_steps = 6
    config.optimizer.warmup_steps = 1
    config.training.num_steps = 6
    config.training.log_every = 2
    config.training.eval_every = 3
    config.training.checkpoint_every = 3
    config.training.val_pairs = 2
    config.training.ema_decay = 0.5
    config.training.progress = False
    config.eval.num_figures = 2
    config.eval.save_disp = True
    return config
