"""Samplers of a trained noise predictor: DDPM ancestral and DDIM, jitted ``lax.scan`` loops.

The core works on a *denoiser* ``denoise(aux, x_t, t) -> x̂₀``: ``x_t`` a batch ``(B, ...)``,
``t`` a ``(B,)`` int32 array of 0-based steps, ``aux`` any pytree of arrays passed to the
jitted loop as an argument (model parameters, conditioning images: arguments, not
closed-over constants, so XLA does not constant-fold them). Guidance and classifier-free
guidance live in the denoiser (``jaxreg.diffusion.model``); every update here re-derives
``ε̂`` from ``x_t`` and the (possibly guided) ``x̂₀``, so a guided ``x̂₀`` steers the step.

* ``method="ddpm"``: ancestral steps ``x_{t−1} ~ q(x_{t−1} | x_t, x̂₀)`` through every step;
* ``method="ddim"``: ``steps`` evenly spaced steps of DDIM (Song et al. 2021) with
  stochasticity ``eta`` (0: deterministic; 1: DDPM-like variance);
* ``start_step``: begin at that step from a noised given field instead of pure noise at T − 1;
* :func:`observe` yields a :class:`Snapshot` every ``every`` steps (one jitted scan per
  chunk), so a caller can watch x̂₀ form and stop early.

Noise: every model call splits the carried key, ``key, sub = jax.random.split(key)``, and a
stochastic update draws ``jax.random.normal(sub, x.shape)``; :func:`observe` carries the key
across chunks, so chunked and whole runs draw the same noise.

:func:`ddim_sample` / :func:`ddpm_sample` are the plain forms for an ``eps_fn(x_t, t)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _random as random
from jaxreg.diffusion.schedule import Schedule, posterior, predict_eps, predict_x0

__all__ = ["METHODS", "Snapshot", "ddim_sample", "ddim_timesteps", "ddpm_sample", "make_runner", "observe", "sample",
           "sampling_timesteps"]

METHODS = ("ddpm", "ddim")


class Snapshot(NamedTuple):
    """The sampler's state after ``index`` of ``total`` model calls.

    Attributes:
      index: model calls done (1 … total).
      total: model calls of the whole run.
      t: the step just denoised (0-based; 0 is the clean end).
      x_t: ``(B, ...)`` the state after the update (x at the next step).
      x0: ``(B, ...)`` the model's x̂₀ at ``t``.
    """

    index: int
    total: int
    t: int
    x_t: jax.Array
    x0: jax.Array


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"`{name}` must be an integer in {lo}..{hi}; got {value!r}.")
    return int(value)


def ddim_timesteps(num_steps: int, steps: int, *, start_step: int | None = None) -> np.ndarray:
    """``steps`` evenly spaced 0-based steps from ``start_step`` (default ``num_steps − 1``) down to 0.

    Raises:
      ValueError: ``steps`` not in 1 … ``start_step + 1`` (at most T), or a bad ``start_step``.
    """
    start = num_steps - 1 if start_step is None else _check_int(start_step, "start_step", 0, num_steps - 1)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= start + 1:
        raise ValueError(f"DDIM `steps` must be an integer in 1..{start + 1} (T = {num_steps}, starting at step "
                         f"{start}); got {steps!r}.")
    return np.round(np.linspace(start, 0, steps)).astype(np.int32)


def sampling_timesteps(num_steps: int, *, method: str = "ddim", steps: int | None = None,
                       start_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(times, previous)``: the steps a sampler denoises, descending, and the step each lands on (−1: clean).

    ``ddpm`` visits every step from ``start_step`` (default T − 1) down; ``ddim`` visits
    ``steps`` of them (default 50, or T if smaller).
    """
    if method not in METHODS:
        raise ValueError(f"sampler `method` must be one of {METHODS}; got {method!r}.")
    if method == "ddpm":
        start = num_steps - 1 if start_step is None else _check_int(start_step, "start_step", 0, num_steps - 1)
        times = np.arange(start, -1, -1, dtype=np.int32)
    else:
        times = ddim_timesteps(num_steps, min(50, num_steps) if steps is None else steps, start_step=start_step)
    return times, np.concatenate([times[1:], np.full((1,), -1, np.int32)])


def _update(schedule: Schedule, method: str, eta: float, x, x0, t, s, key):
    """One sampler update from step ``t`` to ``s`` (< t; −1 is the clean end) given x̂₀."""
    batch_t = jnp.full((x.shape[0],), t, jnp.int32)
    if method == "ddpm":  # s = t − 1: the posterior at x̂₀ (no noise at t = 0: its variance is 0)
        mean, variance = posterior(schedule, x0, x, batch_t)
        return mean + jnp.sqrt(variance) * random.normal(key, x.shape, x.dtype)
    eps = predict_eps(schedule, x, batch_t, x0)
    a_all = jnp.concatenate([schedule.alpha_bars, jnp.ones((1,), jnp.float32)])  # index −1 → ᾱ = 1
    b_all = jnp.concatenate([schedule.one_minus_alpha_bars, jnp.zeros((1,), jnp.float32)])
    a_t, b_t, a_s, b_s = a_all[t], b_all[t], a_all[s], b_all[s]
    sigma = eta * jnp.sqrt(b_s / b_t * (1.0 - a_t / a_s))
    noise = random.normal(key, x.shape, x.dtype)
    return jnp.sqrt(a_s) * x0 + jnp.sqrt(jnp.maximum(b_s - sigma**2, 0.0)) * eps + sigma * noise


