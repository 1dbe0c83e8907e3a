"""DiffuseReg's samplers and switches against independent references.

Samplers: DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021, Eq. 12) written
here in float64 numpy from the linear schedule's betas (computed here, not read from the
code), run step by step next to the code with a *non-oracle* noise predictor (an oracle
returns x₀ exactly, so the last step would hide wrong intermediate coefficients). The
noise of the stochastic updates is drawn here from the same keys the samplers document:
each model call splits the carried key as ``key, sub = jax.random.split(key)`` and draws
``jax.random.normal(sub, x.shape)``.

Data parallelism: two train steps of a tiny DiffuseReg on 4 pairs split over 2 simulated
devices (a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) against
the same steps on one device.

(The model's switches, classifier-free guidance, the teacher start and condition dropout in
the loss, are checked against their formulas in ``test_diffusion_model.py``.)
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _two_devices import run_script
from jaxreg.diffusion import samplers
from jaxreg.diffusion.schedule import linear_schedule

# ----------------------------------------------------------------------------- references


def _alpha_bars(num_steps, beta_start, beta_end):
    """β_t linear (DiffuseReg's schedule) and ᾱ_t = Π_{s≤t}(1 − β_s), float64, 0-based t."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return betas, np.cumprod(1.0 - betas)


def _eps_np(x, t):
    """The non-oracle noise predictor of these tests: ε̂ = 0.6·x_t + 0.2·cos(t/150)."""
    return 0.6 * x + 0.2 * np.cos(t / 150.0)


def _eps_jax(x, t):
    shape = (-1,) + (1,) * (x.ndim - 1)
    return 0.6 * x + 0.2 * jnp.cos(t.astype(jnp.float32) / 150.0).reshape(shape)


def _x0_denoiser(alpha_bars):
    """``denoise(aux, x, t) -> x̂₀`` of ε̂ with the test's own ᾱ: x̂₀ = (x − √(1−ᾱ_t) ε̂)/√ᾱ_t."""
    a = jnp.asarray(np.sqrt(alpha_bars), jnp.float32)
    b = jnp.asarray(np.sqrt(1.0 - alpha_bars), jnp.float32)

    def denoise(aux, x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - b[t].reshape(shape) * _eps_jax(x, t)) / a[t].reshape(shape)

    return denoise


def _noises(key, count, shape):
    """The noise of each model call: ``key, sub = split(key)``; ``normal(sub, shape)``."""
    out = []
    for _ in range(count):
        key, sub = jax.random.split(key)
        out.append(np.asarray(jax.random.normal(sub, shape, jnp.float32), np.float64))
    return out


def _ddpm_step(x, t, betas, abar, z):
    """Ho et al. Algorithm 2: x_{t−1} = (x_t − β_t/√(1−ᾱ_t)·ε̂)/√α_t + σ_t z, σ_t² = β̃_t (0 at t = 0)."""
    eps = _eps_np(x, t)
    mean = (x - betas[t] / np.sqrt(1.0 - abar[t]) * eps) / np.sqrt(1.0 - betas[t])
    if t == 0:
        return mean
    var = (1.0 - abar[t - 1]) / (1.0 - abar[t]) * betas[t]
    return mean + np.sqrt(var) * z


def _ddim_step(x, t, s, abar, eta, z):
    """Song et al. Eq. 12 from step t to s (s = −1: ᾱ = 1), σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)."""
    a_t, a_s = abar[t], (1.0 if s < 0 else abar[s])
    eps = _eps_np(x, t)
    x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1.0 - a_s) / (1.0 - a_t)) * np.sqrt(1.0 - a_t / a_s)
    return np.sqrt(a_s) * x0 + np.sqrt(1.0 - a_s - sigma**2) * eps + sigma * z


def _trajectory(denoise, schedule, x_T, *, method, eta, key, steps=None, start_step=None):
    """The code's state after every model call (``observe`` one call at a time) and the steps it visited."""
    times, previous = samplers.sampling_timesteps(schedule.num_steps, method=method, steps=steps, start_step=start_step)
    run = jax.jit(samplers.make_runner(denoise, schedule, method=method, eta=eta))
    snaps = list(samplers.observe(run, x_T, times=times, previous=previous, key=key, every=1))
    return [int(s.t) for s in snaps], [np.asarray(s.x_t, np.float64) for s in snaps]


def _close(got, want, rtol):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- samplers


