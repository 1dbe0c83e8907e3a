"""Swin-transformer pieces, 2-D and 3-D, with DiffuseReg's joint conditional window attention.

Tokens live on a grid ``(B, *G, C)``. A :class:`SwinBlock` attends inside non-overlapping
windows, every second block on windows shifted by half a window (cyclic shift + the
:func:`shift_mask` that stops tokens from attending across the wrap-around), with a learned
relative-position bias.

DiffuseReg's field blocks attend *jointly*: in each window the keys and values are
``[time token | moving tokens | fixed tokens | field tokens]`` (:func:`joint_mask`): the
relative-position bias and the shift mask are tiled over the three token groups and the time
token attends to, and is attended by, everything. Only the field tokens are kept, so only
they are queried (the other rows of the joint attention are computed by nobody). Each
condition group adds its own learned embedding to its tokens, so that the model can tell
the fixed image from the moving one.

The masks are numpy (static); ``True`` means "may attend".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "JointWindowAttention",
    "PatchMerging",
    "SwinBlock",
    "effective_window",
    "joint_mask",
    "relative_position_index",
    "shift_mask",
    "window_partition",
    "window_reverse",
]


def effective_window(grid: Sequence[int], window: Sequence[int], shift: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(window, shift)`` per axis on a token grid: a window no larger than the grid, and no
    shift along an axis the window covers whole (Swin's rule).

    Raises:
      ValueError: a grid side not divisible by its window.
    """
    if len(grid) != len(window):
        raise ValueError(f"`window` {tuple(window)} must have one side per grid axis; grid is {tuple(grid)}.")
    win = tuple(min(int(w), int(g)) for g, w in zip(grid, window))
    if any(g % w for g, w in zip(grid, win)):
        raise ValueError(f"token grid {tuple(grid)} is not divisible by the window {win}; "
                         "choose an image shape divisible by patch · 2**stages · window.")
    shifts = tuple(w // 2 if shift and g > w else 0 for g, w in zip(grid, win))
    return win, shifts


def window_partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """``(B, *G, C)`` → ``(B·nW, N, C)``: the tokens of each window, N = prod(window), in C order (numpy or jax)."""
    b, *grid, c = x.shape
    nd = len(grid)
    split = [b]
    for g, w in zip(grid, window):
        split += [g // w, w]
    x = x.reshape(*split, c)
    order = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    return x.transpose(order).reshape(-1, math.prod(window), c)


def window_reverse(windows: jax.Array, window: Sequence[int], grid: Sequence[int]) -> jax.Array:
    """Inverse of :func:`window_partition`: ``(B·nW, N, C)`` → ``(B, *G, C)``."""
    nd, c = len(grid), windows.shape[-1]
    counts = [g // w for g, w in zip(grid, window)]
    x = windows.reshape(-1, *counts, *window, c)
    order = [0] + [v for i in range(nd) for v in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    return x.transpose(order).reshape(-1, *grid, c)


def relative_position_index(window: Sequence[int]) -> np.ndarray:
    """``(N, N)`` index into a ``(prod(2w − 1), heads)`` bias table: one entry per relative offset."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij"), -1).reshape(-1, len(window))
    rel = coords[:, None, :] - coords[None, :, :] + (np.asarray(window) - 1)
    return np.ravel_multi_index(tuple(rel[..., i] for i in range(len(window))), tuple(2 * w - 1 for w in window))


def shift_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
    """``(nW, N, N)`` bool: which tokens of a window of the cyclically shifted grid may attend to which.

    The grid is rolled by ``−shift``; tokens that came from opposite ends of the grid share the
    last window of an axis but are not neighbours, so they are masked. With no shift every
    pair is allowed.
    """
    ids = np.zeros(tuple(grid), np.int64)
    for axis, (g, w, s) in enumerate(zip(grid, window, shift)):
        region = np.zeros(g, np.int64)
        if s:
            region[g - w:g - s], region[g - s:] = 1, 2
        ids = ids * 3 + region.reshape([-1 if a == axis else 1 for a in range(len(grid))])
    windows = window_partition(ids[None, ..., None], window)[..., 0]  # numpy in, numpy out: (nW, N)
    return windows[:, :, None] == windows[:, None, :]


def joint_mask(base: np.ndarray, *, groups: int = 3, time_token: bool = True, tile: bool = True) -> np.ndarray:
    """The mask of the joint attention over ``[time | group_1 … group_k]`` (DiffuseReg: moving, fixed, field).

    Args:
      base: ``(nW, N, N)`` mask of one group (:func:`shift_mask`).
      groups: token groups per window; the last one is the field.
      time_token: prepend a time token that attends to and is attended by every token.
      tile: tile ``base`` over every pair of groups (DiffuseReg). ``False`` (the "no
        conditional mask" ablation) masks field–field pairs only: the conditions are seen
        whole in each window, wrap-around included.

    Returns:
      ``(nW, t + k·N, t + k·N)`` bool, ``t = 1`` with the time token; rows query, columns are keys.
    """
    nw, n, _ = base.shape
    if tile:
        grid = np.tile(base, (1, groups, groups))
    else:
        grid = np.ones((nw, groups * n, groups * n), bool)
        grid[:, -n:, -n:] = base
    if not time_token:
        return grid
    out = np.ones((nw, 1 + groups * n, 1 + groups * n), bool)
    out[:, 1:, 1:] = grid
    return out


class JointWindowAttention(nn.Module):
    """Multi-head attention of field tokens over ``[time | conditions… | field]`` keys in each window.

    Attributes:
      heads: attention heads (``C`` must be divisible by it).
      window: window sides (tokens).

    Call with ``field`` ``(Bw, N, C)``, ``conditions`` a list of ``(Bw, N, C)`` (may be
    empty), ``time`` ``(Bw, 1, C)`` or ``None``, and ``mask`` the rows of the field queries of
    :func:`joint_mask` (``(nW, N, L)`` with ``Bw = B·nW``) or ``None``; returns ``(Bw, N, C)``.
    With no conditions and no time token this is plain (shifted) window attention.
    """

    heads: int
    window: Sequence[int]

    @nn.compact
    def __call__(self, field, conditions=(), time=None, mask=None):
        bw, n, c = field.shape
        if c % self.heads:
            raise ValueError(f"token width {c} must be divisible by the number of heads {self.heads}.")
        head_dim = c // self.heads
        keys_in = ([time] if time is not None else []) + list(conditions) + [field]
        tokens = jnp.concatenate(keys_in, axis=1)  # (Bw, L, C)
        q = nn.Dense(c, name="query")(field).reshape(bw, n, self.heads, head_dim)
        kv = nn.Dense(2 * c, name="key_value")(tokens).reshape(bw, tokens.shape[1], 2, self.heads, head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, kv[:, :, 0]) / math.sqrt(head_dim)
        table = self.param("relative_bias", nn.initializers.truncated_normal(0.02),
                           (math.prod(2 * w - 1 for w in self.window), self.heads))
        bias = table[relative_position_index(self.window)]  # (N, N, heads), tiled over the groups
        bias = jnp.tile(bias, (1, len(conditions) + 1, 1))
        if time is not None:
            time_bias = self.param("time_bias", nn.initializers.zeros, (self.heads,))
            bias = jnp.concatenate([jnp.broadcast_to(time_bias, (n, 1, self.heads)), bias], axis=1)
        logits = logits + bias.transpose(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.reshape(bw // nw, nw, self.heads, n, -1)
            logits = jnp.where(jnp.asarray(mask)[None, :, None], logits, -1e9).reshape(bw, self.heads, n, -1)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, kv[:, :, 1]).reshape(bw, n, c)
        return nn.Dense(c, name="out")(out)


class SwinBlock(nn.Module):
    """One Swin block: (shifted-)window attention and an MLP, each pre-normed and residual.

    Attributes:
      heads: attention heads.
      window: window sides (clipped to the grid, see :func:`effective_window`).
      shift: shift the windows by half a window (every second block).
      mlp_ratio: hidden width of the MLP over the token width.
      tile_mask: tile the shift mask over the condition groups (:func:`joint_mask`).

    Call with ``x`` ``(B, *G, C)`` (the queried tokens: a field), ``conditions`` a list of
    ``(B, *G, C)`` token grids attended jointly (DiffuseReg: moving, fixed) and ``time``
    ``(B, C)`` (the time token) or ``None``; returns ``(B, *G, C)``.
    """

    heads: int
    window: Sequence[int]
    shift: bool = False
    mlp_ratio: float = 4.0
    tile_mask: bool = True

    @nn.compact
    def __call__(self, x, conditions=(), time=None):
        _, *grid, c = x.shape
        nd = len(grid)
        window, shifts = effective_window(grid, self.window, self.shift)
        axes = tuple(range(1, nd + 1))
        norm_c = nn.LayerNorm(name="norm_conditions")

        def windows(y):
            if any(shifts):
                y = jnp.roll(y, tuple(-s for s in shifts), axis=axes)
            return window_partition(y, window)

        # A learned embedding per condition group: attention is blind to the order of its keys,
        # so without it swapping the fixed and moving images would not change the output.
        groups = self.param("condition_embedding", nn.initializers.normal(0.5), (len(conditions), c)) if conditions else None
        conds = [windows(norm_c(y) + groups[i]) for i, y in enumerate(conditions)]
        t = None
        if time is not None:
            nw = math.prod(g // w for g, w in zip(grid, window))
            t = jnp.repeat(time[:, None, :], nw, axis=0)  # (B·nW, 1, C): one time token per window
        mask = None
        if any(shifts) or (conditions and not self.tile_mask):
            base = shift_mask(grid, window, shifts)
            n = base.shape[1]
            mask = joint_mask(base, groups=len(conditions) + 1, time_token=time is not None, tile=self.tile_mask)
            mask = mask[:, -n:]  # the field rows: the only tokens kept
        h = JointWindowAttention(self.heads, window, name="attention")(windows(nn.LayerNorm(name="norm1")(x)), conds, t, mask)
        h = window_reverse(h, window, grid)
        if any(shifts):
            h = jnp.roll(h, shifts, axis=axes)
        x = x + h
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.Dense(int(c * self.mlp_ratio), name="mlp_in")(y)
        return x + nn.Dense(c, name="mlp_out")(nn.gelu(y))


class PatchMerging(nn.Module):
    """2× downsampling of a token grid: each 2^d block's tokens concatenated, normed, projected to ``2C``.

    ``(B, *G, C)`` → ``(B, *G/2, 2C)``; every grid side must be even.
    """

    @nn.compact
    def __call__(self, x):
        b, *grid, c = x.shape
        if any(g % 2 for g in grid):
            raise ValueError(f"patch merging needs even grid sides; got {tuple(grid)}.")
        x = window_partition(x, (2,) * len(grid)).reshape(b, *[g // 2 for g in grid], -1)
        return nn.Dense(2 * c, use_bias=False, name="reduction")(nn.LayerNorm(name="norm")(x))
