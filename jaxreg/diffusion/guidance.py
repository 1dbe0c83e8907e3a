"""Guidance of DiffuseReg sampling: energies of the predicted field x̂₀ that steer each step.

At every sampler step the model's x̂₀ (a displacement ``(*S, ndim)`` in voxels, pull) is
moved down the gradient of ``Σ_i w_i · E_i(x̂₀)`` before the update, so the sample drifts
towards fields the user prefers. Each energy is a per-voxel mean, lower is better; its
gradient is taken of ``N · E`` (N voxels) with respect to the field in voxels, so a weight
is a step size in voxels per unit energy gradient, independent of the image size and of
the model's per-channel normalisation. The terms that need masks or a direction are for
the sampling API (``DiffuseReg.sample``/``observe``); ``predict`` and ``eval.py`` pass none.

Terms (:data:`TERMS`):

* ``"diffusion"``: mean squared forward difference of the field (smoother);
* ``"bending"``: bending energy (smoother, affine-preserving);
* ``"folding"``: ``mean(relu(ε − det J))``, ε = 0.05, pushing the Jacobian determinant positive;
* ``"similarity"``: LNCC (window 9) between the fixed image and the warped moving image;
* ``"masked_similarity"``: mean squared intensity difference of the fixed and warped moving
  images inside the fixed mask only (align this region; needs ``fixed_mask``);
* ``"organ"``: soft Dice loss between a fixed mask and the warped moving mask (target
  organ; needs ``fixed_mask`` and ``moving_mask``);
* ``"direction"``: ``−mean(⟨u, d⟩)`` over the fixed mask (or everywhere) for a direction
  ``d`` (``(ndim,)`` vector or ``(*S, ndim)`` field, voxels): move this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxreg import losses, metrics, spatial

__all__ = ["TERMS", "Context", "check_weights", "energy", "guide"]

TERMS = ("diffusion", "bending", "folding", "similarity", "masked_similarity", "organ", "direction")
_NEEDS = {"masked_similarity": ("fixed_mask",), "organ": ("fixed_mask", "moving_mask"), "direction": ("direction",)}


class Context(NamedTuple):
    """What the energies of one sample may look at (``None`` where not given).

    Attributes:
      fixed, moving: ``(*S, 1)`` images.
      fixed_mask, moving_mask: ``(*S)`` masks in [0, 1] (the target organ).
      direction: ``(ndim,)`` or ``(*S, ndim)`` preferred displacement direction (voxels).
    """

    fixed: jax.Array
    moving: jax.Array
    fixed_mask: jax.Array | None = None
    moving_mask: jax.Array | None = None
    direction: jax.Array | None = None


def check_weights(weights: Mapping[str, float] | None, *, context_fields: tuple[str, ...] | None = None) -> dict[str, float]:
    """Validated ``{term: weight}`` (zero weights dropped).

    Args:
      weights: term names of :data:`TERMS` to weights (>= 0).
      context_fields: the optional :class:`Context` fields the caller will provide; when
        given, a term whose inputs are missing is an error.

    Raises:
      ValueError: an unknown term, a negative or non-finite weight, or missing inputs.
    """
    out = {}
    for name, weight in dict(weights or {}).items():
        if name not in TERMS:
            raise ValueError(f"unknown guidance term {name!r}; known terms: {TERMS}.")
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"guidance weight of {name!r} must be a finite number >= 0; got {weight!r}.")
        if context_fields is not None:
            missing = [f for f in _NEEDS.get(name, ()) if f not in context_fields]
            if missing:
                raise ValueError(f"guidance term {name!r} needs {missing}; pass them to the sampler.")
        if weight:
            out[name] = weight
    return out


def energy(name: str, ddf: jax.Array, context: Context) -> jax.Array:
    """The energy ``name`` of one field ``(*S, ndim)`` (voxels, pull); a scalar, lower is better."""
    ndim = ddf.shape[-1]
    if name == "diffusion":
        return losses.diffusion(ddf)
    if name == "bending":
        return losses.bending_energy(ddf)
    if name == "folding":
        return jnp.mean(jax.nn.relu(0.05 - metrics.jacobian_determinant(ddf)))
    if name == "similarity":
        return losses.lncc(context.fixed, spatial.warp(context.moving, ddf), window=9, ndim=ndim)
    if name == "masked_similarity":
        mask = context.fixed_mask.astype(ddf.dtype)[..., None]
        squared = (context.fixed - spatial.warp(context.moving, ddf)) ** 2
        return jnp.sum(mask * squared) / jnp.maximum(jnp.sum(mask) * squared.shape[-1], 1.0)
    if name == "organ":
        warped = spatial.warp(context.moving_mask.astype(ddf.dtype), ddf)
        return losses.dice(context.fixed_mask.astype(ddf.dtype)[..., None], warped[..., None])
    if name == "direction":
        direction = jnp.broadcast_to(jnp.asarray(context.direction, ddf.dtype), ddf.shape)
        along = jnp.sum(ddf * direction, axis=-1)
        if context.fixed_mask is None:
            return -jnp.mean(along)
        mask = context.fixed_mask.astype(ddf.dtype)
        return -jnp.sum(along * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    raise ValueError(f"unknown guidance term {name!r}; known terms: {TERMS}.")


def guide(x0: jax.Array, contexts: Context, weights: Mapping[str, float], *,
          to_field: Callable[[jax.Array], jax.Array] | None = None,
          from_field: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """One guidance step on a batch of x̂₀ ``(B, *S, ndim)`` (in the sampler's units).

    In voxels: ``u ← u − ∇_u Σ_b N · Σ_i w_i E_i(u_b)`` with ``u = to_field(x̂₀)``, then back
    with ``from_field`` (the sampler's z-scored units; identity when not given), so a weight
    is a step in voxels whatever the normalisation. ``contexts`` holds batched
    :class:`Context` arrays.
    """
    if not weights:
        return x0
    to_field = to_field or (lambda x: x)
    from_field = from_field or (lambda u: u)
    n = math.prod(x0.shape[1:-1])

    def total(u):
        def one(ub, ctx):
            return sum(w * energy(name, ub, ctx) for name, w in weights.items())
        return n * jnp.sum(jax.vmap(one)(u, contexts))

    u = to_field(x0)
    return from_field(u - jax.grad(total)(u))
