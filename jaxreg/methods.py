"""The registration methods by config name: what training, evaluation and ``register`` build.

Registered names (``METHODS``): ``"voxelmorph"`` (``jaxreg.models.voxelmorph``), ``"deqreg"``
(``jaxreg.deq.model``), ``"unroll"`` (the unrolled baselines, ``jaxreg.deq.unroll``) and
``"diffusereg"`` (``jaxreg.diffusion.model``).

``build(config.model, config.loss)`` (or :func:`build_from_config`) returns a
:class:`Method`, everything training and evaluation need to know about a model:

* ``module``: the Flax module;
* ``init(key, batch)``: parameters for a batch of the input pipeline;
* ``loss_fn(params, batch, key) -> (loss, metrics)``: what the shared train step differentiates;
* ``predict(params, fixed, moving) -> ddf``: registration of ``(B, *S)`` images, the
  ``(B, *S, ndim)`` displacement (voxels, pull).

This module sits above the networks (``jaxreg.models``) and the two papers' methods
(``jaxreg.deq``, ``jaxreg.diffusion``), so the imports run one way (docs/index.md; tests/test_imports.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax

from jaxreg.deq.model import DEQReg
from jaxreg.deq.unroll import Unrolled
from jaxreg.diffusion.model import DENOISER_FIELDS, DiffuseReg
from jaxreg.models import unet, voxelmorph
from jaxreg.models.voxelmorph import VoxelMorph

__all__ = ["METHODS", "Method", "build", "build_from_config"]


class Method(NamedTuple):
    """A registration method as the training suite sees it (see the module docstring)."""

    module: object
    init: Callable[[jax.Array, Mapping], dict]
    loss_fn: Callable
    predict: Callable[[dict, jax.Array, jax.Array], jax.Array]


def _voxelmorph(model: Mapping, loss: Mapping, solver: Mapping, **_) -> Method:
    del solver
    module = VoxelMorph(encoder=tuple(model.get("encoder", unet.ENCODER)), decoder=tuple(model.get("decoder", unet.DECODER)),
                        integration_steps=int(model.get("integration_steps", 0)), dtype=_dtype(model))
    loss_fn = voxelmorph.make_loss_fn(module, similarity=loss.get("similarity", "lncc"), window=int(loss.get("window", 9)),
                                      weight=float(loss.get("weight", 0.01)))

    def init(key, batch):
        return module.init(key, batch["fixed"][..., None], batch["moving"][..., None])

    def predict(params, fixed, moving):
        return module.apply(params, fixed[..., None], moving[..., None])

    return Method(module, init, loss_fn, predict)


def _dtype(model: Mapping) -> str:
    """``model.dtype`` checked (configs saved before the option lack it: float32)."""
    name = model.get("dtype") or "float32"
    unet.activation_dtype(name)
    return str(name)


def _loss_options(loss: Mapping, *, window: int) -> dict:
    return {"similarity": loss.get("similarity", "lncc"), "window": int(loss.get("window", window)),
            "weight": float(loss.get("weight", 0.1))}


def _deqreg(model: Mapping, loss: Mapping, solver: Mapping, **_) -> Method:
    solver = dict(solver or {})
    options = {k: solver.pop(k) for k in ("backward", "phantom_steps", "phantom_damping", "phantom_remat") if k in solver}
    adjoint = {}  # the "ift" adjoint's own options (config: solver.adjoint_tol, solver.adjoint_max_steps)
    for key, name in (("adjoint_tol", "tol"), ("adjoint_max_steps", "max_steps")):
        value = solver.pop(key, None)
        if value is not None:
            adjoint[name] = value
    deq = DEQReg(encoder=tuple(model.get("encoder", unet.ENCODER)), decoder=tuple(model.get("decoder", unet.DECODER)),
                 dtype=_dtype(model), solver=solver, correction_states=int(model.get("correction_states", 3)),
                 correction_weight=float(model.get("correction_weight", 0.5)),
                 sequential_states=bool(model.get("sequential_states", True)),
                 jacobian_weight=float(model.get("jacobian_weight", 0.0)), adjoint=adjoint, **options,
                 **_loss_options(loss, window=5))
    return Method(deq, deq.init, deq.loss_fn, deq.predict)


def _unroll(model: Mapping, loss: Mapping, solver: Mapping, **_) -> Method:
    net = Unrolled(variant=model.get("variant", "vanilla"), steps=int(model.get("steps", 6)),
                   levels=int(model.get("levels", 1)),
                   encoder=tuple(model.get("encoder", unet.ENCODER)), decoder=tuple(model.get("decoder", unet.DECODER)),
                   hidden=int(model.get("hidden", 8)), dtype=_dtype(model), **_loss_options(loss, window=5))
    return Method(net, net.init, net.loss_fn, net.predict)


def _diffusereg(model: Mapping, loss: Mapping, solver: Mapping, *, diffusion: Mapping | None = None,
                teacher: Callable | None = None) -> Method:
    del solver
    unknown = set(model) - {"name", *DENOISER_FIELDS}
    if unknown:
        raise ValueError(f"unknown denoiser field(s) {sorted(unknown)} in `model`; known: {DENOISER_FIELDS}.")
    diffusion = dict(diffusion or {})
    sampler = dict(diffusion.get("sampler") or {})
    sampler["guidance"] = dict(sampler.get("guidance") or {})
    reg = DiffuseReg(denoiser={k: model[k] for k in DENOISER_FIELDS if k in model},
                     schedule=diffusion.get("schedule", "linear"), num_steps=int(diffusion.get("num_steps", 2000)),
                     beta_start=float(diffusion.get("beta_start", 1e-6)), beta_end=float(diffusion.get("beta_end", 1e-2)),
                     mean=diffusion.get("mean"), std=diffusion.get("std"), teacher=teacher,
                     ssim_weight=float(loss.get("ssim_weight", 1.0)), smooth_weight=float(loss.get("smooth_weight", 0.1)),
                     ssim_window=int(loss.get("ssim_window", 9)),
                     consistency_weighting=loss.get("consistency_weighting", "none"),
                     condition_dropout=float(diffusion.get("condition_dropout", 0.0)),
                     prediction=diffusion.get("prediction", "eps"), sampler=sampler)
    return Method(reg, reg.init, reg.loss_fn, reg.predict)


METHODS = {"voxelmorph": _voxelmorph, "deqreg": _deqreg, "unroll": _unroll, "diffusereg": _diffusereg}


def build(model: Mapping, loss: Mapping, solver: Mapping | None = None, *, diffusion: Mapping | None = None,
          teacher: Callable | None = None) -> Method:
    """The :class:`Method` for ``model.name`` (a key of ``METHODS``).

    ``solver`` (a config's ``solver`` section) is read by the equilibrium models only;
    ``diffusion`` (the ``diffusion`` section) and ``teacher`` (``teacher(fixed, moving) ->
    ddf``, the frozen registration net whose fields it learns) by DiffuseReg only.
    """
    name = model.get("name")
    if name not in METHODS:
        raise ValueError(f"`model.name` must be one of {tuple(METHODS)}; got {name!r}.")
    return METHODS[name](model, loss, solver or {}, diffusion=diffusion, teacher=teacher)


def build_from_config(config: Mapping, *, teacher: Callable | None = None) -> Method:
    """:func:`build` from a whole run config (its ``model``, ``loss``, ``solver`` and ``diffusion`` sections)."""
    return build(config["model"], config["loss"], config.get("solver"), diffusion=config.get("diffusion"), teacher=teacher)