def test_ddpm_matches_algorithm_2_step_by_step():
    """Every ancestral step (σ_t² = β̃_t) against Ho et al.'s update from the code's previous state;
    the whole run against the float64 reference run from the same x_T and noise."""
    T, beta_start, beta_end = 200, 1e-4, 0.05
    betas, abar = _alpha_bars(T, beta_start, beta_end)
    schedule = linear_schedule(T, beta_start=beta_start, beta_end=beta_end)
    shape = (2, 4, 5, 2)
    x_T = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    key = jax.random.key(1)
    visited, states = _trajectory(_x0_denoiser(abar), schedule, x_T, method="ddpm", eta=0.0, key=key)
    assert visited == list(range(T - 1, -1, -1))
    noises = _noises(key, T, shape)
    x_prev, x_ref = np.asarray(x_T, np.float64), np.asarray(x_T, np.float64)
    for i, t in enumerate(visited):
        _close(states[i], _ddpm_step(x_prev, t, betas, abar, noises[i]), 2e-5)  # one step from the code's state
        x_ref = _ddpm_step(x_ref, t, betas, abar, noises[i])
        x_prev = states[i]
    _close(states[-1], x_ref, 1e-3)  # 200 float32 steps
    # the plain form (ε̂ in, the code's own x̂₀) lands on the same final state
    final = samplers.ddpm_sample(_eps_jax, schedule, x_T, key=key)
    _close(np.asarray(final, np.float64), x_ref, 1e-3)


@pytest.mark.parametrize("eta, steps, start_step", [(0.0, 10, None), (0.7, 10, None), (1.0, 12, 400)])
def test_ddim_matches_eq_12_step_by_step(eta, steps, start_step):
    """DDIM on DiffuseReg's schedule (β 1e-6 → 1e-2, T = 2000): η = 0 (deterministic) and η > 0
    (its noise drawn from the documented keys), each update against Eq. 12 from the code's state."""
    T = 2000
    _, abar = _alpha_bars(T, 1e-6, 1e-2)
    schedule = linear_schedule()
    shape = (2, 4, 5, 2)
    x_T = jax.random.normal(jax.random.key(2), shape, jnp.float32)
    key = jax.random.key(3)
    visited, states = _trajectory(_x0_denoiser(abar), schedule, x_T, method="ddim", eta=eta, key=key, steps=steps,
                                  start_step=start_step)
    first = T - 1 if start_step is None else start_step
    expected = [int(round(first - i * first / (steps - 1))) for i in range(steps)]  # evenly spaced, both ends
    assert visited == expected
    noises = _noises(key, steps, shape)
    x_prev, x_ref = np.asarray(x_T, np.float64), np.asarray(x_T, np.float64)
    for i, t in enumerate(visited):
        s = visited[i + 1] if i + 1 < steps else -1
        _close(states[i], _ddim_step(x_prev, t, s, abar, eta, noises[i]), 2e-5)
        x_ref = _ddim_step(x_ref, t, s, abar, eta, noises[i])
        x_prev = states[i]
    _close(states[-1], x_ref, 1e-4)
    if start_step is None:  # the plain form (ε̂ in) lands on the same final state
        final = samplers.ddim_sample(_eps_jax, schedule, x_T, steps=steps, eta=eta, key=key)
        _close(np.asarray(final, np.float64), x_ref, 1e-4)



# ----------------------------------------------------------------------------- data parallelism

_SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from _two_devices import one_and_two_devices
    from jaxreg.diffusion.model import DiffuseReg
    from jaxreg.training import make_train_step

    # A tiny 2-D denoiser (one stage, a plain and a shifted block) with condition dropout: the
    # per-sample draws (t, ε, dropped conditions) must be the same whether the batch is split or not.
    model = DiffuseReg(denoiser={"features": 8, "depths": (2,), "heads": (2,), "window": (4, 4)}, num_steps=100,
                       mean=[0.1, -0.2], std=[2.0, 0.5], teacher=lambda f, m: jnp.stack([f - m, 0.5 * f], axis=-1),
                       condition_dropout=0.5)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(size=(4, 16, 16)), jnp.float32) for k in ("fixed", "moving")}
    params = model.init(jax.random.key(0), batch)
    # Plain SGD, not make_optimizer's Adam: Adam's first step is lr·sign(g), which turns float
    # rounding in gradients that are zero in exact arithmetic (biases before a norm) into ±lr.
    optimizer = optax.apply_if_finite(optax.sgd(0.1), 10)
    r = one_and_two_devices(make_train_step(model.loss_fn, optimizer), optimizer, params, batch, steps=2,
                            metrics=("loss", "eps_mse", "ssim", "grad_norm"))
    single_params, sharded_params = r["single_params"], r["sharded_params"]
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(single_params, sharded_params))
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(single_params, jax.tree.leaves(params)))
    print(json.dumps({"devices": len(jax.devices()), "single": r["single"], "sharded": r["sharded"],
                      "max_param_diff": diff, "moved": moved, "batch_shards": r["batch_shards"]}))
""")


@pytest.mark.slow  # two compilations of the denoiser's gradient: ~3 minutes on 2 busy cores
def test_sharded_diffusereg_train_step_matches_one_device():
    """Two DiffuseReg train steps on 4 pairs split over 2 simulated devices = the same steps on one device."""
    result = run_script(_SHARDED, timeout=900)
    print(result)
    assert result["devices"] == 2 and result["batch_shards"] == 2
    np.testing.assert_allclose(result["sharded"], result["single"], rtol=1e-5)  # loss, eps_mse, ssim, |g| per step
    assert result["moved"] > 1e-3, result  # the steps did change the parameters
    assert result["max_param_diff"] < 1e-4 * result["moved"], result
