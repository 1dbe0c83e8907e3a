"""Argument checks shared by the leaf modules (``spatial``, ``losses``, ``metrics``).

Private, and depends on nothing of jaxreg: it exists so that the leaves can share their error messages
without importing each other.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def check_ddf(ddf, name: str = "ddf") -> int:
    """Checks that ``ddf`` is a float ``(*S, ndim)`` field with ``ndim = len(S)`` in (2, 3).

    Returns:
      The spatial rank ``ndim``.
    """
    shape = tuple(np.shape(ddf))
    if len(shape) < 2 or shape[-1] != len(shape) - 1 or shape[-1] not in (2, 3):
        raise ValueError(
            f"`{name}` must be a displacement field of shape (*S, ndim) with ndim = len(S) "
            f"in (2, 3), e.g. (H, W, 2) or (D, H, W, 3); got shape {shape}."
        )
    dtype = ddf.dtype if hasattr(ddf, "dtype") else np.asarray(ddf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):  # numpy's check rejects bfloat16
        raise ValueError(f"`{name}` must be a floating-point array; got dtype {dtype}.")
    return shape[-1]


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """Raises if two arrays differ in shape."""
    sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
    if sa != sb:
        raise ValueError(f"`{name_a}` and `{name_b}` must have the same shape; got {sa} and {sb}.")
