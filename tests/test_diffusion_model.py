"""DiffuseReg: samplers from a start step and observed, guidance against closed forms, the model's
objective and sampling API, teacher loading and its statistics, bad input."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxreg import losses, methods
from jaxreg.diffusion import guidance, samplers
from jaxreg.diffusion.model import DiffuseReg
from jaxreg.diffusion.schedule import linear_schedule, predict_eps, predict_x0, q_sample
from scipy import ndimage
from test_losses import ref_diffusion_loop, ref_ssim

TINY_NET = {"features": 8, "depths": (1, 1), "heads": (2, 2), "window": (4, 4)}


def _oracle_denoiser(x0):
    """x̂₀ = the known x₀ whatever x_t is (the perfect network)."""
    return lambda aux, x, t: jnp.broadcast_to(x0, x.shape)


# --- samplers ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, steps", [("ddim", 20), ("ddpm", None)])
def test_sampling_from_a_start_step_returns_x0_with_an_oracle(method, steps):
    s = linear_schedule(300, beta_start=1e-4, beta_end=0.02)
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 2)), jnp.float32)
    x_start = q_sample(s, x0 + 1.0, 120, jax.random.normal(jax.random.key(0), x0.shape))  # a wrong start field
    got = samplers.sample(_oracle_denoiser(x0), s, x_start, method=method, steps=steps, key=jax.random.key(1),
                          start_step=120)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x0), atol=1e-4)


def test_timesteps_of_ddpm_and_ddim():
    times, previous = samplers.sampling_timesteps(10, method="ddpm")
    np.testing.assert_array_equal(times, np.arange(9, -1, -1))
    np.testing.assert_array_equal(previous, np.arange(8, -2, -1))
    times, previous = samplers.sampling_timesteps(2000, method="ddim", steps=3, start_step=400)
    np.testing.assert_array_equal(times, [400, 200, 0])
    np.testing.assert_array_equal(previous, [200, 0, -1])
    with pytest.raises(ValueError, match="steps"):
        samplers.sampling_timesteps(2000, method="ddim", steps=2001)
    with pytest.raises(ValueError, match="steps"):
        samplers.sampling_timesteps(2000, method="ddim", steps=50, start_step=10)
    with pytest.raises(ValueError, match="method"):
        samplers.sampling_timesteps(10, method="euler")


def test_observe_yields_every_k_steps_and_ends_where_sample_ends():
    s = linear_schedule(100, beta_start=1e-4, beta_end=0.02)
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)

    def denoise(aux, x, t):  # an imperfect network: x̂₀ depends on x_t
        return 0.5 * target + 0.1 * x

    x_T = jax.random.normal(jax.random.key(2), target.shape)
    times, previous = samplers.sampling_timesteps(100, method="ddim", steps=25)
    run = jax.jit(samplers.make_runner(denoise, s, method="ddim", eta=0.5))
    snaps = list(samplers.observe(run, x_T, times=times, previous=previous, key=jax.random.key(3), every=10))
    assert [sn.index for sn in snaps] == [10, 20, 25] and all(sn.total == 25 for sn in snaps)
    assert [sn.t for sn in snaps] == [int(times[9]), int(times[19]), 0]
    whole = samplers.sample(denoise, s, x_T, method="ddim", steps=25, eta=0.5, key=jax.random.key(3))
    np.testing.assert_allclose(np.asarray(snaps[-1].x_t), np.asarray(whole), atol=1e-5)


def test_guidance_moves_each_step_by_the_closed_form_gradient():
    """direction: N·E = −Σ⟨u, d⟩ → x̂₀ + w·d exactly; diffusion: against numpy finite differences."""
    rng = np.random.default_rng(4)
    x0 = jnp.asarray(rng.normal(size=(2, 6, 5, 2)), jnp.float32)
    images = jnp.zeros((2, 6, 5, 1))
    d = jnp.asarray([[0.3, -0.2], [1.0, 0.5]], jnp.float32)
    ctx = guidance.Context(images, images, direction=d)
    out = guidance.guide(x0, ctx, {"direction": 0.7}, to_field=lambda x: x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0) + 0.7 * np.asarray(d)[:, None, None, :], atol=1e-5)

    def diffusion_np(u):  # (1/ndim) Σ_axes mean(forward difference²)
        return sum(np.mean(np.diff(u, axis=a) ** 2) for a in range(2)) / 2

    u = np.asarray(x0[0], np.float64)
    grad, h = np.zeros_like(u), 1e-6
    for idx in np.ndindex(u.shape):
        plus, minus = u.copy(), u.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (diffusion_np(plus) - diffusion_np(minus)) / (2 * h)
    out = guidance.guide(x0[:1], guidance.Context(images[:1], images[:1]), {"diffusion": 0.25}, to_field=lambda x: x)
    np.testing.assert_allclose(np.asarray(out[0]), u - 0.25 * 30 * grad, atol=1e-4)  # N = 6·5 voxels


def test_guidance_lowers_its_energy_in_sampling():
    """A rough target; bending guidance gives a smoother sample than the unguided one."""
    s = linear_schedule(200, beta_start=1e-4, beta_end=0.02)
    target = jnp.asarray(np.random.default_rng(5).normal(size=(1, 16, 16, 2)), jnp.float32)
    images = jnp.zeros((1, 16, 16, 1))
    ctx = guidance.Context(images, images)

    def make(weights):
        return lambda aux, x, t: guidance.guide(0.8 * target + 0.2 * x, aux, weights, to_field=lambda v: v)

    x_T = jax.random.normal(jax.random.key(6), target.shape)
    plain = samplers.sample(make({}), s, x_T, aux=ctx, method="ddim", steps=20)
    guided = samplers.sample(make({"bending": 0.02}), s, x_T, aux=ctx, method="ddim", steps=20)
    assert float(losses.bending_energy(guided[0])) < 0.5 * float(losses.bending_energy(plain[0]))


def test_guidance_weights_are_checked():
    assert guidance.check_weights({"bending": 0.5, "folding": 0.0}) == {"bending": 0.5}
    with pytest.raises(ValueError, match="unknown guidance term 'smooth'"):
        guidance.check_weights({"smooth": 1.0})
    with pytest.raises(ValueError, match="weight"):
        guidance.check_weights({"bending": -1.0})
    with pytest.raises(ValueError, match="fixed_mask"):
        guidance.check_weights({"organ": 1.0}, context_fields=())


# --- the model -----------------------------------------------------------------------------

def _model(**kw):
    teacher = kw.pop("teacher", lambda f, m: jnp.stack([f - m, 0.5 * f], axis=-1))
    return DiffuseReg(denoiser=TINY_NET, num_steps=kw.pop("num_steps", 100), mean=[0.1, -0.2], std=[2.0, 0.5],
                      teacher=teacher, **kw)


def _pair(b=2, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"fixed": rng.uniform(size=(b, n, n)).astype(np.float32), "moving": rng.uniform(size=(b, n, n)).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny():
    """One small model and its parameters for the sampling tests (compiled runners are cached on it)."""
    model = _model(condition_dropout=0.2, sampler={"steps": 5})
    return model, model.init(jax.random.key(0), _pair())


@pytest.mark.slow
def test_loss_is_the_three_terms_of_the_paper():
    """The loss equals MSE + λ₁(1 − SSIM) + λ₂·diffusion recomputed from the same draw outside the model,
    with numpy and scipy (the schedule's formulas, the warp, SSIM and the regulariser of tests/test_losses)."""
    model = _model(ssim_weight=1.0, smooth_weight=0.1)
    batch = _pair()
    params = model.init(jax.random.key(0), batch)
    key = jax.random.key(7)
    loss, parts = jax.jit(model.loss_fn)(params, batch, key)
    # The same random draw, by hand: t, ε from the key as documented (split in three). The schedule,
    # x_t, x̂₀, the warp, SSIM and the regulariser are written with numpy/scipy here.
    k_t, k_eps, _ = jax.random.split(key, 3)
    f, m = np.asarray(batch["fixed"], np.float64), np.asarray(batch["moving"], np.float64)
    x0 = (np.stack([f - m, 0.5 * f], axis=-1) - _MEAN) / _STD
    t = np.asarray(jax.random.randint(k_t, (2,), 0, 100))
    eps = np.asarray(jax.random.normal(k_eps, x0.shape), np.float64)
    a = _abar()[t].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    eps_hat = np.asarray(jax.jit(model.net.apply)(params, jnp.asarray(x_t, jnp.float32), jnp.asarray(t),
                                                  jnp.asarray(batch["fixed"])[..., None],
                                                  jnp.asarray(batch["moving"])[..., None]), np.float64)
    u = (x_t - np.sqrt(1 - a) * eps_hat) / np.sqrt(a) * _STD + _MEAN
    ssim = np.mean([ref_ssim(f[i], _scipy_warp(m[i], u[i])) for i in range(2)])
    smooth = np.mean([ref_diffusion_loop(u[i]) for i in range(2)])
    mse = np.mean((eps_hat - eps) ** 2)
    np.testing.assert_allclose(float(parts["eps_mse"]), mse, rtol=1e-4)
    np.testing.assert_allclose(float(loss), mse + ssim + 0.1 * smooth, rtol=1e-4)


def _scipy_warp(image, ddf):
    """``image(x + ddf(x))``, linear, edges repeated (scipy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in image.shape], indexing="ij"))
    return ndimage.map_coordinates(image, grid + np.moveaxis(ddf, -1, 0), order=1, mode="nearest")


@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_sample_shapes_ensemble_std_and_predict_under_jit(tiny):
    model, params = tiny
    batch = _pair(b=2)
    result = model.sample(params, batch["fixed"], batch["moving"], ensemble=3, eta=1.0, key=jax.random.key(1))
    assert result.samples.shape == (3, 2, 16, 16, 2) and result.ddf.shape == result.std.shape == (2, 16, 16, 2)
    samples = np.asarray(result.samples)
    np.testing.assert_allclose(np.asarray(result.std), samples.std(axis=0), rtol=1e-4, atol=1e-6)
    assert float(jnp.min(result.std)) > 0  # three different noises
    ddf = jax.jit(model.predict)(params, batch["fixed"], batch["moving"])
    assert ddf.shape == (2, 16, 16, 2) and bool(jnp.all(jnp.isfinite(ddf)))
    # Deterministic DDIM with the same seed: predict and sample agree.
    again = model.sample(params, batch["fixed"], batch["moving"])
    np.testing.assert_allclose(np.asarray(again.ddf), np.asarray(ddf), atol=1e-4)


@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_observe_gives_fields_in_voxels_and_stops_early(tiny):
    model, params = tiny
    batch = _pair(b=2)
    observations = list(model.observe(params, batch["fixed"], batch["moving"], every=2, steps=8))
    assert [o.index for o in observations] == [2, 4, 6, 8]
    final = model.sample(params, batch["fixed"], batch["moving"], steps=8).ddf
    np.testing.assert_allclose(np.asarray(observations[-1].ddf_t), np.asarray(final), atol=1e-4)
    assert observations[0].warped.shape == (2, 16, 16) and np.isinf(observations[0].change)
    stopped = list(model.observe(params, batch["fixed"], batch["moving"], every=2, steps=8, stop_tol=10.0))
    assert len(stopped) == 2  # the second observation changed less than 1000 %


def _strong(params, scale=300.0):
    """``params`` with the last conv scaled up: flax initialises it at std 1e-3, which would make ε̂ ~1e-3
    and every effect of the network on a sample too small to test."""
    params = jax.tree.map(lambda a: a, params)
    params["params"]["eps"]["kernel"] = params["params"]["eps"]["kernel"] * scale
    return params


_MEAN, _STD = np.asarray([0.1, -0.2]), np.asarray([2.0, 0.5])  # _model's normalisation


def _abar(num_steps=100):
    return np.cumprod(1.0 - np.linspace(1e-6, 1e-2, num_steps))  # _model's linear schedule, float64


def _start_noise(key, shape):
    """The start noise of DiffuseReg.sample: ``key, k_start = split(key)``; ``normal(k_start, (N·B, *S, ndim))``."""
    return np.asarray(jax.random.normal(jax.random.split(key)[1], shape, jnp.float32), np.float64)


_NET = {}  # one jitted network call per model: the tests below share its compilation


def _net(model, params, x, t, f, m, condition):
    """ε̂ of the network for float64 ``x`` ``(B, *S, ndim)``, steps ``t`` ``(B,)``, images ``(B, *S)``."""
    apply = _NET.setdefault(id(model), jax.jit(model.net.apply))
    return np.asarray(apply(params, jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.int32), jnp.asarray(f)[..., None],
                            jnp.asarray(m)[..., None], jnp.asarray(condition, jnp.float32)), np.float64)


def _one_step_x0(model, params, x, t, f, m, condition):
    """x̂₀ = (x − √(1−ᾱ_t) ε̂)/√ᾱ_t with ε̂ of the network called here, in voxels."""
    a = _abar()[t]
    eps = _net(model, params, x, np.full((x.shape[0],), t), f, m, condition)
    return (x - np.sqrt(1 - a) * eps) / np.sqrt(a) * _STD + _MEAN, eps


@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_teacher_start_noises_the_teachers_field_to_the_start_step(tiny):
    """start="teacher", start_step t₀, one DDIM call: x = √ᾱ·z(φ_teacher) + √(1−ᾱ)·noise at t₀, then x̂₀ of
    the network at (x, t₀), in voxels (DDIM's last update returns x̂₀)."""
    model, params = tiny
    params = _strong(params)
    batch = _pair(b=2)
    f, m = batch["fixed"], batch["moving"]
    key, t0 = jax.random.key(11), 60
    got = np.asarray(model.sample(params, f, m, start="teacher", start_step=t0, steps=1, key=key).ddf)
    teacher = np.stack([f - m, 0.5 * f], axis=-1).astype(np.float64)
    a = _abar()[t0]
    x = np.sqrt(a) * (teacher - _MEAN) / _STD + np.sqrt(1 - a) * _start_noise(key, teacher.shape)
    want, eps = _one_step_x0(model, params, x, t0, f, m, jnp.ones((2,)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(np.sqrt(1 - a) / np.sqrt(a) * eps * _STD).max() > 0.1  # the network's share is far above tolerance
    # a field given as the start is treated the same way
    again = np.asarray(model.sample(params, f, m, start=jnp.asarray(teacher, jnp.float32), start_step=t0, steps=1,
                                    key=key).ddf)
    np.testing.assert_allclose(again, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="start field"):
        model.sample(params, f[:1], m[:1], start=jnp.zeros((1, 8, 8, 2)), start_step=10)


@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_classifier_free_guidance_combines_the_two_branches(tiny):
    """cfg_scale w: ε̂ = (1 + w)·ε̂(images) − w·ε̂(null condition), both branches called here (Ho & Salimans)."""
    model, params = tiny
    params = _strong(params)
    batch = _pair(b=2)
    f, m = batch["fixed"], batch["moving"]
    key, w, t = jax.random.key(12), 2.0, 99
    got = np.asarray(model.sample(params, f, m, cfg_scale=w, steps=1, key=key).ddf)
    x = _start_noise(key, (2, 16, 16, 2))
    plain, eps_c = _one_step_x0(model, params, x, t, f, m, jnp.ones((2,)))
    _, eps_u = _one_step_x0(model, params, x, t, f, m, jnp.zeros((2,)))
    a = _abar()[t]
    want = (x - np.sqrt(1 - a) * ((1 + w) * eps_c - w * eps_u)) / np.sqrt(a) * _STD + _MEAN
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(want - plain).max() > 100 * 1e-4  # the guidance term is far above tolerance
    unguided = np.asarray(model.sample(params, f, m, steps=1, key=key).ddf)
    np.testing.assert_allclose(unguided, plain, rtol=1e-4, atol=1e-4)  # cfg_scale 0: the conditional branch alone


@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_condition_dropout_in_the_loss(tiny):
    """condition_dropout p: sample b is dropped when uniform(k_drop)[b] < p; a dropped sample's network call
    gets the null condition and its consistency terms (which need its images) do not count."""
    model, params = tiny  # p = 0.2
    params = _strong(params)
    batch = _pair(b=2, seed=3)
    for seed in range(100):  # a key that keeps one sample and drops the other (the draw as documented)
        key = jax.random.key(seed)
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        keep = (np.asarray(jax.random.uniform(k_drop, (2,))) >= 0.2).astype(np.float64)
        if keep.sum() == 1:
            break
    assert keep.sum() == 1, keep
    loss, parts = jax.jit(model.loss_fn)(params, batch, key)
    f, m = batch["fixed"], batch["moving"]
    x0 = (np.stack([f - m, 0.5 * f], axis=-1) - _MEAN) / _STD
    t = np.asarray(jax.random.randint(k_t, (2,), 0, 100))
    eps = np.asarray(jax.random.normal(k_eps, x0.shape), np.float64)
    a = _abar()[t].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    eps_hat = _net(model, params, x_t, t, f, m, keep)
    u = (x_t - np.sqrt(1 - a) * eps_hat) / np.sqrt(a) * _STD + _MEAN

    i = int(np.argmax(keep))  # the kept sample: its consistency terms alone (numpy/scipy references)
    ssim = ref_ssim(np.asarray(f[i], np.float64), _scipy_warp(np.asarray(m[i], np.float64), u[i]))
    smooth = ref_diffusion_loop(u[i])
    mse = np.mean((eps_hat - eps) ** 2)
    np.testing.assert_allclose(float(parts["eps_mse"]), mse, rtol=1e-4)
    np.testing.assert_allclose(float(loss), mse + ssim + 0.1 * smooth, rtol=1e-4)
    # the network's share: with every sample conditioned ε̂ differs far beyond the tolerance
    assert np.abs(_net(model, params, x_t, t, f, m, np.ones(2)) - eps_hat).max() > 1e-2


@pytest.mark.parametrize("options, match", [
    ({"steps": 2001}, "steps"),
    ({"method": "plms"}, "method"),
    ({"guidance": {"wiggle": 1.0}}, "unknown guidance term"),
    ({"temperature": 1.0}, "unknown sampler option"),
    ({"ensemble": 0}, "ensemble"),
    ({"start": "zeros"}, "start"),
])
@pytest.mark.xdist_group("test_diffusion_model.tiny")  # one worker builds the module fixture once
@pytest.mark.slow
def test_bad_sampler_options_raise(tiny, options, match):
    model, params = tiny
    batch = _pair(b=1)
    with pytest.raises(ValueError, match=match):
        model.sample(params, batch["fixed"], batch["moving"], **options)
    with pytest.raises(ValueError, match=match):
        DiffuseReg(denoiser=TINY_NET, num_steps=2000, sampler=options)


def test_no_teacher_is_a_clear_error():
    model = DiffuseReg(denoiser=TINY_NET, num_steps=10)  # default DDIM steps: min(50, T)
    assert model.sampler["steps"] == 10
    with pytest.raises(ValueError, match="teacher"):
        model.loss_fn(None, _pair(b=1), jax.random.key(0))  # fails before the parameters are used


# --- teacher -------------------------------------------------------------------------------

def test_teacher_workdir_errors(tmp_path):
    from jaxreg.training.teacher import load_teacher
    from jaxreg.runs.workdir import save_config

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="empty"):
        load_teacher("")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_teacher(tmp_path)
    other = ml_collections.ConfigDict({"model": {"name": "diffusereg"}})
    save_config(other, tmp_path / "diffusion_run")
    with pytest.raises(ValueError, match="holds a 'diffusereg' model"):
        load_teacher(tmp_path / "diffusion_run")


def test_saved_runs_without_image_tokens_keep_the_old_wiring(tmp_path):
    """A DiffuseReg config.json saved before ``model.image_tokens`` existed is read back with "output"
    (the wiring it was trained with) and builds that denoiser; a saved value is kept; other models are
    untouched. Resuming such a run with another value is refused, before any checkpoint loads into
    the other network; without checkpoints, or with the same value, it passes."""
    from jaxreg.runs.workdir import check_resume, load_config, save_config

    old = ml_collections.ConfigDict({"model": {"name": "diffusereg", **TINY_NET}, "loss": {}})
    save_config(old, tmp_path / "old")
    config = load_config(tmp_path / "old")
    assert config.model.image_tokens == "output"
    assert methods.build_from_config(config).module.net.image_tokens == "output"
    assert methods.build({"name": "diffusereg", **TINY_NET}, {}).module.net.image_tokens == "input"  # new runs
    new = ml_collections.ConfigDict({"model": {"name": "diffusereg", "image_tokens": "input", **TINY_NET}, "loss": {}})
    save_config(new, tmp_path / "new")
    assert load_config(tmp_path / "new").model.image_tokens == "input"
    save_config(ml_collections.ConfigDict({"model": {"name": "voxelmorph"}}), tmp_path / "vm")
    assert "image_tokens" not in load_config(tmp_path / "vm").model

    check_resume(new, tmp_path / "old")  # no checkpoints yet: a fresh start
    (tmp_path / "old" / "checkpoints" / "500").mkdir(parents=True)
    with pytest.raises(ValueError, match="image_tokens='output'.*--config.model.image_tokens=output"):
        check_resume(new, tmp_path / "old")
    resumed = ml_collections.ConfigDict(new.to_dict())
    resumed.model.image_tokens = "output"
    check_resume(resumed, tmp_path / "old")
    check_resume(new, tmp_path / "nowhere")


def test_field_statistics_match_numpy():
    from jaxreg.training.teacher import field_statistics

    data = ml_collections.ConfigDict({"source": "synthetic", "seed": 0, "num_pairs": {"train": 3, "val": 1, "test": 1},
                                      "options": {"shape": (16, 16), "anatomy": "cardiac"}})
    teacher = lambda f, m: jnp.stack([f - m, 2.0 * f + 1.0], axis=-1)
    stats = field_statistics(teacher, data, progress=False)
    from jaxreg.data.sources import open_source

    source = open_source(data, "train")
    fields = np.stack([np.stack([r["fixed"] - r["moving"], 2 * r["fixed"] + 1], -1) for r in (source[i] for i in range(3))])
    np.testing.assert_allclose(stats["mean"], fields.reshape(-1, 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], fields.reshape(-1, 2).std(0), rtol=1e-4)
    assert stats["pairs"] == 3
    json.dumps(stats)  # storable as is


def test_registry_builds_diffusereg_with_its_sections():
    method = methods.build({"name": "diffusereg", **TINY_NET}, {"ssim_weight": 0.5},
                          diffusion={"num_steps": 50, "sampler": {"steps": 7, "guidance": {"bending": 0.0}}})
    assert method.module.schedule.num_steps == 50 and method.module.sampler["steps"] == 7
    assert method.module.ssim_weight == 0.5
    with pytest.raises(ValueError, match="denoiser field"):
        methods.build({"name": "diffusereg", "widths": 3}, {})


def test_predict_eps_and_x0_round_trip_in_the_model_units():
    model = _model()
    u = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 4, 2)), jnp.float32)
    np.testing.assert_allclose(np.asarray(model.denormalize(model.normalize(u))), np.asarray(u), atol=1e-6)
    x_t = q_sample(model.schedule, u, 10, jnp.ones_like(u))
    np.testing.assert_allclose(np.asarray(predict_eps(model.schedule, x_t, 10, u)), 1.0, atol=1e-3)


