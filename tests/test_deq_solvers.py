"""Fixed-point solvers and the implicit layer against closed forms, numpy and unrolled autodiff."""

import itertools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.deq import (SOLVERS, describe, fixed_point_layer, jacobian_penalty, phantom_steps, solve, solve_pairs,
                        state_steps)
from jaxreg.deq.solvers import OWN_SOLVERS


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _linear_problem(n=20, seed=0):
    """A symmetric contraction: eigenvalues in [-0.9, 0.9], the largest exactly 0.9."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(-0.9, 0.9, n)
    lam[0] = 0.9
    return q @ np.diag(lam) @ q.T, rng.standard_normal(n)


@jax.jit
def _solve_all(a, b, z0):
    """All three solvers on T(z) = a z + b; fn closes over traced arrays under jit."""
    return {m: solve(lambda z: a @ z + b, z0, method=m, max_steps=400, tol=1e-10)[:2]
            for m in OWN_SOLVERS}  # jaxopt's: tests/test_jaxopt_solvers.py (its Anderson stalls at 1e-10 here)


def test_linear_fixed_point_matches_closed_form(x64):
    a, b = _linear_problem()
    ref = np.linalg.solve(np.eye(len(b)) - a, b)
    out = _solve_all(jnp.asarray(a), jnp.asarray(b), jnp.zeros(len(b)))
    steps = {}
    for method, (z, info) in out.items():
        assert bool(info.converged), (method, describe(info))
        np.testing.assert_allclose(np.asarray(z), ref, rtol=0, atol=1e-7 * np.abs(ref).max())
        steps[method] = int(info.steps)
    print("steps to rel. residual 1e-10:", steps)
    # plain iteration contracts like 0.9^k, so it needs on the order of 200 steps
    assert 150 < steps["fixed_point"] <= 400
    assert steps["anderson"] < steps["fixed_point"] / 2
    assert steps["broyden"] < steps["fixed_point"] / 2


def test_float32_default_options():
    a, b = _linear_problem(seed=1)
    ref = np.linalg.solve(np.eye(len(b)) - a, b)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    def linear(z):
        return a @ z + b

    for method in SOLVERS:
        z, info, _ = jax.jit(lambda z0, m=method: solve(linear, z0, method=m,
                                                        max_steps=200))(jnp.zeros(20))
        assert z.dtype == jnp.float32 and bool(info.converged), (method, describe(info))
        print(f"float32, default tol: {method} {describe(info)}")
        assert np.linalg.norm(np.asarray(z) - ref) / np.linalg.norm(ref) < 1e-2


def test_info_residuals_states_and_stop_rules(x64):
    """Stops after exactly 12 steps; the S = 4 states are those of steps 2, 5, 7, 10 of a numpy loop.

    Fails on the old solver, which captured fixed steps of max_steps (copies of z* past the stop).
    """
    a, b = _linear_problem(n=6, seed=2)
    damping = 0.7
    # independent reference: a python loop over numpy
    z, zs, rel, ab = np.zeros(6), [np.zeros(6)], [], []
    for _ in range(30):
        t = a @ z + b
        rel.append(np.linalg.norm(t - z) / (np.linalg.norm(t) + 1e-8))
        ab.append(np.linalg.norm(t - z))
        z = damping * t + (1 - damping) * z
        zs.append(z)  # zs[k]: after k steps
    for stop, ref_res in (("relative", rel), ("absolute", ab)):
        tol = ref_res[11] * 1.0001  # stops after exactly 12 steps
        z, info, captured = solve(lambda z: jnp.asarray(a) @ z + jnp.asarray(b), jnp.zeros(6),
                                  method="fixed_point", max_steps=30, tol=tol, stop=stop,
                                  damping=damping, states=4)
        assert int(info.steps) == 12 and bool(info.converged)
        assert info.residuals.shape == (30,)
        np.testing.assert_allclose(np.asarray(info.residuals[:12]), ref_res[:12], rtol=1e-5)
        assert np.all(np.isnan(np.asarray(info.residuals[12:])))
        assert float(info.residual) == float(info.residuals[11])
        np.testing.assert_allclose(np.asarray(z), zs[12], rtol=1e-6)
        # 12·k/5 = 2.4, 4.8, 7.2, 9.6: equal fifths of the 12 steps taken, rounded
        assert tuple(np.asarray(info.state_steps)) == (2, 5, 7, 10)
        assert captured.shape == (4, 6)
        for row, k in zip(np.asarray(captured), (2, 5, 7, 10)):
            np.testing.assert_allclose(row, zs[k], rtol=1e-6)
    # a full run: quarters of the 30 steps, never the final z (Eq. 9 counts z* once)
    z, info, captured = solve(lambda z: jnp.asarray(a) @ z + jnp.asarray(b), jnp.zeros(6), method="fixed_point",
                              max_steps=30, tol=1e-30, damping=damping, states=3)
    assert int(info.steps) == 30 and tuple(np.asarray(info.state_steps)) == (8, 15, 23)  # 7.5, 15, 22.5 rounded up
    for row, k in zip(np.asarray(captured), (8, 15, 23)):
        np.testing.assert_allclose(row, zs[k], rtol=1e-6)
    for method in SOLVERS:  # a tiny budget never claims convergence
        _, info, _ = solve(lambda z: jnp.asarray(a) @ z + jnp.asarray(b), jnp.zeros(6),
                           method=method, max_steps=3, tol=1e-12)
        assert int(info.steps) == 3 and not bool(info.converged)
        assert np.all(np.isfinite(np.asarray(info.residuals)))
        assert "NOT converged after 3/3 steps" in describe(info)


def test_state_steps_closed_form():
    """t_k = round-half-up(k·n/(S + 1)), k = 1..S, against exact fractions; scalar and array forms agree."""
    assert state_steps(48, 3) == (12, 24, 36)
    assert state_steps(10, 3) == (3, 5, 8)  # 2.5 → 3, 5, 7.5 → 8
    assert state_steps(48, 0) == ()
    n = np.arange(1, 101)
    for s in range(6):
        ref = [[int(Fraction(k * m, s + 1) + Fraction(1, 2)) for k in range(1, s + 1)] for m in n]
        assert [list(state_steps(int(m), s)) for m in n] == ref
        np.testing.assert_array_equal(np.asarray(state_steps(jnp.asarray(n), s)), np.asarray(ref).reshape(len(n), s))


@pytest.mark.parametrize("method", SOLVERS)
def test_states_of_an_early_stop_are_the_iterates_of_its_trajectory(x64, method):
    """Stopping at n < max_steps: state k is the iterate after state_steps(n)[k] steps of the same solver."""
    a, b = _linear_problem(n=12, seed=4)
    fn = lambda z: jnp.asarray(a) @ z + jnp.asarray(b)  # noqa: E731
    z, info, captured = solve(fn, jnp.zeros(12), method=method, max_steps=300, tol=1e-8, states=3)
    n = int(info.steps)
    assert bool(info.converged) and n < 300 and n >= 8
    assert tuple(np.asarray(info.state_steps)) == state_steps(n, 3)
    for row, k in zip(np.asarray(captured), state_steps(n, 3)):
        ref, ref_info, _ = solve(fn, jnp.zeros(12), method=method, max_steps=k, tol=1e-30)
        assert int(ref_info.steps) == k
        if method == "jaxopt_broyden":  # its history is max_steps long: other sums of zeros, last-bit differences
            np.testing.assert_allclose(row, np.asarray(ref), rtol=1e-12)
        else:
            np.testing.assert_array_equal(row, np.asarray(ref))


@pytest.mark.parametrize("method", OWN_SOLVERS)  # jaxopt's solve the batch as one system
def test_pairs_are_solved_independently(x64, method):
    """solve_pairs on 3 problems that stop at different steps. References that are not solve itself
    (solve is solve_pairs with B = 1): each pair's fixed point against numpy's linear solve; its
    steps and residuals, for plain iteration, against a numpy loop with the stop rule; and the
    pair's whole result (field, steps, residuals, states) unchanged when the other pairs are
    replaced by other problems and the batch is reordered."""
    a, b = _linear_problem(n=10, seed=5)
    rates = np.array([0.3, 0.6, 0.85])

    def fn(x, z):  # pair p: T(z) = rate_p · a z / 0.9 + b, a contraction of rate rate_p
        return x[:, None] * (z @ jnp.asarray(a).T) / 0.9 + jnp.asarray(b)

    options = dict(method=method, max_steps=400, tol=1e-9, states=2)
    run = jax.jit(lambda x, z0: solve_pairs(lambda z: fn(x, z), z0, **options))
    z, info, captured = run(jnp.asarray(rates), jnp.zeros((3, 10)))
    assert captured.shape == (2, 3, 10) and info.steps.shape == (3,) and info.state_steps.shape == (3, 2)
    steps = np.asarray(info.steps)
    assert len(set(steps.tolist())) == 3 and np.all(np.asarray(info.converged)), steps
    for p, rate in enumerate(rates):
        exact = np.linalg.solve(np.eye(10) - rate * a / 0.9, b)
        np.testing.assert_allclose(np.asarray(z[p]), exact, atol=1e-7)
    if method == "fixed_point":  # plain iteration, written out: z ← T(z) until ‖T(z) − z‖ / ‖T(z)‖ < tol
        for p, rate in enumerate(rates):
            zz, residuals = np.zeros(10), []
            while True:
                t = rate * a @ zz / 0.9 + b
                residuals.append(np.linalg.norm(t - zz) / (np.linalg.norm(t) + 1e-12))
                zz = t
                if residuals[-1] < 1e-9:
                    break
            assert steps[p] == len(residuals)
            np.testing.assert_allclose(np.asarray(info.residuals[p, :steps[p]]), residuals, rtol=1e-5)
    # Other companions, another order: pair 0 (rate 0.3) sits last, beside two new problems.
    other, other_info, other_captured = run(jnp.asarray([0.5, 0.7, 0.3]), jnp.zeros((3, 10)))
    assert int(other_info.steps[2]) == steps[0]
    same = dict(rtol=1e-12, atol=1e-15)  # float64 to the last bits: the same program, other data
    np.testing.assert_allclose(np.asarray(other[2]), np.asarray(z[0]), **same)
    np.testing.assert_allclose(np.asarray(other_captured[:, 2]), np.asarray(captured[:, 0]), **same)
    np.testing.assert_allclose(np.asarray(other_info.residuals[2]), np.asarray(info.residuals[0]), **same)


def _jaxopt():
    import warnings

    with warnings.catch_warnings():  # deprecated upstream; here only as the reference
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt
    return jaxopt


@pytest.mark.slow
def test_anderson_matches_jaxopt(x64):
    """Our Anderson is jaxopt's ``AndersonAcceleration`` (memory 5, β = 0.8) driven with the same
    relative Tikhonov term (1e-5 · mean diagonal of the Gram matrix): the same iterates."""
    import dataclasses

    a, b = _linear_problem(n=20, seed=8)
    a, b = jnp.asarray(a), jnp.asarray(b)
    fn = lambda z: jnp.tanh(a @ z + b)  # noqa: E731
    aa = _jaxopt().AndersonAcceleration(fixed_point_fun=fn, history_size=5, beta=0.8, maxiter=30, jit=False)
    z, state = jnp.zeros(20), aa.init_state(jnp.zeros(20))
    for k in (1, 5, 6, 12, 25):
        while int(state.iter_num) < k:
            gram = state.residual_gram
            ridge = 1e-5 * jnp.trace(gram) / 5 + jnp.finfo(gram.dtype).tiny
            z, state = dataclasses.replace(aa, ridge=ridge).update(z, state)
        ours, info, _ = solve(fn, jnp.zeros(20), method="anderson", history=5, damping=0.8, max_steps=k, tol=1e-30)
        assert int(info.steps) == k
        np.testing.assert_allclose(np.asarray(ours), np.asarray(z), rtol=1e-9, atol=1e-12)


def test_full_memory_broyden_matches_jaxopt(x64):
    """With room for every pair, our limited-memory Broyden is Broyden's good method: jaxopt's
    ``Broyden`` (full memory, unit step, no line search) on z - T(z) gives the same iterates."""
    a, b = _linear_problem(n=20, seed=6)
    a, b = jnp.asarray(a), jnp.asarray(b)
    fn = lambda z: jnp.tanh(a @ z + b)  # noqa: E731
    br = _jaxopt().Broyden(fun=lambda z: z - fn(z), history_size=30, stepsize=1.0, maxiter=30, jit=False)
    z, state = jnp.zeros(20), br.init_state(jnp.zeros(20))
    for k in (1, 5, 12, 25):
        while int(state.iter_num) < k:
            z, state = br.update(z, state)
        ours, info, _ = solve(fn, jnp.zeros(20), method="broyden", history=30, max_steps=k, tol=1e-30)
        assert int(info.steps) == k
        np.testing.assert_allclose(np.asarray(ours), np.asarray(z), rtol=1e-9, atol=1e-12)


def test_limited_memory_broyden_converges_where_a_ring_buffer_diverges(x64):
    """Broyden with 8 pairs on 40-dimensional contractions (spectral radius 0.9; symmetric and not).

    The old solver (jaxopt's Broyden, whose ring buffer drops the oldest rank-one term of a
    product built on it) gave NaN after 120–360 steps on the symmetric ones with 8 slots; a
    restart every 8 steps stalled on two of the others. Ours converges on all, in fewer
    steps than plain iteration (~200).
    """
    rng = np.random.default_rng(0)
    for sym in (True, False):
        for seed in range(3):
            if sym:
                a, b = _linear_problem(n=40, seed=seed)
            else:
                a = np.random.default_rng(seed).standard_normal((40, 40))
                a, b = 0.9 * a / np.max(np.abs(np.linalg.eigvals(a))), rng.standard_normal(40)
            ref = np.linalg.solve(np.eye(40) - a, b)
            z, info, _ = jax.jit(lambda a, b: solve(lambda z: a @ z + b, jnp.zeros(40), method="broyden", history=8,
                                                    max_steps=600, tol=1e-10))(jnp.asarray(a), jnp.asarray(b))
            assert bool(info.converged) and int(info.steps) < 120, (sym, seed, describe(info))
            np.testing.assert_allclose(np.asarray(z), ref, atol=1e-7 * np.abs(ref).max())


def _temp_mb(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.parametrize("method", OWN_SOLVERS + ("jaxopt_anderson",))  # jaxopt's Broyden keeps every step
def test_solver_memory_is_flat_in_max_steps(method):
    """Compiled temporaries of a batched solve with S = 3 states: 8 vs 96 max_steps (old Broyden: 2·max_steps fields)."""
    z0 = jnp.zeros((2, 24, 24, 24, 3))
    x = jnp.linspace(0.0, 1.0, z0.size, dtype=jnp.float32).reshape(z0.shape)

    def fn(x, z):
        return 0.5 * jnp.tanh(z) + x

    mb = {steps: _temp_mb(lambda x, z0, steps=steps: solve_pairs(lambda z: fn(x, z), z0, method=method,
                                                                 max_steps=steps, tol=1e-6, states=3), x, z0)
          for steps in (8, 96)}
    field_mb = z0.size * 4 / 2**20
    assert mb[96] <= mb[8] + 0.1 * field_mb, (mb, field_mb)
    # history + S states + a few working copies (jaxopt's Anderson: 37 measured, its own temporaries)
    slots = {"fixed_point": 0, "anderson": 2 * 5, "broyden": 2 * 8, "jaxopt_anderson": 2 * 5 + 18}[method]
    assert mb[96] <= (slots + 3 + 8) * field_mb, (mb, field_mb)


def test_blow_up_stops_with_last_finite_iterate():
    z, info, _ = solve(lambda z: 2.0 * z + 1.0, jnp.zeros(3), method="fixed_point",
                       max_steps=500, tol=1e-3)
    assert int(info.steps) < 500 and not bool(info.converged)
    assert np.all(np.isfinite(np.asarray(z)))


# --- implicit layer on T(z) = tanh(W z + U x + c) ------------------------------------------

N, M = 8, 3


def _tanh_problem():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((N, N))
    params = {"W": 0.5 * w / np.linalg.norm(w, 2), "U": rng.standard_normal((N, M)),
              "c": rng.standard_normal(N)}
    return params, rng.standard_normal(M), rng.standard_normal(N)  # params, x, loss weights


def _f(p, x, z):
    return jnp.tanh(p["W"] @ z + p["U"] @ x + p["c"])


def _flat(tree):
    return np.concatenate([np.ravel(tree[0][k]) for k in ("U", "W", "c")] + [np.ravel(tree[1])])


def _rel(a, b):
    return np.linalg.norm(_flat(a) - _flat(b)) / np.linalg.norm(_flat(b))


def _numpy_grads(params, x, v, jacobian_free=False):
    """dL/d(params, x) for L = v . z*, by the implicit function theorem in numpy."""
    z = np.zeros(N)
    for _ in range(500):
        z = np.tanh(params["W"] @ z + params["U"] @ x + params["c"])
    d = 1 - z**2  # T = tanh(pre), dT/dpre = diag(d)
    lhs = np.eye(N) if jacobian_free else (np.eye(N) - d[:, None] * params["W"]).T
    u = d * np.linalg.solve(lhs, v)  # (I - J)^{-T} v pulled through tanh
    return {"W": np.outer(u, z), "U": np.outer(u, x), "c": u}, params["U"].T @ u


def _layer_grads(layer, params, x, v):
    def loss(p, xx):
        return jnp.dot(v, layer(p, xx, jnp.zeros(N))[0])
    return jax.jit(jax.grad(loss, (0, 1)))(params, x)


def _unrolled_grads(params, x, v):
    def loss(p, xx):
        z = jnp.zeros(N)
        for _ in range(200):
            z = _f(p, xx, z)
        return jnp.dot(v, z)
    return jax.grad(loss, (0, 1))(params, x)


@pytest.mark.parametrize("method", SOLVERS)
def test_ift_gradient_matches_unrolled_and_numpy(x64, method):
    params, x, v = _tanh_problem()
    layer = fixed_point_layer(_f, solver={"method": method, "tol": 1e-10, "max_steps": 100},
                              backward="ift")
    g = _layer_grads(layer, params, x, v)
    assert _rel(g, _unrolled_grads(params, x, v)) < 1e-3
    assert _rel(g, _numpy_grads(params, x, v)) < 1e-6


def test_phantom_gradient_converges_with_k(x64):
    params, x, v = _tanh_problem()
    ref = _numpy_grads(params, x, v)
    solver = {"tol": 1e-10, "max_steps": 100}
    errors = [_rel(_layer_grads(fixed_point_layer(_f, solver=solver, phantom_steps=k,
                                                  damping=0.5), params, x, v), ref)
              for k in (1, 5, 20, 60)]
    assert all(e1 > e2 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-4, errors
    # K = 1, damping = 1: the Jacobian-free gradient, (I - J)^{-T} replaced by I
    jfb = fixed_point_layer(_f, solver=solver, phantom_steps=1, damping=1.0)
    g = _layer_grads(jfb, params, x, v)
    assert _rel(g, _numpy_grads(params, x, v, jacobian_free=True)) < 1e-6


def test_layer_forward_z0_and_info_have_no_gradient(x64):
    params, x, v = _tanh_problem()
    layer = fixed_point_layer(_f, solver={"tol": 1e-10, "max_steps": 100}, backward="ift")
    z, info, captured = layer(params, x, jnp.zeros(N))
    assert captured.shape == (0, N)
    np.testing.assert_allclose(np.asarray(z), np.asarray(_f(params, x, z)), atol=1e-9)
    assert bool(info.converged) and int(info.steps) <= 100
    g_z0 = jax.grad(lambda z0: jnp.dot(v, layer(params, x, z0)[0]))(jnp.ones(N))
    assert np.all(np.asarray(g_z0) == 0)
    g_info = jax.grad(lambda p: layer(p, x, jnp.zeros(N))[1].residual)(params)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(g_info))


def _f_batch(p, x, z):
    """_f on a batch: x (B, M), z (B, N)."""
    return jnp.tanh(z @ p["W"].T + x @ p["U"].T + p["c"])


@pytest.mark.parametrize("backward", ["ift", "phantom"])
def test_batched_layer_is_separate_layers(x64, backward):
    """A batch of 3 problems through a batched layer: z*, the S = 2 states and the gradient of
    Σ_b v_b·z*_b equal those of 3 separate layers (per-pair forward and adjoint solves)."""
    params, _, v = _tanh_problem()
    rng = np.random.default_rng(7)
    xs, vs = rng.standard_normal((3, M)) * np.array([[0.1], [1.0], [3.0]]), v * rng.uniform(0.5, 2, (3, 1))
    options = dict(solver={"method": "anderson", "tol": 1e-9, "max_steps": 100}, backward=backward, states=2)
    batched = fixed_point_layer(_f_batch, batched=True, **options)
    single = fixed_point_layer(_f, **options)

    def loss(layer, p, xx, vv, z0):
        z, info, states = layer(p, xx, z0)
        return jnp.sum(vv * z), (z, info, states)

    (_, (z, info, states)), g = jax.jit(jax.value_and_grad(lambda p, xx: loss(batched, p, xx, vs, jnp.zeros((3, N))),
                                                           (0, 1), has_aux=True))(params, xs)
    assert info.steps.shape == (3,) and states.shape == (2, 3, N)
    assert len(set(np.asarray(info.steps).tolist())) > 1, info.steps  # they stop at different steps
    total = None
    for b in range(3):
        (_, (zb, info_b, states_b)), gb = jax.value_and_grad(
            lambda p, xx, b=b: loss(single, p, xx, vs[b], jnp.zeros(N)), (0, 1), has_aux=True)(params, xs[b])
        assert int(info_b.steps) == int(info.steps[b])
        np.testing.assert_allclose(np.asarray(z[b]), np.asarray(zb), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(states[:, b]), np.asarray(states_b), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g[1][b]), np.asarray(gb[1]), rtol=1e-9, atol=1e-12)
        total = gb[0] if total is None else jax.tree.map(jnp.add, total, gb[0])
    for k in params:
        np.testing.assert_allclose(np.asarray(g[0][k]), np.asarray(total[k]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("remat", [False, True])
def test_phantom_steps_matches_python_loop(remat):
    params, x, _ = _tanh_problem()
    z0 = np.linspace(-1, 1, N)
    z = z0
    for _ in range(3):
        z = 0.6 * np.tanh(params["W"] @ z + params["U"] @ x + params["c"]) + 0.4 * z
    got = phantom_steps(_f, params, x, jnp.asarray(z0, jnp.float32), steps=3, damping=0.6, remat=remat)
    np.testing.assert_allclose(np.asarray(got), z, rtol=1e-5, atol=1e-6)


def test_rematerialised_phantom_gradient_matches_numerical_derivative(x64):
    """remat changes memory, not the gradient: d/dc of sum(z_K) against central differences."""
    params, x, _ = _tanh_problem()
    z0 = jnp.linspace(-1.0, 1.0, N)

    def total(c):
        return jnp.sum(phantom_steps(_f, dict(params, c=c), x, z0, steps=3, damping=0.6, remat=True))

    grad = np.asarray(jax.grad(total)(jnp.asarray(params["c"])))
    h, eye = 1e-6, np.eye(N)
    numeric = [(total(params["c"] + h * eye[i]) - total(params["c"] - h * eye[i])) / (2 * h) for i in range(N)]
    np.testing.assert_allclose(grad, np.asarray(numeric), rtol=1e-6, atol=1e-9)


def test_jacobian_penalty_estimates_the_frobenius_norm_of_a_linear_map():
    """Hutchinson: E‖εᵀA‖² = ‖A‖_F²; 20 000 probes land within 3 % of numpy's norm."""
    a = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    exact = np.linalg.norm(a, "fro") ** 2 / 6
    got = jacobian_penalty(lambda p, xx, z: p @ z + xx, jnp.asarray(a), jnp.ones(6), jnp.zeros(6),
                           jax.random.key(0), samples=20_000)
    np.testing.assert_allclose(float(got), exact, rtol=0.03)
    with pytest.raises(ValueError, match="samples"):
        jacobian_penalty(lambda p, xx, z: z, None, None, jnp.zeros(2), jax.random.key(0), samples=0)


