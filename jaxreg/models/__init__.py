"""Models: the VoxelMorph U-Net and one-shot network; a registry from config names.

``build(config.model, config.loss)`` returns ``(module, loss_fn)``: a Flax module called as
``module.apply(params, fixed, moving)`` on ``(B, *S, 1)`` images, and the per-method
``loss_fn(params, batch, key) -> (loss, metrics)`` the shared train step differentiates.
"""

from __future__ import annotations

from collections.abc import Mapping

from jaxreg.models import unet, voxelmorph
from jaxreg.models.unet import UNet
from jaxreg.models.voxelmorph import VoxelMorph

__all__ = ["MODELS", "UNet", "VoxelMorph", "build", "unet", "voxelmorph"]


def _voxelmorph(model: Mapping, loss: Mapping):
    module = VoxelMorph(encoder=tuple(model.get("encoder", unet.ENCODER)), decoder=tuple(model.get("decoder", unet.DECODER)),
                        integration_steps=int(model.get("integration_steps", 0)))
    loss_fn = voxelmorph.make_loss_fn(module, similarity=loss.get("similarity", "lncc"), window=int(loss.get("window", 9)),
                                      weight=float(loss.get("weight", 0.01)))
    return module, loss_fn


MODELS = {"voxelmorph": _voxelmorph}


def build(model: Mapping, loss: Mapping):
    """``(module, loss_fn)`` for ``model.name`` (a key of ``MODELS``)."""
    name = model.get("name")
    if name not in MODELS:
        raise ValueError(f"`model.name` must be one of {tuple(MODELS)}; got {name!r}.")
    return MODELS[name](model, loss)
