"""Diffusion: schedules against numpy closed forms, the posterior against Bayes' rule, samplers with an oracle."""

import numpy as np
import pytest

from jaxreg.diffusion import cosine_schedule, linear_schedule, posterior, predict_eps, predict_x0, q_sample


def test_linear_schedule_is_diffusereg_s():
    s = linear_schedule()
    assert s.num_steps == 2000
    np.testing.assert_allclose(float(s.betas[0]), 1e-6, rtol=1e-6)
    np.testing.assert_allclose(float(s.betas[-1]), 1e-2, rtol=1e-6)
    betas = np.linspace(1e-6, 1e-2, 2000)
    np.testing.assert_allclose(np.asarray(s.betas), betas, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.alpha_bars), np.cumprod(1 - betas), rtol=1e-5)


def test_cosine_schedule_matches_its_closed_form():
    s = cosine_schedule(100)
    t = np.arange(101) / 100
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    # ᾱ_t = f(t + 1) / f(0) wherever β is not clipped (all but the last steps)
    np.testing.assert_allclose(np.asarray(s.alpha_bars)[:90], (f[1:] / f[0])[:90], rtol=1e-5)
    assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)


@pytest.mark.parametrize("t", [0, 10, 500, 1999])
def test_predict_x0_and_eps_invert_the_forward_noising(t):
    rng = np.random.default_rng(t)
    x0, eps = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    s = linear_schedule()
    xt = q_sample(s, x0, t, eps)
    a = np.prod(1 - np.linspace(1e-6, 1e-2, 2000)[: t + 1])
    np.testing.assert_allclose(np.asarray(xt), np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-4, atol=1e-5)
    # float32 division by √ᾱ_t (0.007 at t = 1999) amplifies rounding ~150×
    np.testing.assert_allclose(np.asarray(predict_x0(s, xt, t, eps)), x0, atol=1e-6 / np.sqrt(a) * 10)
    np.testing.assert_allclose(np.asarray(predict_eps(s, xt, t, x0)), eps, atol=1e-5 / np.sqrt(1 - a))


def test_batched_steps_broadcast_per_sample():
    s = linear_schedule(50)
    x0, eps = np.ones((3, 4, 4, 2), np.float32), np.zeros((3, 4, 4, 2), np.float32)
    xt = np.asarray(q_sample(s, x0, np.array([0, 10, 49]), eps))
    for i, t in enumerate([0, 10, 49]):
        np.testing.assert_allclose(xt[i], np.sqrt(float(s.alpha_bars[t])), rtol=1e-6)


@pytest.mark.parametrize("t", [1, 7, 99])
def test_posterior_matches_bayes_rule(t):
    """q(x_{t−1}|x_t, x₀) ∝ N(x_t; √α_t x_{t−1}, β_t) · N(x_{t−1}; √ᾱ_{t−1} x₀, 1 − ᾱ_{t−1}): precision-weighted."""
    s = linear_schedule(100, beta_start=1e-4, beta_end=0.02)
    betas = np.linspace(1e-4, 0.02, 100)
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(t)
    x0, xt = rng.normal(size=(2, 5, 5, 3))
    precision = (1 - betas[t]) / betas[t] + 1 / (1 - abar[t - 1])
    mean = (np.sqrt(1 - betas[t]) / betas[t] * xt + np.sqrt(abar[t - 1]) / (1 - abar[t - 1]) * x0) / precision
    got_mean, got_var = posterior(s, x0.astype(np.float32), xt.astype(np.float32), t)
    np.testing.assert_allclose(np.asarray(got_mean), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_var), 1 / precision, rtol=1e-4)


def test_posterior_at_step_zero_is_x0():
    s = linear_schedule(10)
    x0, xt = np.full((4, 4, 2), 0.3, np.float32), np.full((4, 4, 2), 0.9, np.float32)
    mean, var = posterior(s, x0, xt, 0)
    np.testing.assert_allclose(np.asarray(mean), x0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(var), 0)


@pytest.mark.parametrize("call, match", [
    (lambda: linear_schedule(0), "num_steps"),
    (lambda: linear_schedule(10, beta_start=0.0), "beta"),
    (lambda: linear_schedule(10, beta_start=0.1, beta_end=0.01), "beta"),
    (lambda: cosine_schedule(10, max_beta=1.0), "max_beta"),
])
def test_bad_options_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- samplers with an oracle noise predictor ------------------------------------------------

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxreg.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample  # noqa: E402


def _oracle(schedule, x0):
    """The perfect ε network for a known x₀: ε = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t)."""
    return lambda x, t: predict_eps(schedule, x, t, x0)


@pytest.mark.parametrize("steps, eta", [(1, 0.0), (10, 0.0), (50, 0.0), (50, 1.0)])
def test_ddim_with_an_oracle_returns_x0(steps, eta):
    s = linear_schedule()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 2)), jnp.float32)
    x_T = jax.random.normal(jax.random.key(1), x0.shape)
    got = jax.jit(lambda x: ddim_sample(_oracle(s, x0), s, x, steps=steps, eta=eta, key=jax.random.key(5)))(x_T)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x0), atol=1e-4)


def test_ddpm_with_an_oracle_returns_x0():
    s = linear_schedule(200, beta_start=1e-4, beta_end=0.02)
    x0 = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 6, 3)), jnp.float32)
    got = ddpm_sample(_oracle(s, x0), s, jax.random.normal(jax.random.key(3), x0.shape), key=jax.random.key(4))
    np.testing.assert_allclose(np.asarray(got), np.asarray(x0), atol=1e-4)


def test_ddim_timesteps_and_bad_steps():
    np.testing.assert_array_equal(ddim_timesteps(2000, 5), [1999, 1499, 1000, 500, 0])
    for bad in (0, 2001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            ddim_timesteps(2000, bad)
