"""Models: the VoxelMorph U-Net and one-shot network; a registry from config names.

``build(config.model, config.loss)`` returns a :class:`Method`, everything training and
evaluation need to know about a model:

* ``module``: the Flax module;
* ``init(key, batch)``: parameters for a batch of the input pipeline;
* ``loss_fn(params, batch, key) -> (loss, metrics)``: what the shared train step differentiates;
* ``predict(params, fixed, moving) -> ddf``: registration of ``(B, *S)`` images, the
  ``(B, *S, ndim)`` displacement (voxels, pull).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax

from jaxreg.models import unet, voxelmorph
from jaxreg.models.unet import UNet
from jaxreg.models.voxelmorph import VoxelMorph

__all__ = ["MODELS", "Method", "UNet", "VoxelMorph", "build", "unet", "voxelmorph"]


class Method(NamedTuple):
    """A registration method as the training suite sees it (see the module docstring)."""

    module: object
    init: Callable[[jax.Array, Mapping], dict]
    loss_fn: Callable
    predict: Callable[[dict, jax.Array, jax.Array], jax.Array]


def _voxelmorph(model: Mapping, loss: Mapping) -> Method:
    module = VoxelMorph(encoder=tuple(model.get("encoder", unet.ENCODER)), decoder=tuple(model.get("decoder", unet.DECODER)),
                        integration_steps=int(model.get("integration_steps", 0)))
    loss_fn = voxelmorph.make_loss_fn(module, similarity=loss.get("similarity", "lncc"), window=int(loss.get("window", 9)),
                                      weight=float(loss.get("weight", 0.01)))

    def init(key, batch):
        return module.init(key, batch["fixed"][..., None], batch["moving"][..., None])

    def predict(params, fixed, moving):
        return module.apply(params, fixed[..., None], moving[..., None])

    return Method(module, init, loss_fn, predict)


MODELS = {"voxelmorph": _voxelmorph}


def build(model: Mapping, loss: Mapping) -> Method:
    """The :class:`Method` for ``model.name`` (a key of ``MODELS``)."""
    name = model.get("name")
    if name not in MODELS:
        raise ValueError(f"`model.name` must be one of {tuple(MODELS)}; got {name!r}.")
    return MODELS[name](model, loss)