def test_v_prediction_gives_back_eps_and_x0():
    """v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho): the model recovers ε and x₀ exactly from the true v."""
    model = DiffuseReg(denoiser=TINY_NET, num_steps=2000, prediction="v")
    rng = np.random.default_rng(8)
    x0, eps = (jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32) for _ in range(2))
    t = jnp.asarray([0, 900, 1999])
    a = np.sqrt(np.cumprod(1 - np.linspace(1e-6, 1e-2, 2000)))[np.asarray(t)].reshape(-1, 1, 1, 1)
    b = np.sqrt(1 - a**2)
    x_t = a * np.asarray(x0) + b * np.asarray(eps)
    v = a * np.asarray(eps) - b * np.asarray(x0)
    eps_hat, x0_hat = model.eps_and_x0(jnp.asarray(v, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
    np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(eps), atol=1e-5)
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=1e-5)  # no 1/√ᾱ amplification at t = 1999
    with pytest.raises(ValueError, match="prediction"):
        DiffuseReg(denoiser=TINY_NET, prediction="x0")


def test_masked_similarity_and_organ_energies_against_numpy():
    """Closed forms: masked MSE of a shifted square; soft Dice of two boxes under the identity."""
    from jaxreg.diffusion.guidance import Context, energy

    fixed = np.zeros((12, 12), np.float32)
    fixed[3:7, 3:7] = 1.0
    moving = np.roll(fixed, 1, axis=0)
    mask = np.zeros((12, 12), np.float32)
    mask[2:8, 2:8] = 1.0
    ctx = Context(jnp.asarray(fixed)[..., None], jnp.asarray(moving)[..., None], fixed_mask=jnp.asarray(mask),
                  moving_mask=jnp.asarray(moving))
    zero = jnp.zeros((12, 12, 2))
    expected = np.sum(mask * (fixed - moving) ** 2) / mask.sum()
    np.testing.assert_allclose(float(energy("masked_similarity", zero, ctx)), expected, rtol=1e-6)
    # pulling from x + e₀ undoes the roll (moving(x + 1) = fixed(x)): zero inside the mask
    back = jnp.zeros((12, 12, 2)).at[..., 0].set(1.0)
    np.testing.assert_allclose(float(energy("masked_similarity", back, ctx)), 0.0, atol=1e-6)
    ctx = ctx._replace(fixed_mask=jnp.asarray(fixed))
    inter = np.sum(fixed * moving)
    np.testing.assert_allclose(float(energy("organ", zero, ctx)), 1 - 2 * inter / (fixed.sum() + moving.sum()), rtol=1e-5)


