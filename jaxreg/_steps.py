"""The optimisers' steps: Adam with its schedule, the scans of a level, and the driver's chunks. Private.

Shared by the deformable (:mod:`jaxreg.optimize`) and affine (:mod:`jaxreg.optimize_affine`)
optimisers, in both of their modes: the driver (:func:`jaxreg.register` on concrete arrays)
dispatches each level as compiled chunks from Python and reports progress between them; the
traceable core (:func:`jaxreg.register_traceable`, under ``jit``/``vmap``/``grad``) runs each
level as one scan with rematerialised steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

FINAL_LR_FRACTION = 0.1  # cosine decay of the learning rate within each level, down to this

# The driver runs each level as a few dispatches of one compiled chunk of CHUNK steps and reads the
# loss trace between them for progress. A host callback inside the program would do the same, but
# JAX never stores a program with a host callback in its persistent compilation cache, so every
# process would compile every level again (~17 s on a cardiac stack on a 2-core CPU).
CHUNK = 10
# Added under Adam's square root: d sqrt(v)/dv is infinite at v = 0 (a voxel whose gradient is
# exactly zero), which would put NaN into gradients taken through the optimiser's steps. 1e-20 is
# far below the squared gradients of any voxel that moves (its root, 1e-10, is 1 % of Adam's eps).
EPS_ROOT = 1e-20


def optimizer(learning_rate, total_steps) -> optax.GradientTransformation:
    """Adam with a cosine decay of the step from ``learning_rate`` to ``FINAL_LR_FRACTION`` of it over
    ``total_steps`` (optax's ``adam(cosine_decay_schedule(...))``, plus :data:`EPS_ROOT`).

    Both may be traced values, so one compiled level serves any step count and learning rate.
    """
    def schedule(count):
        t = jnp.minimum(count, total_steps) / jnp.maximum(total_steps, 1)
        decay = (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + jnp.cos(jnp.pi * t)) + FINAL_LR_FRACTION
        return -learning_rate * decay

    return optax.chain(optax.scale_by_adam(eps_root=EPS_ROOT), optax.scale_by_schedule(schedule))


def run_steps(step: Callable, carry, *, start, length: int, remat: bool = False):
    """Steps ``start .. start + length − 1`` of a level: ``lax.scan`` of ``step(carry, i) -> (carry, loss)``.

    ``remat``: each step is recomputed in the backward pass (``jax.checkpoint``) and the scan is
    nested ``outer × inner`` with ``inner`` about ``√length`` and each inner scan checkpointed
    (the ``length mod inner`` last steps in a scan of their own), so reverse-mode
    differentiation through the steps keeps about ``2·√length`` carries (parameters and
    Adam's moments), not one per step, and none of a step's intermediates (warps, LNCC sums).
    Without differentiation ``remat`` changes nothing.

    Returns:
      ``(carry, (length,) + loss shape)``.
    """
    first = jnp.asarray(start, jnp.int32)
    if not remat:
        return jax.lax.scan(step, carry, first + jnp.arange(length))
    body = jax.checkpoint(step)
    inner = max(math.isqrt(length), 1)
    outer, rest = divmod(length, inner)

    @jax.checkpoint
    def chunk(carry, i0):
        return jax.lax.scan(body, carry, i0 + jnp.arange(inner))

    carry, losses = jax.lax.scan(chunk, carry, first + inner * jnp.arange(outer))
    losses = losses.reshape((outer * inner,) + losses.shape[2:])
    if rest:
        carry, more = jax.lax.scan(body, carry, first + outer * inner + jnp.arange(rest))
        losses = jnp.concatenate([losses, more])
    return carry, losses


class Progress:
    """Runs the driver's levels as chunks dispatched from Python, and reports progress.

    A level of ``total`` steps is ``ceil(total / CHUNK)`` calls ``run_chunk(carry, start, length)``
    of one compiled chunk. ``callback(level, step, loss)`` follows each chunk (the loss of its last
    step; with a batch, the mean over the pairs), one chunk late: chunk ``k``'s loss is read once
    the next chunk, of this level or of the next level or stage, has been dispatched. Nothing
    else waits for the device, so the next level's tracing and compiling overlap this level's
    last steps (~4 s of a 25 s first registration of a brain on 2 cores). Call :meth:`flush` at
    the end for the last report.
    """

    def __init__(self, callback: Callable | None = None):
        self.callback = callback
        self.pending = None

    def flush(self) -> None:
        if self.pending is not None:
            level, step, offset, losses = self.pending
            self.pending = None
            loss = np.asarray(losses)[offset]  # on the host: no indexing program to compile
            self.callback(level, step, float(np.mean(loss)))

    def run(self, run_chunk: Callable, carry, total: int, *, level: int):
        """Returns ``(carry, the chunks' loss traces, device arrays (length, ...))``."""
        chunks = []
        for start in range(0, total, CHUNK):
            length = min(CHUNK, total - start)  # a last shorter chunk when CHUNK does not divide total
            carry, losses = run_chunk(carry, jnp.int32(start), length)
            chunks.append(losses)
            if self.callback is not None:
                self.flush()
                self.pending = (level, start + length - 1, length - 1, losses)
        return carry, chunks


def host_trace(levels: Sequence[Sequence[jax.Array]]) -> np.ndarray:
    """The loss trace ``(..., sum of steps)`` on the host from :meth:`Progress.run`'s chunks of each level
    (waits for them)."""
    return np.moveaxis(np.concatenate([np.asarray(chunk) for chunks in levels for chunk in chunks], axis=0), 0, -1)