def test_jacobian_penalty_gradient_shrinks_the_map():
    """One gradient step on ‖∂T/∂z‖² of T(z) = a·z lowers |a| (d/da of a² is 2a, up to probe noise)."""
    grad = jax.grad(lambda a: jacobian_penalty(lambda p, xx, z: p * z, a, None, jnp.zeros(64),
                                               jax.random.key(1), samples=64))(jnp.float32(0.7))
    np.testing.assert_allclose(float(grad), 1.4, rtol=0.1)


# --- option validation ---------------------------------------------------------------------


@pytest.mark.parametrize("options, name", [
    ({"method": "newton"}, "method"), ({"stop": "rel"}, "stop"), ({"tol": 0.0}, "tol"),
    ({"tol": -1e-3}, "tol"), ({"max_steps": 0}, "max_steps"), ({"history": 0}, "history"),
    ({"method": "anderson", "history": 1}, "history"), ({"damping": 0.0}, "damping"),
    ({"damping": 1.5}, "damping"), ({"states": -1}, "states"), ({"states": 1.5}, "states"),
    ({"states": True}, "states"),
])
def test_solve_rejects_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        solve(lambda z: 0.5 * z, jnp.zeros(2), **options)


@pytest.mark.parametrize("options, name", [
    ({"backward": "bptt"}, "backward"), ({"phantom_steps": 0}, "phantom_steps"),
    ({"damping": 0.0}, "damping"), ({"damping": 2.0}, "damping"),
    ({"solver": {"states": 1}}, "solver"), ({"solver": {"tol": 0}}, "tol"), ({"states": -1}, "states"),
    ({"adjoint": {"method": "newton"}}, "method"),
])
def test_layer_rejects_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        fixed_point_layer(_f, **options)


