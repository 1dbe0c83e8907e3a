"""An unrolled baseline small enough for tests: ``tiny_deq.py``'s 16² data, T = 2 steps."""

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    """Tiny unrolled baseline; ``arg`` is ``"variant[,T]"`` (default ``"vanilla,2"``)."""
    config = _load(_HERE / "tiny_deq.py").tiny_2d()
    _load(_HERE.parents[1] / "configs" / "default.py").unroll_model(config.model, arg or "vanilla,2", levels=1)
    return config
