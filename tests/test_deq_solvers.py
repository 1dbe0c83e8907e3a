"""Fixed-point solvers and the implicit layer against closed forms, numpy and unrolled autodiff."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.deq import SOLVERS, describe, fixed_point_layer, jacobian_penalty, phantom_steps, solve


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
            for m in SOLVERS}


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


def test_info_residuals_capture_and_stop_rules(x64):
    a, b = _linear_problem(n=6, seed=2)
    damping, capture = 0.7, (1, 4, 10, 30)
    # independent reference: a python loop over numpy
    z, zs, rel, ab = np.zeros(6), [], [], []
    for _ in range(30):
        t = a @ z + b
        rel.append(np.linalg.norm(t - z) / (np.linalg.norm(t) + 1e-8))
        ab.append(np.linalg.norm(t - z))
        z = damping * t + (1 - damping) * z
        zs.append(z)
    for stop, ref_res in (("relative", rel), ("absolute", ab)):
        tol = ref_res[11] * 1.0001  # stops after exactly 12 steps
        z, info, captured = solve(lambda z: jnp.asarray(a) @ z + jnp.asarray(b), jnp.zeros(6),
                                  method="fixed_point", max_steps=30, tol=tol, stop=stop,
                                  damping=damping, capture=capture)
        assert int(info.steps) == 12 and bool(info.converged)
        assert info.residuals.shape == (30,)
        np.testing.assert_allclose(np.asarray(info.residuals[:12]), ref_res[:12], rtol=1e-5)
        assert np.all(np.isnan(np.asarray(info.residuals[12:])))
        assert float(info.residual) == float(info.residuals[11])
        np.testing.assert_allclose(np.asarray(z), zs[11], rtol=1e-6)
        assert captured.shape == (4, 6)
        for row, k in zip(np.asarray(captured), capture):  # steps past the stop: final z
            np.testing.assert_allclose(row, zs[min(k, 12) - 1], rtol=1e-6)
    for method in SOLVERS:  # a tiny budget never claims convergence
        _, info, _ = solve(lambda z: jnp.asarray(a) @ z + jnp.asarray(b), jnp.zeros(6),
                           method=method, max_steps=3, tol=1e-12)
        assert int(info.steps) == 3 and not bool(info.converged)
        assert np.all(np.isfinite(np.asarray(info.residuals)))
        assert "NOT converged after 3/3 steps" in describe(info)


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
    z, info = layer(params, x, jnp.zeros(N))
    np.testing.assert_allclose(np.asarray(z), np.asarray(_f(params, x, z)), atol=1e-9)
    assert bool(info.converged) and int(info.steps) <= 100
    g_z0 = jax.grad(lambda z0: jnp.dot(v, layer(params, x, z0)[0]))(jnp.ones(N))
    assert np.all(np.asarray(g_z0) == 0)
    g_info = jax.grad(lambda p: layer(p, x, jnp.zeros(N))[1].residual)(params)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(g_info))


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
    ({"damping": 1.5}, "damping"), ({"capture": (0,)}, "capture"),
    ({"max_steps": 10, "capture": (5, 11)}, "capture"), ({"capture": 3}, "capture"),
])
def test_solve_rejects_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        solve(lambda z: 0.5 * z, jnp.zeros(2), **options)


@pytest.mark.parametrize("options, name", [
    ({"backward": "bptt"}, "backward"), ({"phantom_steps": 0}, "phantom_steps"),
    ({"damping": 0.0}, "damping"), ({"damping": 2.0}, "damping"),
    ({"solver": {"capture": (1,)}}, "solver"), ({"solver": {"tol": 0}}, "tol"),
    ({"adjoint": {"method": "newton"}}, "method"),
])
def test_layer_rejects_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        fixed_point_layer(_f, **options)