def test_equilibrium_loss_gradient_is_the_closed_form_of_a_linear_fixed_point():
    """T(z) = A z + B θ + x, loss = ½‖z − 2x‖²: z* = (I − A)⁻¹(Bθ + x), and (numpy)
    ∂L/∂θ = Bᵀ w, ∂L/∂x = w − 2(z* − 2x) with w = (I − A)⁻ᵀ (z* − 2x)."""
    from jaxreg.deq.implicit import equilibrium_loss

    rng = np.random.default_rng(0)
    n = 6
    a = 0.5 * rng.normal(size=(n, n)) / np.sqrt(n)  # spectral radius < 1
    b = rng.normal(size=(n, 3))
    theta, x = rng.normal(size=3), rng.normal(size=n)
    f = lambda p, xx, z: jnp.asarray(a, jnp.float32) @ z + jnp.asarray(b, jnp.float32) @ p + xx  # noqa: E731
    loss = lambda xx, z: (0.5 * jnp.sum((z - 2 * xx) ** 2), {"norm": jnp.linalg.norm(z)})  # noqa: E731
    fn = equilibrium_loss(f, loss, solver={"method": "anderson", "max_steps": 100, "tol": 1e-7, "stop": "absolute"})
    (value, outputs), (g_theta, g_x) = jax.value_and_grad(lambda p, xx: fn(p, xx, jnp.zeros(n)), argnums=(0, 1),
                                                          has_aux=True)(jnp.asarray(theta, jnp.float32),
                                                                        jnp.asarray(x, jnp.float32))
    z = np.linalg.solve(np.eye(n) - a, b @ theta + x)
    w = np.linalg.solve((np.eye(n) - a).T, z - 2 * x)
    np.testing.assert_allclose(float(value), 0.5 * np.sum((z - 2 * x) ** 2), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(g_theta), b.T @ w, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_x), w - 2 * (z - 2 * x), rtol=1e-3, atol=1e-4)
    z_star, info, adjoint, fallbacks, _, aux = outputs
    np.testing.assert_allclose(np.asarray(z_star), z, atol=1e-4)
    assert bool(info.converged) and bool(adjoint.converged) and int(fallbacks) == 0
    assert float(aux["norm"]) == pytest.approx(np.linalg.norm(z), rel=1e-4)
