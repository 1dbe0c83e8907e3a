"""A DiffuseReg run small enough for tests: tiny.py's 16³ data, a 1-block-per-stage denoiser, T = 20.

The teacher workdir is given on the command line (``--config.diffusion.teacher_workdir``).
"""

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CONFIGS = _HERE.parents[1] / "configs"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _load(_HERE / "tiny.py", "tiny").get_config()
    default = _load(_CONFIGS / "default.py", "default")
    default.diffusereg_model(config.model, config.loss)
    config.model.features = 8
    config.model.depths = (1, 1)
    config.model.heads = (2, 2)
    config.model.window = (2, 2, 2)
    config.loss.ssim_window = 5
    config.diffusion = default.diffusion_section()
    config.diffusion.num_steps = 20
    config.diffusion.condition_dropout = 0.5
    config.diffusion.sampler.steps = 3
    config.training.num_steps = 2
    config.training.eval_every = 2
    config.training.checkpoint_every = 2
    config.training.val_pairs = 1
    config.eval.num_figures = 1
    config.eval.save_disp = False
    config.eval.with_hd95 = False
    config.eval.observe_frames = 2
    config.eval.uncertainty_samples = 2
    return config
