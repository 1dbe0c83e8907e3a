"""Random draws of many-axis shapes that compile quickly on XLA:CPU.

``jax.random.normal(key, shape)`` inside ``jit`` hashes one counter per element. With a shape of
several axes and a small last axis (``(16, 16, 16, 12)``, a field's ``(..., 3)``) XLA:CPU's
LLVM pipeline takes seconds to compile that hash (measured on the 2-core CPU: 6.1-8.1 s for
``(16, 16, 16, 12)``, 0.9 s for ``(8, 8, 8, 3)``), against 0.2-0.25 s for the same number of
elements drawn as one flat vector. Threefry numbers the elements of ``shape`` in row-major order
either way, so drawing ``prod(shape)`` values and reshaping gives exactly the values of
``jax.random.normal(key, shape)`` (``tests/test_random.py``), at a fraction of the compile time.

The same holds for the parameters of a convolution: flax's default kernel initialiser draws a
truncated normal of shape ``(*window, C_in, C_out)``, ~1-1.3 s of compile per 3-D kernel.
:func:`lecun_normal` and :func:`normal_initializer` are flax's initialisers drawn flat: the
same values, and a network's ``init`` compiles several times faster
(``python benchmarks/random_compile.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["lecun_normal", "normal", "normal_initializer"]


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, value for value, drawn flat and reshaped."""
    shape = tuple(int(n) for n in shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def lecun_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """``jax.nn.initializers.lecun_normal()`` (flax's default kernel initialiser), value for value.

    A truncated normal on (-2, 2) scaled to variance ``1 / fan_in``, ``fan_in = C_in · prod(window)``
    of a ``(*window, C_in, C_out)`` kernel; drawn flat and reshaped.
    """
    shape = tuple(int(n) for n in shape)
    fan_in = shape[-2] * math.prod(shape[:-2])
    variance = jnp.array(1.0 / fan_in, dtype=dtype)
    stddev = jnp.sqrt(variance) / jnp.array(.87962566103423978, dtype)  # std of N(0, 1) truncated to (-2, 2)
    return jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype).reshape(shape) * stddev


def normal_initializer(stddev: float):
    """``jax.nn.initializers.normal(stddev)``, value for value, drawn flat and reshaped."""
    def init(key, shape, dtype=jnp.float32):
        return normal(key, shape, dtype) * jnp.array(stddev, dtype)

    return init