def test_v_prediction_without_condition_dropout_traces_and_bad_combinations_raise():
    model = _model(prediction="v")  # condition_dropout 0: the batch size must survive the v branch
    batch = _pair(b=2)
    params = jax.eval_shape(model.init, jax.random.key(0), batch)
    loss, metrics = jax.eval_shape(model.loss_fn, params, batch, jax.random.key(1))
    assert loss.shape == () and metrics["v_mse"].shape == ()
    with pytest.raises(ValueError, match="condition_dropout"):
        _model(sampler={"cfg_scale": 1.0})
    with pytest.raises(ValueError, match="start_step"):
        _model(sampler={"start": "teacher"})
    with pytest.raises(ValueError, match="eta"):
        _model(sampler={"eta": None})


def test_guidance_steps_in_voxels_whatever_the_normalisation():
    """direction: u ← u + w·d in voxels, so in z-units x̂₀ moves by w·d/σ per channel."""
    model = _model()
    rng = np.random.default_rng(9)
    x0 = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    images = jnp.zeros((1, 6, 6, 1))
    d = jnp.asarray([[1.0, 1.0]])
    out = guidance.guide(x0, guidance.Context(images, images, direction=d), {"direction": 0.3},
                         to_field=model.denormalize, from_field=model.normalize)
    np.testing.assert_allclose(np.asarray(model.denormalize(out) - model.denormalize(x0)), 0.3, atol=1e-5)
