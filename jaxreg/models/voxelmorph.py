"""VoxelMorph: a one-shot network from an image pair to a displacement field, and its loss.

The U-Net sees ``[moving, fixed]`` (channels last) and a final convolution, initialised
near zero (normal, std 1e-5) so training starts from the identity, predicts the field. With
``integration_steps > 0`` the prediction is a stationary velocity integrated by scaling and
squaring (diffeomorphic VoxelMorph).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreg import _random, losses, spatial
from jaxreg.models.conv import Conv
from jaxreg.models.unet import DECODER, ENCODER, UNet, activation_dtype

__all__ = ["SIMILARITIES", "VoxelMorph", "make_loss_fn", "registration_loss"]

SIMILARITIES = ("lncc", "mse", "ssim")


class VoxelMorph(nn.Module):
    """VoxelMorph one-shot registration network.

    Attributes:
      encoder, decoder: U-Net widths (VoxelMorph's defaults).
      integration_steps: 0 → the output is the displacement; n > 0 → a velocity
        integrated with ``n`` squaring steps.
      dtype: activation dtype of the network (``"float32"`` or ``"bfloat16"``, see
        :func:`jaxreg.models.unet.activation_dtype`); the parameters and the returned field
        are float32.

    Call with ``fixed``, ``moving`` ``(B, *S, C)``; returns the ``ddf`` ``(B, *S, ndim)`` in
    voxels, pull convention (``warp(moving, ddf) ≈ fixed``).
    """

    encoder: Sequence[int] = ENCODER
    decoder: Sequence[int] = DECODER
    integration_steps: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, fixed: jax.Array, moving: jax.Array) -> jax.Array:
        if fixed.shape != moving.shape:
            raise ValueError(f"fixed and moving must have the same shape; got {fixed.shape} and {moving.shape}.")
        ndim = fixed.ndim - 2
        dtype = activation_dtype(self.dtype)
        features = UNet(self.encoder, self.decoder, dtype=dtype, name="unet")(jnp.concatenate([moving, fixed], axis=-1))
        init = _random.normal_initializer(1e-5)  # flax's normal(1e-5), drawn flat (compiles faster)
        flow = Conv(ndim, (3,) * ndim, padding="SAME", kernel_init=init, dtype=dtype, name="flow")(features)
        flow = flow.astype(jnp.float32)  # integration, warping and losses in float32
        if self.integration_steps:
            flow = jax.vmap(lambda v: spatial.integrate_velocity(v, steps=self.integration_steps))(flow)
        return flow


def registration_loss(
    fixed: jax.Array,
    moving: jax.Array,
    ddf: jax.Array,
    *,
    similarity: str = "lncc",
    window: int = 9,
    weight: float = 0.01,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Unsupervised registration loss of one pair: similarity(fixed, moving∘φ) + λ·diffusion(φ).

    Args:
      fixed, moving: ``(*S)`` or ``(*S, C)`` images.
      ddf: ``(*S, ndim)`` displacement (voxels, pull).
      similarity: ``"lncc"`` (window ``window``), ``"mse"`` or ``"ssim"``.
      weight: λ of the diffusion regulariser.

    Returns:
      ``(loss, parts)`` with ``parts = {"similarity", "regularization"}``; lower is better.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"`similarity` must be one of {SIMILARITIES}; got {similarity!r}.")
    warped = spatial.warp(moving, ddf)
    ndim = ddf.shape[-1]  # explicit: a 2-D image with channels has the rank of a 3-D one
    if similarity == "lncc":
        sim = losses.lncc(fixed, warped, window=window, ndim=ndim)
    elif similarity == "ssim":
        sim = losses.ssim(fixed, warped, ndim=ndim)
    else:
        sim = losses.mse(fixed, warped)
    reg = losses.diffusion(ddf)
    return sim + weight * reg, {"similarity": sim, "regularization": reg}


def make_loss_fn(module: VoxelMorph, *, similarity: str = "lncc", window: int = 9, weight: float = 0.01):
    """``loss_fn(params, batch, key) -> (loss, metrics)`` for the shared train step.

    The batch holds single-channel ``fixed`` and ``moving`` ``(B, *S)``, as the input
    pipeline yields them; the loss is the mean of :func:`registration_loss` over the batch.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"`loss.similarity` must be one of {SIMILARITIES}; got {similarity!r}.")

    def loss_fn(params, batch, key):
        del key  # the model is deterministic
        fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]
        ddf = module.apply(params, fixed, moving)
        per_pair = jax.vmap(
            lambda f, m, u: registration_loss(f, m, u, similarity=similarity, window=window, weight=weight)
        )(fixed, moving, ddf)
        return jax.tree.map(jnp.mean, per_pair)

    return loss_fn
