"""jaxreg: deformable medical image registration in JAX.

``jaxreg.register(fixed, moving)`` registers a pair: classical optimisation by default
(``jaxreg.optimize``), or a trained model (``model=workdir`` or ``jaxreg.load_model``).
``jaxreg.apply(transform, image)`` applies a saved registration to another image
(``jaxreg.transform``: the transform as data, its inverse, save/load, export to ITK/ANTs).

The spatial toolbox is re-exported at the top level (``jaxreg.warp``, ...); losses and
metrics live in their modules because both define ``dice`` with opposite directions
(``jaxreg.losses.dice`` is lower-is-better, ``jaxreg.metrics.dice`` higher-is-better).
"""

from jaxreg import io, losses, metrics, optimize, optimize_affine, spatial, transform
from jaxreg.register import Model, Registration, load_model, register, register_stages, register_traceable
from jaxreg.spatial import (
    affine_ddf,
    compose,
    identity_grid,
    integrate_velocity,
    resize_ddf,
    warp,
    warp_points,
)
from jaxreg.transform import apply

__version__ = "0.1.0"

#: Loaded on first use (``jaxreg.data.synthetic_pair`` works after ``import jaxreg``): data brings
#: grain and orbax, training flax, ml_collections and tqdm, evaluation orbax (checkpoints) and
#: matplotlib (figures), none of which registering a pair needs.
_LAZY_MODULES = ("data", "evaluation", "training")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        import importlib

        module = importlib.import_module(f"jaxreg.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")

__all__ = [
    "Model",
    "Registration",
    "__version__",
    "affine_ddf",
    "apply",
    "compose",
    "data",
    "evaluation",
    "identity_grid",
    "integrate_velocity",
    "io",
    "load_model",
    "losses",
    "metrics",
    "optimize",
    "optimize_affine",
    "register",
    "register_stages",
    "register_traceable",
    "resize_ddf",
    "spatial",
    "training",
    "transform",
    "warp",
    "warp_points",
]
