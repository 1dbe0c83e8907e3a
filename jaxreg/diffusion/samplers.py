"""Samplers of a trained noise predictor: DDPM ancestral and DDIM, each one jitted ``lax.scan``.

``eps_fn(x_t, t) -> ε̂`` is the model (a closure over its parameters and conditioning
images): ``x_t`` is a batch ``(B, ...)`` and ``t`` a ``(B,)`` int32 array of 0-based steps.
Both samplers start from ``x_T`` (pure noise, or a noised field to start from) and return
the final x̂₀ batch.

* :func:`ddpm_sample`: all T ancestral steps, ``x_{t−1} ~ q(x_{t−1} | x_t, x̂₀)``.
* :func:`ddim_sample`: ``steps`` evenly spaced steps of DDIM (Song et al. 2021) with
  stochasticity ``eta`` (0: deterministic; 1: DDPM-like variance).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.diffusion.schedule import Schedule, posterior, predict_x0

__all__ = ["ddim_sample", "ddim_timesteps", "ddpm_sample"]


def ddim_timesteps(num_steps: int, steps: int) -> np.ndarray:
    """``steps`` evenly spaced 0-based steps from ``num_steps − 1`` down to 0 (descending, int32).

    Raises:
      ValueError: ``steps`` not in 1 … ``num_steps``.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_steps:
        raise ValueError(f"DDIM `steps` must be an integer in 1..T={num_steps}; got {steps!r}.")
    return np.round(np.linspace(num_steps - 1, 0, steps)).astype(np.int32)


def ddim_sample(eps_fn: Callable, schedule: Schedule, x_T: jax.Array, *, steps: int, eta: float = 0.0,
                key: jax.Array | None = None) -> jax.Array:
    """DDIM from ``x_T`` at step T − 1 down to x̂₀ in ``steps`` model calls.

    Args:
      eps_fn: ``eps_fn(x_t, t) -> ε̂`` (see the module docstring).
      schedule: the training schedule.
      x_T: ``(B, ...)`` start, e.g. standard normal noise.
      steps: number of model calls (1 … T).
      eta: 0 for the deterministic sampler; > 0 adds noise (needs ``key``).
      key: PRNG key when ``eta > 0``.

    Returns:
      x̂₀, shaped like ``x_T``.
    """
    if not eta >= 0:
        raise ValueError(f"`eta` must be >= 0; got {eta!r}.")
    if eta > 0 and key is None:
        raise ValueError("`key` is needed when `eta` > 0.")
    times = jnp.asarray(ddim_timesteps(schedule.num_steps, steps))
    previous = jnp.concatenate([times[1:], jnp.full((1,), -1, jnp.int32)])  # −1: ᾱ = 1, the clean end
    key = jax.random.key(0) if key is None else key
    a_all = jnp.concatenate([schedule.alpha_bars, jnp.ones((1,), jnp.float32)])  # index −1 → 1
    b_all = jnp.concatenate([schedule.one_minus_alpha_bars, jnp.zeros((1,), jnp.float32)])

    def step(carry, ts):
        x, key = carry
        t, s = ts
        batch_t = jnp.full((x.shape[0],), t, jnp.int32)
        eps = eps_fn(x, batch_t)
        x0 = predict_x0(schedule, x, batch_t, eps)
        a_t, b_t, a_s, b_s = a_all[t], b_all[t], a_all[s], b_all[s]
        sigma = eta * jnp.sqrt(b_s / b_t * (1.0 - a_t / a_s))
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, x.shape, x.dtype)
        x = jnp.sqrt(a_s) * x0 + jnp.sqrt(jnp.maximum(b_s - sigma**2, 0.0)) * eps + sigma * noise
        return (x, key), None

    (x, _), _ = jax.lax.scan(step, (jnp.asarray(x_T), key), (times, previous))
    return x


def ddpm_sample(eps_fn: Callable, schedule: Schedule, x_T: jax.Array, *, key: jax.Array) -> jax.Array:
    """Ancestral sampling through all T steps: ``x_{t−1} = mean + √variance · z`` of the posterior at x̂₀.

    Args:
      eps_fn: ``eps_fn(x_t, t) -> ε̂``.
      schedule: the training schedule.
      x_T: ``(B, ...)`` start.
      key: PRNG key of the noise.

    Returns:
      x̂₀ (the last posterior mean, no noise added at t = 0), shaped like ``x_T``.
    """

    def step(carry, t):
        x, key = carry
        batch_t = jnp.full((x.shape[0],), t, jnp.int32)
        x0 = predict_x0(schedule, x, batch_t, eps_fn(x, batch_t))
        mean, variance = posterior(schedule, x0, x, batch_t)
        key, sub = jax.random.split(key)
        x = mean + jnp.sqrt(variance) * jax.random.normal(sub, x.shape, x.dtype)
        return (x, key), None

    times = jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32)
    (x, _), _ = jax.lax.scan(step, (jnp.asarray(x_T), key), times)
    return x
