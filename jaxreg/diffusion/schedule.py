"""Noise schedules of a DDPM and the closed forms built on them.

A :class:`Schedule` holds ``betas`` (β_t) and ``alpha_bars`` (ᾱ_t = Π_{s≤t} (1 − β_s)) for
t = 0 … T − 1 (0-based: step ``t`` here is step t + 1 of the DDPM paper). Forward noising
``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε``; inverting it for ``x₀`` or ``ε``; the posterior
``q(x_{t−1} | x_t, x₀)`` of ancestral sampling. All functions take one sample or a batch
(``t`` broadcasts against the leading axis), in float32.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Schedule", "cosine_schedule", "linear_schedule", "posterior", "predict_eps", "predict_x0", "q_sample"]


class Schedule(NamedTuple):
    """β_t, ᾱ_t and 1 − ᾱ_t, ``(T,)`` float32 arrays, t = 0 … T − 1.

    ``one_minus_alpha_bars`` is computed in float64: in float32, 1 − ᾱ_t cancels to a few
    digits at small t (ᾱ_1 = 0.9997 with the linear schedule).
    """

    betas: jax.Array
    alpha_bars: jax.Array
    one_minus_alpha_bars: jax.Array

    @property
    def num_steps(self) -> int:
        """T."""
        return int(self.betas.shape[0])


def _check_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"`num_steps` (T) must be an integer >= 1; got {num_steps!r}.")
    return int(num_steps)


def _from_betas(betas: np.ndarray) -> Schedule:
    # float64, then float32: ᾱ over 2000 steps loses ~1e-4 relative in float32, 1 − ᾱ more
    log_alpha_bars = np.cumsum(np.log1p(-betas))
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(np.exp(log_alpha_bars), jnp.float32),
                    jnp.asarray(-np.expm1(log_alpha_bars), jnp.float32))


def linear_schedule(num_steps: int = 2000, *, beta_start: float = 1e-6, beta_end: float = 1e-2) -> Schedule:
    """β linear from ``beta_start`` to ``beta_end`` over ``num_steps`` (DiffuseReg: 1e-6 → 1e-2, T = 2000).

    Raises:
      ValueError: ``num_steps < 1`` or betas outside (0, 1) or decreasing.
    """
    num_steps = _check_steps(num_steps)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"betas need 0 < beta_start <= beta_end < 1; got {beta_start} and {beta_end}.")
    return _from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def cosine_schedule(num_steps: int = 1000, *, offset: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: ᾱ(t) ∝ cos²((t/T + s)/(1 + s) · π/2), β clipped at ``max_beta``."""
    num_steps = _check_steps(num_steps)
    if not offset >= 0 or not 0 < max_beta < 1:
        raise ValueError(f"`offset` must be >= 0 and `max_beta` in (0, 1); got {offset} and {max_beta}.")
    f = np.cos((np.arange(num_steps + 1, dtype=np.float64) / num_steps + offset) / (1 + offset) * np.pi / 2) ** 2
    return _from_betas(np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta))


def _at(values: jax.Array, t, like: jax.Array) -> jax.Array:
    """``values[t]`` shaped to broadcast against ``like`` (``t`` scalar or ``(B,)``)."""
    v = values[jnp.asarray(t)]
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """``x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε`` for ``x0`` and ``noise`` of one shape; ``t`` scalar or ``(B,)``."""
    a, b = _at(schedule.alpha_bars, t, x0), _at(schedule.one_minus_alpha_bars, t, x0)
    return jnp.sqrt(a) * x0 + jnp.sqrt(b) * noise


def predict_x0(schedule: Schedule, xt: jax.Array, t, eps: jax.Array) -> jax.Array:
    """x̂₀ = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t: the exact inverse of :func:`q_sample` given its noise."""
    a, b = _at(schedule.alpha_bars, t, xt), _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - jnp.sqrt(b) * eps) / jnp.sqrt(a)


def predict_eps(schedule: Schedule, xt: jax.Array, t, x0: jax.Array) -> jax.Array:
    """ε = (x_t − √ᾱ_t·x₀) / √(1 − ᾱ_t): the noise that takes ``x0`` to ``xt`` at step ``t``."""
    a, b = _at(schedule.alpha_bars, t, xt), _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - jnp.sqrt(a) * x0) / jnp.sqrt(b)


def posterior(schedule: Schedule, x0: jax.Array, xt: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``q(x_{t−1} | x_t, x₀)`` (DDPM Eq. 6–7); at t = 0 the variance is 0.

    ``mean = √ᾱ_{t−1}·β_t/(1 − ᾱ_t)·x₀ + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t`` and
    ``variance = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)``, with ᾱ_{−1} = 1. The variance broadcasts
    like ``xt``.
    """
    t = jnp.asarray(t)
    one, zero = jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.float32)
    a_prev = _at(jnp.concatenate([one, schedule.alpha_bars[:-1]]), t, xt)
    b_prev = _at(jnp.concatenate([zero, schedule.one_minus_alpha_bars[:-1]]), t, xt)
    b, beta = _at(schedule.one_minus_alpha_bars, t, xt), _at(schedule.betas, t, xt)
    mean = jnp.sqrt(a_prev) * beta / b * x0 + jnp.sqrt(1.0 - beta) * b_prev / b * xt
    return mean, jnp.broadcast_to(beta * b_prev / b, xt.shape)
