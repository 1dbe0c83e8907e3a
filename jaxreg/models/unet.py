"""The VoxelMorph U-Net (Balakrishnan et al. 2019), 2-D and 3-D, Flax Linen.

Encoder: one 3×3(×3) convolution + LeakyReLU(0.2) per level, then 2× max-pooling. Decoder:
per level a convolution, 2× nearest upsampling and concatenation with the encoder output of
that resolution; then the remaining decoder widths as full-resolution convolutions. With the
default widths (encoder 16-32-32-32, decoder 32-32-32-32-32-16-16) this is VoxelMorph's
``vxm`` network; it is also DEQReg's update network.

Mixed precision: ``dtype="bfloat16"`` computes the activations (and the convolutions) in
bfloat16 while the parameters stay float32 (``flax`` ``dtype`` / ``param_dtype``); the
callers keep their fields, solver state and losses in float32 (:func:`activation_dtype`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreg.models.conv import Conv, max_pool

__all__ = ["DECODER", "DTYPES", "ENCODER", "UNet", "activation_dtype"]

ENCODER = (16, 32, 32, 32)
DECODER = (32, 32, 32, 32, 32, 16, 16)
#: Activation dtypes a config's ``model.dtype`` may name.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def activation_dtype(name: str | None) -> Any:
    """The jnp dtype of ``model.dtype`` (``None`` → float32).

    Raises:
      ValueError: ``name`` is not one of :data:`DTYPES`.
    """
    if name is None:
        return jnp.float32
    if str(name) not in DTYPES:
        raise ValueError(f"`model.dtype` must be one of {tuple(DTYPES)}; got {name!r}.")
    return DTYPES[str(name)]


def _upsample(x: jax.Array, ndim: int) -> jax.Array:
    """2× nearest-neighbour upsampling of the spatial axes of ``(B, *S, C)``."""
    for axis in range(1, ndim + 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class UNet(nn.Module):
    """VoxelMorph U-Net.

    Attributes:
      encoder: widths of the encoder levels (each followed by 2× pooling).
      decoder: widths of the decoder convolutions; the first ``len(encoder)`` are
        upsampling levels, the rest run at full resolution. Needs
        ``len(decoder) >= len(encoder)``.
      dtype: dtype of the activations and convolutions (``None``: the input's); the
        parameters are float32 whatever it is.

    Input ``(B, *S, C)`` with every side divisible by ``2**len(encoder)``; output
    ``(B, *S, decoder[-1])`` features.
    """

    encoder: Sequence[int] = ENCODER
    decoder: Sequence[int] = DECODER
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ndim = x.ndim - 2
        if ndim not in (2, 3):
            raise ValueError(f"UNet input must be (B, *S, C) with 2 or 3 spatial axes; got shape {x.shape}.")
        if len(self.decoder) < len(self.encoder):
            raise ValueError(f"UNet needs len(decoder) >= len(encoder); got {self.encoder} and {self.decoder}.")
        factor = 2 ** len(self.encoder)
        if any(s % factor for s in x.shape[1:-1]):
            raise ValueError(f"UNet spatial sides must be divisible by {factor} (2**levels); got {x.shape[1:-1]}.")
        kernel, window = (3,) * ndim, (2,) * ndim
        if self.dtype is not None:
            x = x.astype(self.dtype)  # so the skips and concatenations are stored in it too

        def conv(y, features, name):
            return nn.leaky_relu(Conv(features, kernel, padding="SAME", dtype=self.dtype, name=name)(y), 0.2)

        skips = []
        for level, features in enumerate(self.encoder):
            x = conv(x, features, f"encoder_{level}")
            skips.append(x)
            x = max_pool(x, window)
        for level, features in enumerate(self.decoder[: len(self.encoder)]):
            x = conv(x, features, f"decoder_{level}")
            x = jnp.concatenate([_upsample(x, ndim), skips.pop()], axis=-1)
        for level, features in enumerate(self.decoder[len(self.encoder):]):
            x = conv(x, features, f"remaining_{level}")
        return x
