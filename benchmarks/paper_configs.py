"""The papers' configs and volume sizes, shared by ``benchmarks/gpu.py`` and ``benchmarks/memory.py --paper``.

``load(name)`` is ``configs/<name>.py``'s ``get_config(arg)``; ``paper_shape(name, config)`` the
volume size the config trains at (NLST 224×192×224 halved by ``data.downsample``: 112×96×112;
OASIS 128³ as DEQReg trains it; ACDC 32×128×128), scaled by ``scale`` and rounded to the
network's multiple. ``PAPER_MB`` holds the
training memory the papers report (DEQReg Table 1; DiffuseReg reports none).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("deqreg_nlst", "unroll_nlst", "voxelmorph_nlst", "deqreg_oasis", "unroll_oasis", "voxelmorph_oasis",
           "diffusereg_acdc")
SHAPES = {"nlst": (224, 192, 224), "oasis": (128, 128, 128), "acdc": (32, 128, 128)}
#: Training memory (MB) in DEQReg's Table 1, by config name (and ``unroll_<dataset>:<variant>``).
PAPER_MB = {"deqreg_nlst": 3983, "deqreg_oasis": 6925, "voxelmorph_nlst": 1522, "voxelmorph_oasis": 2645,
            "unroll_nlst:riir": 7029, "unroll_nlst:gradirn": 9313, "unroll_oasis:riir": 12542,
            "unroll_oasis:gradirn": 16619}


def load(name: str, arg: str | None = None):
    """``configs/<name>.py``'s config for ``arg`` (e.g. ``"riir"`` for ``unroll_nlst``).

    Raises:
      ValueError: ``name`` is not one of ``CONFIGS``.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {CONFIGS}.")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(f"configs.{name}")
    return module.get_config(arg) if arg is not None else module.get_config()


def paper_shape(name: str, config, scale: float = 1.0) -> tuple[int, ...]:
    """The size config ``name`` trains at: its dataset's paper size over ``data.downsample`` (NLST:
    112×96×112), scaled and rounded to the network's multiple."""
    from jaxreg.models import unet

    factor = int(config.data.get("downsample", 1) or 1)
    base = tuple(s // factor for s in SHAPES[name.rsplit("_", 1)[1]])
    model = config.model
    if model.name == "diffusereg":  # Swin-UNETR: patch · 2**stages
        factor = int(model.get("patch", 2)) * 2 ** len(model.get("depths") or (2, 2, 2, 2))
    else:
        factor = 2 ** len(model.get("encoder") or unet.ENCODER)
    return tuple(max(factor, int(round(s * scale / factor)) * factor) for s in base)


def build_method(config, shape: tuple[int, ...]):
    """The config's :class:`jaxreg.methods.Method`; DiffuseReg gets a VoxelMorph teacher with random
    weights (a trained one costs the same) and unit field statistics."""
    import jax
    import jax.numpy as jnp

    from jaxreg import methods

    teacher = None
    if config.model.name == "diffusereg":
        net = methods.build({"name": "voxelmorph"}, {"similarity": "mse"})
        images = {k: jnp.zeros((1, *shape), jnp.float32) for k in ("fixed", "moving")}
        teacher_params = net.init(jax.random.key(2), images)
        teacher = lambda f, m: net.predict(teacher_params, f, m)  # noqa: E731
        config.diffusion.mean, config.diffusion.std = [0.0] * 3, [1.0] * 3
    return methods.build_from_config(config, teacher=teacher)
