"""DiffuseReg's denoiser: a conditional Swin-UNETR that predicts the noise of a deformation field.

``Denoiser()(x_t, t, fixed, moving) -> ε̂``, 2-D and 3-D, channels last:

* the noisy field ``x_t`` ``(B, *S, ndim)`` is cut into patches (``patch``) and goes through
  ``len(depths)`` Swin stages (patch merging between them) — the *field stream*;
* with ``fusion="layerwise"`` (DiffuseReg), the fixed and moving images go through one
  weight-shared Swin encoder of the same shape, and every field block attends jointly over
  ``[time | moving | fixed | field]`` tokens of its window (``jaxreg.models.swin``); the
  image tokens a field block sees are those entering the image block of the same stage and
  index (``image_tokens="input"``, the official code's wiring) or those leaving it
  (``"output"``);
  ``fusion="input"`` (the ablation) concatenates ``[x_t, fixed, moving]`` at the input
  instead and runs a plain Swin over it;
* the time step goes through a sinusoidal embedding and an MLP; each stage gets its own
  projection of it as the time token, and (``time_in_resblocks``) each convolutional block
  of the U-Net decoder its own projection added to its features;
* a UNETR decoder (residual conv blocks on every stage's tokens, transposed-conv upsampling,
  skip connections) returns ``ε̂`` ``(B, *S, ndim)``.

Classifier-free guidance: ``condition`` ``(B,)`` (1 keep, 0 drop) replaces the image tokens
of dropped samples by a learned null token.

Sizes: DiffuseReg's paper config is ``Denoiser(features=120, depths=(2, 2, 2, 2),
heads=(3, 6, 12, 24), window=(2, 4, 4), patch=2)``; every side of ``S`` must be divisible
by ``patch · 2**len(depths)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreg import _random
from jaxreg.models.conv import Conv, ConvTranspose
from jaxreg.models.swin import PatchMerging, SwinBlock

__all__ = ["FUSIONS", "IMAGE_TOKENS", "Denoiser", "ResBlock", "timestep_embedding"]

FUSIONS = ("layerwise", "input")
#: Which image tokens reach field block (s, b) with layerwise fusion: those entering image block (s, b)
#: (before its attention; the official DiffuseReg code) or those leaving it.
IMAGE_TOKENS = ("input", "output")


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding ``(B, dim)`` of steps ``t`` ``(B,)`` (Transformer / DDPM): [cos | sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class ResBlock(nn.Module):
    """UNETR residual block: conv–norm–LeakyReLU (+ time projection) – conv–norm, + skip.

    Call with ``x`` ``(B, *S, C)`` and ``temb`` ``(B, E)`` or ``None``; returns ``(B, *S, features)``.
    """

    features: int

    @nn.compact
    def __call__(self, x, temb=None):
        ndim = x.ndim - 2
        kernel = (3,) * ndim
        groups = math.gcd(self.features, 8)
        h = Conv(self.features, kernel, padding="SAME", name="conv1")(x)
        h = nn.leaky_relu(nn.GroupNorm(num_groups=groups, name="norm1")(h), 0.01)
        if temb is not None:
            shape = (h.shape[0],) + (1,) * ndim + (self.features,)
            h = h + nn.Dense(self.features, name="time")(nn.silu(temb)).reshape(shape)
        h = nn.GroupNorm(num_groups=groups, name="norm2")(Conv(self.features, kernel, padding="SAME", name="conv2")(h))
        if x.shape[-1] != self.features:
            x = nn.GroupNorm(num_groups=groups, name="norm_skip")(Conv(self.features, (1,) * ndim, name="skip")(x))
        return nn.leaky_relu(h + x, 0.01)


class Denoiser(nn.Module):
    """DiffuseReg's conditional Swin-UNETR noise predictor (see the module docstring).

    Attributes:
      features: token width of the first stage (doubles per stage); the paper: 120.
      depths: Swin blocks per stage (alternating plain and shifted windows).
      heads: attention heads per stage.
      window: window sides in tokens, one per spatial axis.
      patch: patch side of the embedding (tokens are ``S / patch``).
      fusion: ``"layerwise"`` (joint attention in every field block) or ``"input"``.
      conditional_mask: tile the shifted-window mask over the image tokens (the paper);
        ``False`` is the "no conditional mask" ablation.
      time_in_resblocks: add a time projection in every conv block (the paper).
      mlp_ratio: Swin MLP width over the token width.
      image_skip: also feed the fixed and moving images to the full-resolution conv skip
        block (layerwise fusion sees them only through patch tokens otherwise); the demo's
        choice, not the paper's.
      image_tokens: with layerwise fusion, field block ``b`` of stage ``s`` attends to the
        image tokens *entering* image block ``b`` of stage ``s`` (``"input"``: the official
        code, whose field blocks get the image block's windows before its attention) or
        *leaving* it (``"output"``: this library's wiring before the option existed; runs
        saved without the field are restored with it, ``jaxreg.runs.workdir``).

    Call with ``x_t`` ``(B, *S, ndim)``, ``t`` ``(B,)`` int steps, ``fixed`` and ``moving``
    ``(B, *S, 1)`` and optional ``condition`` ``(B,)`` in {0, 1}; returns ``ε̂`` like ``x_t``.
    """

    features: int = 120
    depths: Sequence[int] = (2, 2, 2, 2)
    heads: Sequence[int] = (3, 6, 12, 24)
    window: Sequence[int] = (2, 4, 4)
    patch: int = 2
    fusion: str = "layerwise"
    conditional_mask: bool = True
    time_in_resblocks: bool = True
    mlp_ratio: float = 4.0
    image_skip: bool = False
    image_tokens: str = "input"

    def _check(self, x_t, fixed, moving):
        ndim = x_t.ndim - 2
        if ndim not in (2, 3) or x_t.shape[-1] != ndim:
            raise ValueError(f"x_t must be (B, *S, ndim) with ndim 2 or 3; got shape {x_t.shape}.")
        if fixed.shape != moving.shape or fixed.shape[:-1] != x_t.shape[:-1]:
            raise ValueError(f"fixed and moving must be (B, *S, C) on the grid of x_t {x_t.shape}; "
                             f"got {fixed.shape} and {moving.shape}.")
        if self.fusion not in FUSIONS:
            raise ValueError(f"`model.fusion` must be one of {FUSIONS}; got {self.fusion!r}.")
        if self.image_tokens not in IMAGE_TOKENS:
            raise ValueError(f"`model.image_tokens` must be one of {IMAGE_TOKENS}; got {self.image_tokens!r}.")
        if len(self.heads) != len(self.depths) or len(self.window) != ndim:
            raise ValueError(f"need one `heads` entry per stage and one `window` side per axis; got depths "
                             f"{tuple(self.depths)}, heads {tuple(self.heads)}, window {tuple(self.window)} for {ndim}-D.")
        factor = self.patch * 2 ** len(self.depths)
        if any(s % factor for s in x_t.shape[1:-1]):
            raise ValueError(f"image sides must be divisible by patch · 2**stages = {factor}; got {x_t.shape[1:-1]}.")

    @nn.compact
    def __call__(self, x_t, t, fixed, moving, condition=None):
        self._check(x_t, fixed, moving)
        ndim = x_t.ndim - 2
        c0 = self.features
        temb = timestep_embedding(t, c0)
        temb = nn.Dense(4 * c0, name="time_mlp_out")(nn.silu(nn.Dense(4 * c0, name="time_mlp_in")(temb)))
        block_time = temb if self.time_in_resblocks else None
        patch = (self.patch,) * ndim

        if condition is not None:  # dropped conditions: zero images at the input (input fusion)
            keep = jnp.asarray(condition, x_t.dtype).reshape((-1,) + (1,) * (ndim + 1))
            fixed, moving = fixed * keep, moving * keep
        layerwise = self.fusion == "layerwise"
        inputs = x_t if layerwise else jnp.concatenate([x_t, fixed, moving], axis=-1)
        tokens = Conv(c0, patch, strides=patch, padding="VALID", name="field_embed")(inputs)
        if layerwise:
            # One image encoder for both images: fixed and moving stacked along the batch.
            images = jnp.concatenate([moving, fixed], axis=0)
            image_tokens = Conv(c0, patch, strides=patch, padding="VALID", name="image_embed")(images)
            if condition is not None:
                null = self.param("null_condition", nn.initializers.normal(0.02), (c0,))
                keep2 = jnp.concatenate([keep, keep], axis=0).reshape((-1,) + (1,) * (ndim + 1))
                image_tokens = keep2 * image_tokens + (1 - keep2) * null

        skips = []
        for stage, (depth, heads) in enumerate(zip(self.depths, self.heads)):
            width = c0 * 2**stage
            time_token = nn.Dense(width, name=f"time_token_{stage}")(nn.silu(temb))
            for block in range(depth):
                shift = block % 2 == 1
                if layerwise:
                    entering = image_tokens
                    image_tokens = SwinBlock(heads, self.window, shift, self.mlp_ratio,
                                             name=f"image_stage{stage}_block{block}")(image_tokens)
                    seen = entering if self.image_tokens == "input" else image_tokens
                    conditions = list(jnp.split(seen, 2, axis=0))  # [moving, fixed]
                else:
                    conditions = []
                tokens = SwinBlock(heads, self.window, shift, self.mlp_ratio, tile_mask=self.conditional_mask,
                                   name=f"field_stage{stage}_block{block}")(tokens, conditions, time_token)
            skips.append(tokens)
            tokens = PatchMerging(name=f"field_merge_{stage}")(tokens)
            if layerwise:
                image_tokens = PatchMerging(name=f"image_merge_{stage}")(image_tokens)

        # UNETR decoder: bottleneck → each stage's resolution → the patch grid → full resolution.
        x = ResBlock(c0 * 2 ** len(self.depths), name="bottleneck")(tokens, block_time)
        for stage in reversed(range(len(self.depths))):
            width = c0 * 2**stage
            x = ConvTranspose(width, (2,) * ndim, strides=(2,) * ndim, name=f"up_{stage}")(x)
            skip = ResBlock(width, name=f"skip_{stage}")(skips[stage], block_time)
            x = ResBlock(width, name=f"decoder_{stage}")(jnp.concatenate([x, skip], axis=-1), block_time)
        x = ConvTranspose(c0, patch, strides=patch, name="up_input")(x)
        full = jnp.concatenate([x_t, fixed, moving], axis=-1) if layerwise and self.image_skip else inputs
        skip = ResBlock(c0, name="skip_input")(full, block_time)
        x = ResBlock(c0, name="decoder_input")(jnp.concatenate([x, skip], axis=-1), block_time)
        return Conv(ndim, (1,) * ndim, name="eps", kernel_init=_random.normal_initializer(1e-3))(x)