def make_runner(denoise: Callable, schedule: Schedule, *, method: str = "ddim", eta: float = 0.0) -> Callable:
    """``run(aux, x, key, times, previous) -> (x, key, x0)``: the scan over some sampler steps (unjitted).

    ``times``/``previous`` are int32 arrays from :func:`sampling_timesteps` (or a chunk of
    them); ``x0`` is the last x̂₀.
    """
    if method not in METHODS:
        raise ValueError(f"sampler `method` must be one of {METHODS}; got {method!r}.")
    if not eta >= 0:
        raise ValueError(f"`eta` must be >= 0; got {eta!r}.")

    def run(aux, x, key, times, previous):
        def step(carry, ts):
            x, key, _ = carry
            t, s = ts
            x0 = denoise(aux, x, jnp.full((x.shape[0],), t, jnp.int32))
            key, sub = jax.random.split(key)
            return (_update(schedule, method, eta, x, x0, t, s, sub), key, x0), None

        x = jnp.asarray(x)
        (x, key, x0), _ = jax.lax.scan(step, (x, key, jnp.zeros_like(x)), (times, previous))
        return x, key, x0

    return run


def sample(denoise: Callable, schedule: Schedule, x_T: jax.Array, *, aux=(), method: str = "ddim",
           steps: int | None = None, eta: float = 0.0, key: jax.Array | None = None,
           start_step: int | None = None) -> jax.Array:
    """Runs a sampler to the end and returns x̂₀ ``(B, ...)`` (call under ``jax.jit`` or not).

    Args:
      denoise: ``denoise(aux, x_t, t) -> x̂₀`` (see the module docstring).
      schedule: the training schedule.
      x_T: ``(B, ...)`` start at ``start_step`` (pure noise at T − 1, or a noised field).
      aux: arrays ``denoise`` needs.
      method: ``"ddpm"`` or ``"ddim"``.
      steps: DDIM model calls (default 50); ignored by DDPM.
      eta: DDIM stochasticity (> 0 needs ``key``); DDPM always needs ``key``.
      key: PRNG key of the sampler's noise.
      start_step: the step ``x_T`` is at (default T − 1).
    """
    if key is None:
        if method == "ddpm" or eta > 0:
            raise ValueError("`key` is needed by DDPM and by DDIM with `eta` > 0.")
        key = jax.random.key(0)
    times, previous = sampling_timesteps(schedule.num_steps, method=method, steps=steps, start_step=start_step)
    run = make_runner(denoise, schedule, method=method, eta=eta)
    return run(aux, x_T, key, jnp.asarray(times), jnp.asarray(previous))[0]


def observe(run: Callable, x_T: jax.Array, *, aux=(), times: np.ndarray, previous: np.ndarray, key: jax.Array,
            every: int = 10) -> Iterator[Snapshot]:
    """Yields a :class:`Snapshot` after every ``every`` model calls (and after the last).

    Args:
      run: a **jitted** :func:`make_runner` (chunks of equal length reuse one compilation).
      x_T, aux, key: as in :func:`sample`.
      times, previous: from :func:`sampling_timesteps`.
      every: model calls between snapshots (>= 1).

    Stop whenever you like: the sampler only runs as far as it is iterated.
    """
    every = _check_int(every, "every", 1, 10**9)
    x, total = jnp.asarray(x_T), len(times)
    for begin in range(0, total, every):
        end = min(begin + every, total)
        x, key, x0 = run(aux, x, key, jnp.asarray(times[begin:end]), jnp.asarray(previous[begin:end]))
        yield Snapshot(end, total, int(times[end - 1]), x, x0)


def _eps_denoiser(eps_fn: Callable, schedule: Schedule) -> Callable:
    return lambda aux, x, t: predict_x0(schedule, x, t, eps_fn(x, t))


def ddim_sample(eps_fn: Callable, schedule: Schedule, x_T: jax.Array, *, steps: int, eta: float = 0.0,
                key: jax.Array | None = None) -> jax.Array:
    """DDIM from ``x_T`` at step T − 1 down to x̂₀ in ``steps`` calls of ``eps_fn(x_t, t) -> ε̂``."""
    return sample(_eps_denoiser(eps_fn, schedule), schedule, x_T, method="ddim", steps=steps, eta=eta, key=key)


def ddpm_sample(eps_fn: Callable, schedule: Schedule, x_T: jax.Array, *, key: jax.Array) -> jax.Array:
    """Ancestral sampling through all T steps with ``eps_fn(x_t, t) -> ε̂``; returns the last posterior mean."""
    return sample(_eps_denoiser(eps_fn, schedule), schedule, x_T, method="ddpm", key=key)
