"""DEQReg and the unrolled baselines: the memory claim (compiled train step), options, closed forms,
gradients against autodiff through a long unrolled iteration, exact-step inference and a training smoke test.

Tiny shapes (32×32 images, U-Net encoder (4, 8), decoder (8, 8, 4)); memory is XLA's
``temp_size_in_bytes`` of the compiled train step (meaningful on XLA:CPU, unlike its peak), never a run.
"""

from __future__ import annotations

import os
import textwrap
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from _two_devices import run_script
from jaxreg import methods, spatial
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.deq.model import DEQReg
from jaxreg.deq.solvers import OWN_SOLVERS
from jaxreg.deq.unroll import step_weights
from jaxreg.models.voxelmorph import registration_loss
from jaxreg.training import create_state, make_optimizer, make_train_step


@pytest.fixture(scope="module", autouse=True)
def _xla_convolutions():
    """The memory claims compare methods as they run on a GPU: with XLA's own convolution.

    (The CPU matmul convolution of ``jaxreg.models.conv`` keeps other buffers alive and
    shifts the DEQReg/RIIR ratio; it is chosen at trace time from ``JAXREG_CONV``.)
    """
    import os

    before = os.environ.get("JAXREG_CONV")
    os.environ["JAXREG_CONV"] = "xla"
    yield
    if before is None:
        os.environ.pop("JAXREG_CONV", None)
    else:
        os.environ["JAXREG_CONV"] = before


SMALL = {"encoder": (4, 8), "decoder": (8, 8, 4)}
LOSS = {"similarity": "lncc", "window": 5, "weight": 0.1}
DEQ = {"method": "anderson", "backward": "phantom", "phantom_steps": 5, "phantom_damping": 0.8}
# name -> (model, solver) config sections of the train steps whose memory we compare
STEPS = {
    "deq4": ({"name": "deqreg", **SMALL}, dict(DEQ, max_steps=4)),
    "deq96": ({"name": "deqreg", **SMALL}, dict(DEQ, max_steps=96)),
    "deq48_phantom_only": ({"name": "deqreg", "correction_weight": 0.0, **SMALL}, dict(DEQ, max_steps=48)),
    "deq48_remat": ({"name": "deqreg", **SMALL}, dict(DEQ, max_steps=48, phantom_remat=True)),
    "ift4": ({"name": "deqreg", "correction_weight": 0.0, **SMALL}, dict(DEQ, backward="ift", max_steps=4)),
    "ift96": ({"name": "deqreg", "correction_weight": 0.0, **SMALL}, dict(DEQ, backward="ift", max_steps=96,
                                                                            adjoint_max_steps=96)),
    "vanilla2": ({"name": "unroll", "variant": "vanilla", "steps": 2, **SMALL}, {}),
    "vanilla4": ({"name": "unroll", "variant": "vanilla", "steps": 4, **SMALL}, {}),
    "vanilla8": ({"name": "unroll", "variant": "vanilla", "steps": 8, **SMALL}, {}),
    "riir6": ({"name": "unroll", "variant": "riir", "steps": 6, **SMALL}, {}),
}


@pytest.fixture(scope="module")
def batch():
    pair = synthetic_pair(jax.random.key(0), (32, 32), anatomy="cardiac")
    return {k: jnp.asarray(pair[k])[None] for k in ("fixed", "moving")}


@pytest.fixture(scope="module")
def train_steps(batch):
    """name -> (compiled train step, initial state, temp MB); compiled two at a time (XLA releases the GIL)."""
    optimizer = make_optimizer({"learning_rate": 1e-3})

    def compile_one(name):
        model, solver = STEPS[name]
        method = methods.build(model, LOSS, solver)
        state = create_state(method.init(jax.random.key(1), batch), optimizer, jax.random.key(2))
        compiled = jax.jit(make_train_step(method.loss_fn, optimizer)).lower(state, batch).compile()
        return name, (compiled, state, compiled.memory_analysis().temp_size_in_bytes / 2**20)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(compile_one, STEPS))


