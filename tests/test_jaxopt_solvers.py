"""``solver.method = "jaxopt_anderson" / "jaxopt_broyden"``: jaxopt's root finders inside DEQReg.

References: numpy's linear solve (the fixed point), jaxopt's own ``run`` loop (the iterates the
intermediate states must equal), and DEQReg trained with the project's Anderson (where both solvers
converge, the fixed point is the same, so the training steps must agree).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.data.synthetic import synthetic_pair
from jaxreg.deq.model import DEQReg
from jaxreg.deq.jaxopt_solvers import JAXOPT_SOLVERS
from jaxreg.deq.solvers import solve_pairs, state_steps
from jaxreg.training import create_state, make_optimizer, make_train_step

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import jaxopt


def _linear_batch(batch=3, n=8, seed=0):
    """``T_b(z) = A_b z + c_b``, contractions (spectral radius <= 0.6), and their numpy fixed points."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, n, n))
    a *= 0.6 / np.max(np.abs(np.linalg.eigvals(a)), axis=1)[:, None, None]
    c = rng.normal(size=(batch, n))
    exact = np.stack([np.linalg.solve(np.eye(n) - a[b], c[b]) for b in range(batch)])
    return jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32), exact


@pytest.mark.parametrize("method", JAXOPT_SOLVERS)
def test_a_linear_batch_reaches_numpys_fixed_point(method):
    a, c, exact = _linear_batch()
    fn = lambda z: jnp.einsum("bij,bj->bi", a, z) + c  # noqa: E731
    z, info, _ = jax.jit(lambda z0: solve_pairs(fn, z0, method=method, max_steps=60, tol=1e-5))(jnp.zeros((3, 8)))
    steps = np.asarray(info.steps)
    assert np.all(np.asarray(info.converged)) and len(set(steps.tolist())) == 1 and steps[0] < 60, steps
    np.testing.assert_allclose(np.asarray(z), exact, atol=1e-4)
    # each pair's residual in the project's (relative) rule, at the last point T was evaluated at
    assert np.all(np.asarray(info.residual) < 1e-5)
    assert np.all(np.isnan(np.asarray(info.residuals)[:, steps[0]:]))


@pytest.mark.parametrize("method", JAXOPT_SOLVERS)
def test_the_states_are_jaxopts_own_iterates(method):
    """Eq. 9's intermediate states after ``state_steps(n)`` steps equal ``jaxopt.<Solver>(maxiter=k).run``."""
    a, c, _ = _linear_batch(seed=1)
    fn = lambda z: jnp.einsum("bij,bj->bi", a, z) + c  # noqa: E731
    z0 = jnp.zeros((3, 8))
    _, info, captured = solve_pairs(fn, z0, method=method, max_steps=60, tol=1e-5, states=3)
    n = int(info.steps[0])
    assert n < 60 and tuple(np.asarray(info.state_steps)[0]) == state_steps(n, 3)
    for row, k in zip(np.asarray(captured), state_steps(n, 3)):
        if method == "jaxopt_anderson":
            ref = jaxopt.AndersonAcceleration(fixed_point_fun=fn, history_size=5, maxiter=k, tol=0.0,
                                              implicit_diff=False).run(z0).params
        else:
            ref = jaxopt.Broyden(fun=lambda z: z - fn(z), stepsize=1.0, maxiter=k, tol=0.0,
                                 implicit_diff=False).run(z0).params
        np.testing.assert_allclose(row, np.asarray(ref), rtol=1e-5, atol=1e-6)


SMALL = {"encoder": (4, 8), "decoder": (8, 8, 4)}


class _Contraction(DEQReg):
    """``T(φ) = 0.5·φ + f_θ(I_f, I_m∘φ, φ)``: a fixed point exists and every solver can reach it
    (DEQReg's own ``T(φ) = φ + f_θ`` at initialisation adds a near-constant update: no fixed point,
    and a relative residual that falls only as the field grows)."""

    def update(self, params, x, ddf):
        return super().update(params, x, ddf) - 0.5 * ddf


def _train(method, batch, steps=3):
    """The losses and solver metrics of ``steps`` Adam steps of a small contractive DEQReg (phantom
    gradient, S = 3 corrected states)."""
    deq = _Contraction(**SMALL, solver={"method": method, "max_steps": 100, "tol": 1e-4})
    params = jax.tree_util.tree_map_with_path(  # the last convolution (initialised at std 1e-5) x 1e4
        lambda path, v: v * 1e4 if "update" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
        else v, deq.init(jax.random.key(1), batch))
    optimizer = make_optimizer({"learning_rate": 1e-3})
    state = create_state(params, optimizer, jax.random.key(2))
    step = jax.jit(make_train_step(lambda p, b, key: deq.loss_fn(p, b, key), optimizer))
    out = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        out.append({k: float(v) for k, v in metrics.items() if np.ndim(v) == 0})
    return out


@pytest.mark.slow
def test_training_with_jaxopts_solvers_follows_the_own_solver():
    """Three train steps on two 32² pairs: every solve converges, and the losses agree with the
    project's Anderson within 0.1 % (the same fixed point, reached within the tolerance)."""
    pairs = [synthetic_pair(jax.random.key(k), (32, 32), anatomy="cardiac") for k in (0, 1)]
    batch = {k: jnp.stack([jnp.asarray(p[k]) for p in pairs]) for k in ("fixed", "moving")}
    own = _train("anderson", batch)
    for method in JAXOPT_SOLVERS:
        theirs = _train(method, batch)
        print(method, [m["solver_steps"] for m in theirs], "steps; own Anderson", [m["solver_steps"] for m in own])
        for mine, other in zip(own, theirs):
            assert mine["solver_converged"] == 1.0 and other["solver_converged"] == 1.0, (method, other)
            np.testing.assert_allclose(other["loss"], mine["loss"], rtol=1e-3)