def _mb(train_steps):
    return {name: value[2] for name, value in train_steps.items()}


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_deqreg_memory_does_not_grow_with_solver_steps(train_steps):
    mb = _mb(train_steps)
    assert mb["deq96"] <= 1.1 * mb["deq4"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_ift_memory_does_not_grow_with_solver_steps(train_steps):
    """The exact implicit gradient: forward and adjoint solves keep no trajectory."""
    mb = _mb(train_steps)
    assert mb["ift96"] <= 1.1 * mb["ift4"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_unrolled_memory_grows_at_least_linearly(train_steps):
    mb = _mb(train_steps)
    first, second = mb["vanilla4"] - mb["vanilla2"], mb["vanilla8"] - mb["vanilla4"]
    assert first > 0, mb
    assert second / 4 >= 0.9 * first / 2, mb  # MB per added step does not shrink
    assert mb["vanilla8"] >= 2.0 * mb["vanilla2"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_deqreg_phantom_gradient_uses_half_the_memory_of_riir(train_steps):
    """The phantom backward alone (γ = 0): DEQReg at 48 solver steps vs RIIR trained through T = 6."""
    mb = _mb(train_steps)
    assert mb["deq48_phantom_only"] <= 0.5 * mb["riir6"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_deqreg_with_correction_uses_half_the_memory_of_riir(train_steps):
    """The paper's setting (S = 3, γ = 0.5). Memory is flat in max_steps (tested above): 96 stands for 48."""
    mb = _mb(train_steps)
    assert mb["deq96"] <= 0.5 * mb["riir6"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_rematerialised_phantom_steps_use_less_memory(train_steps):
    mb = _mb(train_steps)
    assert mb["deq48_remat"] < 0.8 * mb["deq96"], mb


@pytest.mark.xdist_group("test_deq_model.train_steps")  # one worker builds the module fixture once
@pytest.mark.slow
def test_adam_steps_lower_the_loss(train_steps, batch):
    compiled, state, _ = train_steps["deq4"]
    losses = []
    for _ in range(6):
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))  # the loss before this step's update
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("model, loss, solver, option", [
    ({"name": "deqreg", "correction_states": 5}, {}, {"max_steps": 4}, "correction_states"),
    ({"name": "deqreg"}, {}, {"backward": "exact"}, "backward"),
    ({"name": "deqreg"}, {"similarity": "mi"}, {}, "similarity"),
    ({"name": "unroll"}, {"similarity": "mi"}, {}, "similarity"),
    ({"name": "unroll", "variant": "lstm"}, {}, {}, "variant"),
    ({"name": "unroll", "steps": 0}, {}, {}, "steps"),
    ({"name": "deqreg"}, {}, {"tol": 0.0}, "tol"),
    ({"name": "deqreg"}, {}, {"tol": -1e-3}, "tol"),
    ({"name": "deqreg"}, {}, {"method": "newton"}, "method"),
    ({"name": "deqreg", "correction_weight": -0.5}, {}, {}, "correction_weight"),
    ({"name": "deqreg"}, {}, {"phantom_steps": 0}, "phantom_steps"),
    ({"name": "deqreg", "jacobian_weight": -1.0}, {}, {}, "jacobian_weight"),
])
def test_bad_options_raise_naming_the_option(model, loss, solver, option):
    with pytest.raises(ValueError, match=option):
        methods.build(model, loss, solver)


def test_unknown_solver_option_raises_naming_it():
    with pytest.raises(ValueError, match="max_step"):
        methods.build({"name": "deqreg"}, {}, {"max_step": 10})


@pytest.mark.parametrize("steps", [2, 3, 6, 12])
def test_step_weights_closed_form(steps):
    t = np.arange(1, steps + 1)
    np.testing.assert_allclose(np.asarray(step_weights(steps)), 10.0 ** ((t - 1) / (steps - 1)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(step_weights(1)), [1.0])


def _scale_update_kernel(params, factor):
    """Multiplies the last convolution's kernel (initialised at std 1e-5) by ``factor``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: v * factor if "update" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
        else v, params)


def _batch_warp(moving, ddf):
    return jnp.stack([spatial.warp(m, u) for m, u in zip(moving, ddf, strict=True)])


def test_initial_update_is_near_identity(batch):
    deq = DEQReg(**SMALL)
    params = deq.init(jax.random.key(1), batch)
    fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]
    out = deq.net.apply(params, fixed, moving, jnp.zeros((1, 32, 32, 2)))
    assert float(jnp.abs(out).max()) < 1e-3  # last conv kernel ~ N(0, 1e-5²)
    # Plain iteration: T = φ + f_θ with f_θ ≈ a small constant has no fixed point, and where
    # Anderson's extrapolation lands on such a map is decided by float rounding.
    ddf = deq.predict(params, batch["fixed"], batch["moving"], method="fixed_point")
    assert ddf.shape == (1, 32, 32, 2)
    assert float(jnp.abs(ddf).max()) < 0.1  # voxels


def test_trajectory_and_exact_step_predict_match_a_python_loop(batch):
    # a loose tolerance would stop the solver early; steps= must run exactly that many steps
    deq = DEQReg(**SMALL, solver={"method": "fixed_point", "max_steps": 48, "tol": 0.5})
    params = _scale_update_kernel(deq.init(jax.random.key(1), batch), 1e4)
    fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]
    reference = [jnp.zeros((1, 32, 32, 2))]
    for _ in range(5):  # φ ← φ + f_θ(I_f, I_m∘φ, φ), the network applied by hand
        z = reference[-1]
        reference.append(z + deq.net.apply(params, fixed, _batch_warp(moving, z), z))
    reference = np.stack(reference)
    assert np.abs(reference[-1]).max() > 0.1  # the test is not vacuous
    trajectory = np.asarray(deq.trajectory(params, batch["fixed"], batch["moving"], steps=5))
    assert trajectory.shape == (6, 1, 32, 32, 2)
    np.testing.assert_allclose(trajectory, reference, atol=1e-5, rtol=1e-5)
    for steps in (1, 5):  # 1 < S = 3: predict needs no captured states
        np.testing.assert_allclose(np.asarray(deq.predict(params, batch["fixed"], batch["moving"], steps=steps)),
                                   reference[steps], atol=1e-5, rtol=1e-5)
    _, info, _ = deq.solve(params, batch["fixed"], batch["moving"])
    assert int(info.steps[0]) < 5  # without steps=, tol = 0.5 stops earlier


def test_unrolled_vanilla_predict_matches_a_python_loop(batch):
    method = methods.build({"name": "unroll", "variant": "vanilla", "steps": 2, **SMALL}, LOSS)
    params = _scale_update_kernel(method.init(jax.random.key(1), batch), 1e4)
    fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]
    z = jnp.zeros((1, 32, 32, 2))
    for _ in range(4):
        z = z + method.module.net.apply(params["net"], fixed, _batch_warp(moving, z), z)
    assert float(jnp.abs(z).max()) > 0.1
    np.testing.assert_allclose(np.asarray(method.predict(params, batch["fixed"], batch["moving"], steps=4)),
                               np.asarray(z), atol=1e-5, rtol=1e-5)


class _Contractive(DEQReg):
    """DEQReg with T(φ) = 0.3·φ + f_θ(I_f, I_m∘φ, φ): a contraction, so the fixed point and its
    gradient are well posed and a long plain iteration converges to them (DEQReg's own
    T = φ + f_θ is close to the identity at initialisation, not contractive)."""

    def update(self, params, x, ddf):
        return super().update(params, x, ddf) - 0.7 * ddf


@pytest.mark.slow  # second tier: the first tier's 10 minutes (15.6 s in .ci/run)
def test_ift_and_phantom_gradients_match_autodiff_through_a_long_iteration(batch):
    options = dict(SMALL, correction_weight=0.0, solver={"method": "fixed_point", "max_steps": 80, "tol": 1e-6})
    ift = _Contractive(**options, backward="ift")
    phantom = _Contractive(**options, backward="phantom", phantom_steps=12, phantom_damping=1.0)
    params = _scale_update_kernel(ift.init(jax.random.key(1), batch), 1e4)
    fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]

    def unrolled_loss(params, steps=60):  # autodiff through 60 plain steps (contraction ~0.6: error ~1e-13)
        def body(z, _):
            return 0.3 * z + ift.net.apply(params, fixed, jax.vmap(spatial.warp)(moving, z), z), None

        z = jax.lax.scan(body, jnp.zeros((1, 32, 32, 2)), None, length=steps)[0]
        per_pair = jax.vmap(lambda f, m, u: registration_loss(f, m, u, **LOSS)[0])(fixed, moving, z)
        return jnp.mean(per_pair)

    # the fixed point is voxels away from 0: the warp's nonlinearity is in play
    assert float(jnp.abs(ift.predict(params, batch["fixed"], batch["moving"])).max()) > 0.1
    ref_loss, ref = jax.jit(jax.value_and_grad(unrolled_loss))(params)
    (ift_loss, metrics), g_ift = jax.jit(jax.value_and_grad(lambda p: ift.loss_fn(p, batch, None), has_aux=True))(params)
    g_phantom = jax.jit(jax.grad(lambda p: phantom.loss_fn(p, batch, None)[0]))(params)
    ref, g_ift, g_phantom = (np.asarray(ravel_pytree(g)[0], np.float64) for g in (ref, g_ift, g_phantom))

    assert bool(metrics["solver_converged"]), metrics
    # the adjoint is reported: it converged here, and no pair fell back to the Jacobian-free gradient
    assert float(metrics["adjoint_converged"]) == 1.0 and int(metrics["adjoint_fallbacks"]) == 0, metrics
    assert 1 <= float(metrics["adjoint_steps"]) <= 80 and float(metrics["adjoint_residual"]) < 1e-6, metrics
    np.testing.assert_allclose(float(ift_loss), float(ref_loss), rtol=1e-4)
    assert np.linalg.norm(ref) > 0
    assert np.linalg.norm(g_ift - ref) <= 1e-2 * np.linalg.norm(ref)
    cosine = g_ift @ g_phantom / (np.linalg.norm(g_ift) * np.linalg.norm(g_phantom))
    assert cosine > 0.99, cosine
    assert np.linalg.norm(g_phantom - ref) <= 5e-2 * np.linalg.norm(ref)


def test_an_adjoint_that_cannot_converge_is_reported_and_takes_the_jacobian_free_gradient(batch):
    """One adjoint step at an unreachable tolerance: the metrics say so, and the gradient is
    (∂T/∂θ)ᵀ ∂L/∂φ at φ*, written here with plain autodiff through one application of T."""
    options = dict(SMALL, correction_weight=0.0, solver={"method": "fixed_point", "max_steps": 80, "tol": 1e-6})
    ift = _Contractive(**options, backward="ift", adjoint={"max_steps": 1, "tol": 1e-30})
    params = _scale_update_kernel(ift.init(jax.random.key(1), batch), 1e4)
    x = (batch["fixed"][..., None], batch["moving"][..., None])
    (_, metrics), grads = jax.jit(jax.value_and_grad(lambda p: ift.loss_fn(p, batch, None), has_aux=True))(params)
    assert float(metrics["adjoint_converged"]) == 0.0 and int(metrics["adjoint_fallbacks"]) == 1, metrics
    assert float(metrics["adjoint_steps"]) == 1.0 and float(metrics["adjoint_residual"]) > 1e-6, metrics

    equilibrium = ift.predict(params, batch["fixed"], batch["moving"])

    def one_step_loss(p):  # L(T_θ(φ*)) with φ* held: its gradient is the Jacobian-free one
        z = ift.update(p, x, jax.lax.stop_gradient(equilibrium))
        return jnp.mean(jax.vmap(lambda f, m, u: registration_loss(f, m, u, **LOSS)[0])(*x, z))

    reference = np.asarray(ravel_pytree(jax.jit(jax.grad(one_step_loss))(params))[0], np.float64)
    got = np.asarray(ravel_pytree(grads)[0], np.float64)
    assert np.linalg.norm(got - reference) <= 1e-3 * np.linalg.norm(reference)


def test_jacobian_regulariser_is_added_to_the_loss_with_its_weight(batch):
    """loss(w) = loss(0) + w·jacobian, and the estimate is near ‖∂T/∂φ‖_F²/d ≈ 1 of the near-identity start."""
    solver = dict(DEQ, max_steps=3)
    plain = methods.build({"name": "deqreg", "correction_states": 0, **SMALL}, LOSS, solver)
    regularised = methods.build({"name": "deqreg", "correction_states": 0, "jacobian_weight": 2.0, **SMALL}, LOSS, solver)
    params = jax.jit(plain.init)(jax.random.key(0), batch)  # compiled calls, not op by op
    loss0, metrics0 = jax.jit(plain.loss_fn)(params, batch, jax.random.key(1))
    loss2, metrics2 = jax.jit(regularised.loss_fn)(params, batch, jax.random.key(1))
    assert "jacobian" not in metrics0
    np.testing.assert_allclose(float(loss2), float(loss0) + 2.0 * float(metrics2["jacobian"]), rtol=1e-5)
    assert 0.8 < float(metrics2["jacobian"]) < 1.2, metrics2  # T ≈ identity at initialisation


# --- batches: pairs are independent -----------------------------------------------------------


class _PairRates(DEQReg):
    """T(φ) = c·φ + f_θ(I_f, I_m∘φ, φ) with a contraction c = 1.5·mean(I_f) of each pair's own:
    pairs converge at different speeds (and each depends on its own images only)."""

    def update(self, params, x, ddf):
        rate = 1.5 * jnp.mean(x[0], axis=tuple(range(1, ddf.ndim)), keepdims=True)
        return super().update(params, x, ddf) - (1.0 - rate) * ddf


@pytest.fixture(scope="module")
def three():
    """Three different 32² pairs: brain, cardiac, and identical images at half intensity (c ≈ 0.48, 0.28, 0.23)."""
    pairs = [synthetic_pair(jax.random.key(3), (32, 32), anatomy="brain"),
             synthetic_pair(jax.random.key(4), (32, 32), anatomy="cardiac")]
    same = 0.5 * synthetic_pair(jax.random.key(5), (32, 32), anatomy="brain")["fixed"]
    pairs.append({"fixed": same, "moving": same})
    return {k: jnp.stack([jnp.asarray(p[k]) for p in pairs]) for k in ("fixed", "moving")}


def _pair(batch, b):
    return {k: v[b:b + 1] for k, v in batch.items()}


@pytest.mark.parametrize("method", OWN_SOLVERS)  # jaxopt's solve the batch as one system
def test_a_batch_of_three_pairs_gives_the_fields_of_three_calls(three, method):
    """predict on B = 3 pairs that stop at different steps = three single-pair calls.

    Fails on the old solver (one set of Anderson/Broyden coefficients and one stop for the
    batch as a whole). Prints the largest field difference.
    """
    deq = _PairRates(**SMALL, solver={"method": method, "max_steps": 60, "tol": 1e-4})
    params = _scale_update_kernel(deq.init(jax.random.key(1), three), 1e4)
    solve = jax.jit(lambda p, f, m: deq.solve(p, f, m))
    ddf, info, _ = solve(params, three["fixed"], three["moving"])
    steps = np.asarray(info.steps)
    assert len(set(steps.tolist())) > 1 and np.all(np.asarray(info.converged)), steps
    assert float(jnp.abs(ddf).max()) > 0.1
    diff = 0.0
    for b in range(3):
        single, info_b, _ = solve(params, three["fixed"][b:b + 1], three["moving"][b:b + 1])
        assert int(info_b.steps[0]) == steps[b]
        diff = max(diff, float(jnp.abs(ddf[b] - single[0]).max()))
    print(f"{method}: steps {steps.tolist()}, max |batch - single| = {diff:.3g} voxels")
    assert diff <= 1e-5, diff


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["phantom", "ift"])
def test_loss_and_gradient_of_a_batch_are_the_means_over_its_pairs(three, backward):
    """loss_fn on B = 3 (S = 2 corrected states, γ = 0.5) = the mean of three single-pair losses; same for
    the gradient. The pairs stop at different steps, so each has its own corrected states."""
    deq = _PairRates(**SMALL, solver={"method": "anderson", "max_steps": 24, "tol": 1e-4}, backward=backward,
                       phantom_steps=2, correction_states=2, correction_weight=0.5, sequential_states=False)
    params = _scale_update_kernel(deq.init(jax.random.key(1), three), 1e4)
    grad = jax.jit(jax.value_and_grad(lambda p, b: deq.loss_fn(p, b, None), has_aux=True))
    (loss, metrics), g = grad(params, three)
    assert 0 < float(metrics["solver_converged"]) and float(metrics["correction"]) > 0
    singles = [grad(params, _pair(three, b)) for b in range(3)]
    assert len({float(m["solver_steps"]) for (_, m), _ in singles}) > 1  # different stops
    np.testing.assert_allclose(float(loss), np.mean([float(v) for (v, _), _ in singles]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["correction"]), np.mean([float(m["correction"]) for (_, m), _ in singles]),
                               rtol=1e-5)
    mean = ravel_pytree(jax.tree.map(lambda *v: sum(v) / 3, *[gb for _, gb in singles]))[0]
    g = ravel_pytree(g)[0]
    assert float(jnp.linalg.norm(g - mean)) <= 1e-4 * float(jnp.linalg.norm(mean)), (g, mean)


@pytest.mark.slow
def test_correction_loss_and_gradient_match_a_hand_computation(three):
    """DEQReg Eq. 9 with γ = 0.5, S = 2, K = 2, τ = 0.8 against a python loop over the network.

    Plain iteration stops by hand-computed residuals at its own step n per pair (before
    max_steps = 12); the corrected states are those after round(n/3) and round(2n/3) steps.
    Fails on the old code, which took steps 6 and 12 of max_steps for both pairs (the latter a
    second copy of φ*) and stopped both pairs at once.
    """
    batch = {k: three[k][:2] for k in ("fixed", "moving")}
    gamma, tau, k_steps = 0.5, 0.8, 2
    probe = DEQReg(**SMALL)
    params = _scale_update_kernel(probe.init(jax.random.key(1), batch), 1e4)
    fixed, moving = batch["fixed"][..., None], batch["moving"][..., None]

    def t_map(p, b, z):  # T of pair b, by hand
        f, m = fixed[b:b + 1], moving[b:b + 1]
        return (1.5 * float(np.mean(batch["fixed"][b]))) * z + probe.net.apply(p, f, _batch_warp(m, z), z)

    trajectories, residuals = [], []
    for b in range(2):
        z, path, res = jnp.zeros((1, 32, 32, 2)), [], []
        for _ in range(12):
            t = t_map(params, b, z)
            res.append(float(jnp.linalg.norm(t - z) / (jnp.linalg.norm(t) + 1e-8)))
            z = t
            path.append(z)
        trajectories.append([jnp.zeros((1, 32, 32, 2))] + path)
        residuals.append(res)
    tol = residuals[0][8] * 1.0001  # pair 0 stops after 9 steps
    stops = [next(i + 1 for i, r in enumerate(res) if r < tol) for res in residuals]
    assert stops[0] == 9 and 3 <= stops[1] < 9, (stops, residuals)
    points = [(int(n / 3 + 0.5), int(2 * n / 3 + 0.5)) for n in stops]
    print("steps taken", stops, "corrected states after steps", points)

    def pair_loss(p, b, state):
        z = jax.lax.stop_gradient(state)
        for _ in range(k_steps):
            z = tau * t_map(p, b, z) + (1 - tau) * z
        return registration_loss(batch["fixed"][b], batch["moving"][b], z[0], **LOSS)[0]

    def hand(p):
        total = 0.0
        for b in range(2):
            path = trajectories[b]
            total += pair_loss(p, b, path[stops[b]]) + gamma * sum(pair_loss(p, b, path[t]) for t in points[b])
        return total / 2

    deq = _PairRates(**SMALL, solver={"method": "fixed_point", "max_steps": 12, "tol": tol}, phantom_steps=k_steps,
                       phantom_damping=tau, correction_states=2, correction_weight=gamma, sequential_states=False)
    ref_loss, ref_grad = jax.value_and_grad(hand)(params)
    (loss, metrics), g = jax.jit(jax.value_and_grad(lambda p: deq.loss_fn(p, batch, None), has_aux=True))(params)
    assert float(metrics["solver_steps"]) == np.mean(stops)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    ref_grad, g = ravel_pytree(ref_grad)[0], ravel_pytree(g)[0]
    assert float(jnp.linalg.norm(ref_grad)) > 0
    assert float(jnp.linalg.norm(g - ref_grad)) <= 1e-4 * float(jnp.linalg.norm(ref_grad))
    # γ matters: without the correction the loss is the equilibrium term alone
    plain = hand(params) - gamma * sum(pair_loss(params, b, trajectories[b][t]) for b in range(2) for t in points[b]) / 2
    assert abs(float(loss) - float(plain)) > 1e-3 * abs(float(plain))


def test_ift_with_corrected_states_solves_the_forward_once(batch):
    """Counts applications of T in one IFT loss evaluation (S = 2, K = 3, 6 plain steps): 6 for the
    solve, 1 for the adjoint's linearisation, 2·3 phantom steps. The old code solved the forward a
    second time for the states (18)."""
    calls = []

    class Counting(DEQReg):
        def update(self, params, x, ddf):
            jax.debug.callback(lambda: calls.append(1))
            return super().update(params, x, ddf)

    deq = Counting(**SMALL, solver={"method": "fixed_point", "max_steps": 6, "tol": 1e-30}, backward="ift",
                   phantom_steps=3, correction_states=2, correction_weight=0.5, sequential_states=False)
    params = deq.init(jax.random.key(1), batch)
    loss, metrics = jax.jit(deq.loss_fn)(params, batch, None)
    jax.block_until_ready(loss)
    assert float(metrics["solver_steps"]) == 6
    # 6 solver steps, 1 linearisation of T at φ* for the adjoint (solved in the forward pass, so that it
    # is reported), 2·3 phantom steps of the corrected states
    assert len(calls) == 6 + 1 + 2 * 3, len(calls)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "riir", "gradirn"])
def test_unrolled_batches_are_independent_pairs(three, variant):
    """Unrolled baselines: predict on B = 3 = three calls; the loss and its gradient = the means."""
    method = methods.build({"name": "unroll", "variant": variant, "steps": 2, **SMALL}, LOSS)
    params = method.init(jax.random.key(1), three)
    params = dict(params, net=_scale_update_kernel(params["net"], 1e4))
    if variant == "gradirn":
        params["step_size"] = jnp.float32(0.5)
    predict = jax.jit(method.predict)
    grad = jax.jit(jax.value_and_grad(lambda p, b: method.loss_fn(p, b, None)[0]))
    ddf = predict(params, three["fixed"], three["moving"])
    loss, g = grad(params, three)
    singles = [grad(params, _pair(three, b)) for b in range(3)]
    scale = float(jnp.abs(ddf).max())
    assert scale > 0.1
    for b in range(3):  # float rounding only (a batch of 3 and of 1 convolve in different orders)
        single = predict(params, three["fixed"][b:b + 1], three["moving"][b:b + 1])
        np.testing.assert_allclose(np.asarray(ddf[b]), np.asarray(single[0]), rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(float(loss), np.mean([float(v) for v, _ in singles]), rtol=1e-5)
    mean = ravel_pytree(jax.tree.map(lambda *v: sum(v) / 3, *[gb for _, gb in singles]))[0]
    assert float(jnp.linalg.norm(ravel_pytree(g)[0] - mean)) <= 1e-4 * float(jnp.linalg.norm(mean))


_SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from _two_devices import one_and_two_devices
    from test_deq_model import SMALL, _PairRates, _scale_update_kernel
    from jaxreg.data.synthetic import synthetic_pair
    from jaxreg.training import make_optimizer, make_train_step

    pairs = [synthetic_pair(jax.random.key(i), (32, 32), anatomy=("brain", "cardiac")[i % 2]) for i in range(4)]
    batch = {k: jnp.stack([jnp.asarray(p[k]) for p in pairs]) for k in ("fixed", "moving")}
    deq = _PairRates(**SMALL, solver={"method": "anderson", "max_steps": 16, "tol": 1e-3}, phantom_steps=2,
                       correction_states=2, correction_weight=0.5, sequential_states=False)
    params = _scale_update_kernel(deq.init(jax.random.key(1), batch), 1e4)
    optimizer = make_optimizer({"learning_rate": 1e-3})
    _, info, _ = jax.jit(deq.solve)(params, batch["fixed"], batch["moving"])
    r = one_and_two_devices(make_train_step(deq.loss_fn, optimizer), optimizer, params, batch, steps=2, state_key=2)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(r["single_params"], r["sharded_params"]))
    scale = max(float(jnp.max(jnp.abs(a))) for a in r["single_params"])
    print(json.dumps({"devices": len(jax.devices()), "single": r["single"], "sharded": r["sharded"],
                      "max_param_diff": diff, "param_scale": scale, "steps": np.asarray(info.steps).tolist(),
                      "batch_shards": r["batch_shards"]}))
""")


@pytest.mark.slow
def test_sharded_deqreg_train_step_matches_one_device():
    """Two DEQReg train steps (Anderson, S = 2, γ = 0.5) on 4 pairs sharded over 2 simulated devices = one device."""
    result = run_script(_SHARDED, timeout=900)
    print(result)
    assert result["devices"] == 2 and result["batch_shards"] == 2
    assert len(set(result["steps"])) > 1, result  # the pairs stop at different steps
    np.testing.assert_allclose(result["sharded"], result["single"], rtol=1e-5)
    assert result["max_param_diff"] <= 1e-5 * max(result["param_scale"], 1.0), result


def test_ift_training_logs_the_adjoint(tmp_path):
    """Two steps of the tiny DEQReg run with the exact implicit gradient: metrics.jsonl has the adjoint's
    steps, residual, convergence and fallbacks (with solver.adjoint_max_steps from the config)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from jaxreg.training import train_and_evaluate

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # the configs import `configs`, a package at the repo root
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("tiny_deq", root / "tests" / "configs" / "tiny_deq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.solver.method = "fixed_point"  # compiles faster than Anderson
    config.solver.backward = "ift"
    config.solver.adjoint_max_steps = 3
    train_and_evaluate(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "adjoint_steps" in line]
    assert len(logged) == 2, lines
    for line in logged:
        assert 1 <= line["adjoint_steps"] <= 3 and np.isfinite(line["adjoint_residual"]), line
        assert 0.0 <= line["adjoint_converged"] <= 1.0 and line["adjoint_fallbacks"] in (0, 1), line
        assert np.isfinite(line["loss"]), line


def test_phantom_training_logs_the_loss_of_the_equilibrium_predict_returns(batch):
    """L(z_K) is trained; ``loss_at_equilibrium`` is L(φ*), φ* = predict's field, recomputed here."""
    deq = DEQReg(**SMALL, solver={"method": "anderson", "max_steps": 6}, correction_states=0)
    params = _scale_update_kernel(deq.init(jax.random.key(1), batch), 1e3)
    _, metrics = jax.jit(deq.loss_fn)(params, batch, None)
    ddf = deq.predict(params, batch["fixed"], batch["moving"])
    want = jnp.mean(jax.vmap(lambda f, m, u: registration_loss(f[..., None], m[..., None], u, **LOSS)[0])(
        batch["fixed"], batch["moving"], ddf))
    np.testing.assert_allclose(float(metrics["loss_at_equilibrium"]), float(want), rtol=1e-5)
    assert "loss_at_equilibrium" in metrics and np.isfinite(float(metrics["similarity"]))
