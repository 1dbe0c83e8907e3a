"""DiffuseReg: a DDPM of deformation fields conditioned on the image pair, and its samplers.

Training (:meth:`DiffuseReg.loss_fn`): the target x₀ is the field ``φ₀`` of a frozen
teacher (any trained jaxreg registration model), z-scored per channel with training-set
statistics; ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` at a uniform random step, and the loss is

    MSE(ε̂, ε) + λ₁ (1 − SSIM(I_m∘φ̂₀, I_f)) + λ₂ · diffusion(φ̂₀),
    φ̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, un-normalised to voxels before warping

(λ₁ = 1, λ₂ = 0.1; SSIM with a Gaussian window 9, σ 1.5). With ``condition_dropout`` > 0
the images of that share of samples are replaced by the null condition, which enables
classifier-free guidance at sampling.

Sampling (:meth:`DiffuseReg.sample`, :meth:`DiffuseReg.observe`): DDPM or DDIM, any batch,
from noise or from a given field at a given step, classifier-free guidance, energy guidance
on x̂₀ (``jaxreg.diffusion.guidance``) and ensembles (mean field and per-voxel std).
Fields going in and out are displacements ``(B, *S, ndim)`` in voxels (pull).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _random as random
from jaxreg import losses, spatial
from jaxreg.diffusion import guidance as guidance_lib
from jaxreg.diffusion import samplers
from jaxreg.diffusion.schedule import (
    cosine_schedule,
    linear_schedule,
    predict_x0,
    q_sample,
)
from jaxreg.models.denoiser import Denoiser

__all__ = ["SCHEDULES", "DiffuseReg", "Observation", "Sample"]

SCHEDULES = ("linear", "cosine")
#: What the network predicts, and its MSE term: ε (the paper) or v = √ᾱ·ε − √(1−ᾱ)·x₀
#: (Salimans & Ho 2022), from which x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v̂ needs no division by √ᾱ_t
#: (≈ 0.007 at t = T − 1, where ε-prediction amplifies ε̂'s error ~150× in x̂₀).
PREDICTIONS = ("eps", "v")
#: Per-sample weights of the consistency terms: "none" (the paper) or ᾱ_t (x̂₀ is only
#: trustworthy at small t: at t = T − 1, √ᾱ = 0.007 amplifies the error of ε̂ ~150×).
WEIGHTINGS = ("none", "alpha_bar")
#: Denoiser fields a config's ``model`` section may set.
DENOISER_FIELDS = ("features", "depths", "heads", "window", "patch", "fusion", "conditional_mask", "time_in_resblocks",
                   "mlp_ratio", "image_skip", "image_tokens")
#: Sampler options (``diffusion.sampler`` in a config, keyword arguments of predict/sample).
SAMPLER_OPTIONS = ("method", "steps", "eta", "seed", "cfg_scale", "guidance", "ensemble", "start", "start_step", "clip")


class Sample(NamedTuple):
    """An ensemble of samples for a batch of pairs.

    Attributes:
      ddf: ``(B, *S, ndim)`` mean displacement over the ensemble (voxels, pull).
      std: ``(B, *S, ndim)`` per-voxel standard deviation over the ensemble (0 for one sample).
      samples: ``(N, B, *S, ndim)`` every sample.
    """

    ddf: jax.Array
    std: jax.Array
    samples: jax.Array


class Observation(NamedTuple):
    """The state of a running sampler (see :meth:`DiffuseReg.observe`).

    Attributes:
      index, total: model calls done and in all.
      t: the step just denoised (0-based).
      ddf_t: ``(B, *S, ndim)`` the current noisy field φ_t, in voxels.
      ddf0: ``(B, *S, ndim)`` the predicted clean field x̂₀ (voxels, pull).
      warped: ``(B, *S)`` the moving image warped by ``ddf0``.
      change: relative change of x̂₀ since the previous observation (inf at the first).
    """

    index: int
    total: int
    t: int
    ddf_t: jax.Array
    ddf0: jax.Array
    warped: jax.Array
    change: float


def _check_start(start) -> None:
    if start not in ("noise", "teacher"):
        raise ValueError(f"sampler `start` must be 'noise' or 'teacher' (or pass a field); got {start!r}.")


class DiffuseReg:
    """DiffuseReg with its schedule, loss weights and default sampler (a plain object; parameters are explicit).

    Args:
      denoiser: :class:`jaxreg.models.denoiser.Denoiser` fields (``DENOISER_FIELDS``).
      schedule: ``"linear"`` (DiffuseReg: β 1e-6 → 1e-2) or ``"cosine"``.
      num_steps: T (2000).
      beta_start, beta_end: the linear schedule's ends.
      mean, std: per-channel statistics of the teacher's fields (voxels), ``(ndim,)``;
        ``None`` is 0 and 1 (no normalisation).
      teacher: ``teacher(fixed, moving) -> φ₀`` on ``(B, *S)`` images, ``(B, *S, ndim)``;
        needed by :meth:`loss_fn` and by ``start="teacher"``.
      ssim_weight, smooth_weight: λ₁ and λ₂.
      ssim_window: SSIM window side (σ 1.5).
      consistency_weighting: ``"none"`` (the paper) or ``"alpha_bar"`` (``WEIGHTINGS``).
      condition_dropout: share of training samples with the null condition (0: off).
      prediction: the network predicts ``"eps"`` (the paper; loss MSE(ε̂, ε)) or ``"v"``
        (``PREDICTIONS``; loss MSE(v̂, v), which at large t is MSE(x̂₀, x₀): x̂₀ learns the
        teacher's field even where x_t is almost pure noise).
      sampler: default sampler options (``SAMPLER_OPTIONS``): ``method`` ``"ddim"``,
        ``steps`` 50 (at most T), ``eta`` 0, ``seed`` 0, ``cfg_scale`` 0, ``guidance`` {}, ``ensemble`` 1,
        ``start`` ``"noise"``, ``start_step`` None (T − 1), ``clip`` 0 (off; else x̂₀ is
        clipped to ±clip in z-scored units before guidance).
    """

    def __init__(self, *, denoiser: Mapping | None = None, schedule: str = "linear", num_steps: int = 2000,
                 beta_start: float = 1e-6, beta_end: float = 1e-2, mean=None, std=None, teacher: Callable | None = None,
                 ssim_weight: float = 1.0, smooth_weight: float = 0.1, ssim_window: int = 9,
                 consistency_weighting: str = "none", condition_dropout: float = 0.0, prediction: str = "eps",
                 sampler: Mapping | None = None):
        denoiser = dict(denoiser or {})
        unknown = set(denoiser) - set(DENOISER_FIELDS)
        if unknown:
            raise ValueError(f"unknown denoiser field(s) {sorted(unknown)}; known: {DENOISER_FIELDS}.")
        self.net = Denoiser(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in denoiser.items()})
        if schedule not in SCHEDULES:
            raise ValueError(f"`diffusion.schedule` must be one of {SCHEDULES}; got {schedule!r}.")
        self.schedule = (linear_schedule(num_steps, beta_start=beta_start, beta_end=beta_end) if schedule == "linear"
                         else cosine_schedule(num_steps))
        self.mean = None if mean is None else jnp.asarray(mean, jnp.float32)
        self.std = None if std is None else jnp.asarray(std, jnp.float32)
        if self.std is not None and not bool(jnp.all(self.std > 0)):
            raise ValueError(f"`diffusion.std` must be > 0 per channel; got {std}.")
        self.teacher = teacher
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"`diffusion.condition_dropout` must be in [0, 1); got {condition_dropout}.")
        self.ssim_weight, self.smooth_weight = float(ssim_weight), float(smooth_weight)
        self.ssim_window, self.condition_dropout = int(ssim_window), float(condition_dropout)
        if consistency_weighting not in WEIGHTINGS:
            raise ValueError(f"`loss.consistency_weighting` must be one of {WEIGHTINGS}; got {consistency_weighting!r}.")
        self.consistency_weighting = consistency_weighting
        if prediction not in PREDICTIONS:
            raise ValueError(f"`diffusion.prediction` must be one of {PREDICTIONS}; got {prediction!r}.")
        self.prediction = prediction
        self.sampler = self._sampler_options(dict(sampler or {}))

    # ----------------------------------------------------------------------------- units
    def normalize(self, ddf):
        """Voxels → the model's z-scored units (per channel)."""
        return ddf if self.mean is None else (ddf - self.mean) / self.std

    def denormalize(self, x):
        """The model's units → voxels."""
        return x if self.mean is None else x * self.std + self.mean

    def _sqrt_alphas(self, t, like):
        """``(√ᾱ_t, √(1 − ᾱ_t))`` for steps ``t`` ``(B,)``, shaped to broadcast against ``like``."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        return (jnp.sqrt(self.schedule.alpha_bars[t]).reshape(shape),
                jnp.sqrt(self.schedule.one_minus_alpha_bars[t]).reshape(shape))

    def eps_and_x0(self, output, x_t, t):
        """``(ε̂, x̂₀)`` from the network's output at ``x_t``, step ``t`` ``(B,)``."""
        if self.prediction == "eps":
            return output, predict_x0(self.schedule, x_t, t, output)
        a, b = self._sqrt_alphas(t, x_t)
        return b * x_t + a * output, a * x_t - b * output

    # ----------------------------------------------------------------------------- training
    def init(self, key, batch):
        fixed = jnp.asarray(batch["fixed"])[..., None]
        ndim = fixed.ndim - 2
        x = jnp.zeros((*fixed.shape[:-1], ndim), jnp.float32)
        t = jnp.zeros((fixed.shape[0],), jnp.int32)
        condition = jnp.ones((fixed.shape[0],)) if self.condition_dropout else None
        # Jitted: Flax's eager init of a Swin-UNETR runs thousands of small ops (~30 s on 2 cores).
        return jax.jit(self.net.init)(key, x, t, fixed, fixed, condition)

    def teacher_field(self, fixed, moving):
        """φ₀ of the frozen teacher for ``(B, *S)`` images (no gradient)."""
        if self.teacher is None:
            raise ValueError("this DiffuseReg has no teacher loaded: train with `diffusion.teacher_workdir` set, or load "
                             "the run with its teacher (jaxreg.runs.restore.load_run loads it when the sampler "
                             "starts from it: --config.diffusion.sampler.start=teacher).")
        return jax.lax.stop_gradient(self.teacher(fixed, moving))

    def loss_fn(self, params, batch, key):
        """The DiffuseReg objective of a batch (see the module docstring); lower is better.

        Metrics: ``eps_mse``, ``ssim`` (1 − SSIM of the warped image), ``smoothness``, and
        ``v_mse`` with v-prediction (its loss term instead of ``eps_mse``).
        """
        fixed, moving = jnp.asarray(batch["fixed"]), jnp.asarray(batch["moving"])
        b = fixed.shape[0]
        x0 = self.normalize(self.teacher_field(fixed, moving))
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        t = jax.random.randint(k_t, (b,), 0, self.schedule.num_steps)
        eps = random.normal(k_eps, x0.shape, x0.dtype)
        x_t = q_sample(self.schedule, x0, t, eps)
        condition = None
        if self.condition_dropout:
            condition = (jax.random.uniform(k_drop, (b,)) >= self.condition_dropout).astype(jnp.float32)
        output = self.net.apply(params, x_t, t, fixed[..., None], moving[..., None], condition)
        eps_hat, x0_hat = self.eps_and_x0(output, x_t, t)
        eps_mse = jnp.mean((eps_hat - eps) ** 2)
        if self.prediction == "v":  # the network's own target (Salimans & Ho): v = √ᾱ·ε − √(1−ᾱ)·x₀
            sqrt_a, sqrt_b = self._sqrt_alphas(t, x_t)  # not `b`: that is the batch size here
            mse = jnp.mean((output - (sqrt_a * eps - sqrt_b * x0)) ** 2)
        else:
            mse = eps_mse
        ddf0 = self.denormalize(x0_hat)
        ndim = ddf0.shape[-1]

        def consistency(f, m, u):
            return (losses.ssim(f, spatial.warp(m, u), window=self.ssim_window, sigma=1.5, ndim=ndim),
                    losses.diffusion(u))

        dissimilarity, smoothness = jax.vmap(consistency)(fixed, moving, ddf0)
        # The consistency terms need the images: only conditioned samples count.
        weight = jnp.ones((b,)) if condition is None else condition
        weight = weight / jnp.maximum(jnp.sum(weight), 1.0)
        if self.consistency_weighting == "alpha_bar":
            weight = weight * self.schedule.alpha_bars[t]
        dissimilarity, smoothness = jnp.sum(weight * dissimilarity), jnp.sum(weight * smoothness)
        loss = mse + self.ssim_weight * dissimilarity + self.smooth_weight * smoothness
        metrics = {"eps_mse": eps_mse, "ssim": dissimilarity, "smoothness": smoothness}
        if self.prediction == "v":
            metrics["v_mse"] = mse
        return loss, metrics

    # ----------------------------------------------------------------------------- sampling
    def _sampler_options(self, options: Mapping) -> dict:
        unknown = set(options) - set(SAMPLER_OPTIONS)
        if unknown:
            raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {SAMPLER_OPTIONS}.")
        base = getattr(self, "sampler", None) or {"method": "ddim", "steps": min(50, self.schedule.num_steps), "eta": 0.0, "seed": 0, "cfg_scale": 0.0,
                                                   "guidance": {}, "ensemble": 1, "start": "noise", "start_step": None, "clip": 0.0}
        out = dict(base, **options)
        if out["method"] not in samplers.METHODS:
            raise ValueError(f"sampler `method` must be one of {samplers.METHODS}; got {out['method']!r}.")
        out["guidance"] = guidance_lib.check_weights(out["guidance"])
        if isinstance(out["start"], str):
            _check_start(out["start"])
        ensemble = out["ensemble"]
        if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or ensemble < 1:
            raise ValueError(f"sampler `ensemble` must be an integer >= 1; got {ensemble!r}.")
        for name in ("eta", "cfg_scale", "clip"):
            value = out[name]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not float(value) >= 0:
                raise ValueError(f"sampler `{name}` must be a number >= 0; got {value!r}.")
            out[name] = float(value)
        if out["cfg_scale"] and not self.condition_dropout:
            raise ValueError("sampler `cfg_scale` > 0 needs a model trained with `diffusion.condition_dropout` > 0 "
                             "(it has no unconditional branch).")
        if out["start_step"] is not None and int(out["start_step"]) < 0:  # config files use -1 for "none"
            out["start_step"] = None
        if isinstance(out["start"], str) and out["start"] == "teacher" and out["start_step"] is None:
            raise ValueError("sampler start='teacher' needs a `start_step` (e.g. 400 of 2000): at T − 1 the start "
                             "is pure noise and the teacher's field would be ignored.")
        # Validates steps against T and start_step now, not inside a trace.
        samplers.sampling_timesteps(self.schedule.num_steps, method=out["method"], steps=out["steps"],
                                    start_step=out["start_step"])
        return out

    def _denoise(self, cfg_scale: float, weights: tuple, clip: float = 0.0):
        """``denoise(aux, x_t, t) -> x̂₀`` with classifier-free guidance, clipping and energy guidance."""
        weights = dict(weights)

        def denoise(aux, x, t):
            params, fixed, moving, context = aux
            if cfg_scale:
                b = x.shape[0]
                both = self.net.apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                                      jnp.concatenate([fixed, fixed]), jnp.concatenate([moving, moving]),
                                      jnp.concatenate([jnp.ones((b,)), jnp.zeros((b,))]))
                output = (1 + cfg_scale) * both[:b] - cfg_scale * both[b:]  # linear in ε and in v alike
            else:
                output = self.net.apply(params, x, t, fixed, moving,
                                        jnp.ones((x.shape[0],)) if self.condition_dropout else None)
            x0 = self.eps_and_x0(output, x, t)[1]
            if clip:  # x̂₀ at large t is ε̂'s error amplified up to 1/√ᾱ_t; keep it in the data's range
                x0 = jnp.clip(x0, -clip, clip)
            return guidance_lib.guide(x0, context, weights, to_field=self.denormalize, from_field=self.normalize)

        return denoise

    @functools.lru_cache(maxsize=32)  # noqa: B019 — one compiled runner per option set, kept with the model
    def _runner(self, method: str, eta: float, cfg_scale: float, weights: tuple, clip: float):
        return jax.jit(samplers.make_runner(self._denoise(cfg_scale, weights, clip), self.schedule, method=method, eta=eta))

    def _runner_for(self, options: Mapping):
        return self._runner(options["method"], float(options["eta"]), float(options["cfg_scale"]),
                            tuple(sorted(options["guidance"].items())), float(options["clip"]))

    def _prepare(self, fixed, moving, options, start, fixed_mask, moving_mask, direction, key):
        """Batched inputs of a run: ``(aux, x_start, times, previous, key, n, b)``."""
        fixed, moving = jnp.asarray(fixed, jnp.float32), jnp.asarray(moving, jnp.float32)
        if fixed.shape != moving.shape or fixed.ndim not in (3, 4):
            raise ValueError(f"fixed and moving must be (B, *S) batches of one shape; got {fixed.shape} and {moving.shape}.")
        n, b, ndim = int(options["ensemble"]), fixed.shape[0], fixed.ndim - 1
        guidance_lib.check_weights(options["guidance"], context_fields=tuple(
            name for name, v in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask), ("direction", direction))
            if v is not None))
        rep = lambda a: None if a is None else jnp.tile(jnp.asarray(a, jnp.float32), (n,) + (1,) * (jnp.ndim(a) - 1))
        f, m = rep(fixed)[..., None], rep(moving)[..., None]
        if direction is not None and jnp.ndim(direction) == 1:
            direction = jnp.broadcast_to(jnp.asarray(direction, jnp.float32), (b, ndim))
        context = guidance_lib.Context(f, m, rep(fixed_mask), rep(moving_mask), rep(direction))
        times, previous = samplers.sampling_timesteps(self.schedule.num_steps, method=options["method"],
                                                      steps=options["steps"], start_step=options["start_step"])
        key = jax.random.key(int(options["seed"])) if key is None else key
        key, k_start = jax.random.split(key)
        noise = random.normal(k_start, (n * b, *fixed.shape[1:], ndim), jnp.float32)
        if isinstance(start, str):
            _check_start(start)
        if isinstance(start, str) and start == "teacher":
            start = self.teacher_field(fixed, moving)
        if isinstance(start, str):  # "noise"
            x = noise
        else:  # a given field, noised to the start step
            if options["start_step"] is None:
                raise ValueError("starting from a given field needs a `start_step` (e.g. 400 of 2000): at T − 1 the "
                                 "start is pure noise and the field would be ignored.")
            start = jnp.asarray(start, jnp.float32)
            if start.shape != (b, *fixed.shape[1:], ndim):
                raise ValueError(f"a start field must be (B, *S, ndim) = {(b, *fixed.shape[1:], ndim)}; got {start.shape}.")
            x = q_sample(self.schedule, self.normalize(rep(start)), int(times[0]), noise)
        return (f, m, context), x, times, previous, key, n, b

    def sample(self, params, fixed, moving, *, key=None, start=None, fixed_mask=None, moving_mask=None, direction=None,
               **options) -> Sample:
        """Samples displacement fields for a batch of pairs.

        Args:
          params: the denoiser's parameters.
          fixed, moving: ``(B, *S)`` images.
          key: PRNG key (default: from ``seed``).
          start: ``"noise"``, ``"teacher"`` or a ``(B, *S, ndim)`` field (voxels) to start from,
            noised to ``start_step`` (which should then be set, e.g. 200 of 2000).
          fixed_mask, moving_mask: ``(B, *S)`` masks for the ``"organ"`` guidance term.
          direction: ``(B, ndim)`` or ``(B, *S, ndim)`` for the ``"direction"`` term.
          **options: sampler options (``SAMPLER_OPTIONS``) overriding the defaults.

        Returns:
          a :class:`Sample` (mean, std and all ``ensemble`` samples).
        """
        options = self._sampler_options(options)
        start = options["start"] if start is None else start
        (f, m, context), x, times, previous, key, n, b = self._prepare(fixed, moving, options, start, fixed_mask,
                                                                       moving_mask, direction, key)
        run = self._runner_for(options)
        x = run((params, f, m, context), x, key, jnp.asarray(times), jnp.asarray(previous))[0]
        samples = self.denormalize(x).reshape(n, b, *x.shape[1:])
        return Sample(jnp.mean(samples, axis=0), jnp.std(samples, axis=0), samples)

    def predict(self, params, fixed, moving, **options):
        """The (ensemble-mean) sampled ``ddf`` ``(B, *S, ndim)`` for ``(B, *S)`` images; jit-able.

        ``options``: sampler options (``SAMPLER_OPTIONS``), defaults from the config.
        """
        return self.sample(params, fixed, moving, **options).ddf  # under jit, the unused std is dropped

    def observe(self, params, fixed, moving, *, every: int = 10, stop_tol: float = 0.0, key=None, start=None,
                fixed_mask=None, moving_mask=None, direction=None, **options) -> Iterator[Observation]:
        """Runs the sampler and yields an :class:`Observation` every ``every`` model calls.

        Break out of the loop to stop; with ``stop_tol`` > 0 it stops by itself once the
        relative change of x̂₀ between two observations is below ``stop_tol``. Ensembles are
        not observed (``ensemble`` must be 1). Other arguments as in :meth:`sample`.
        """
        options = self._sampler_options(options)
        if options["ensemble"] != 1:
            raise ValueError("observe() follows one sample per pair: use ensemble=1 (or sample() for ensembles).")
        if not stop_tol >= 0:
            raise ValueError(f"`stop_tol` must be >= 0; got {stop_tol!r}.")
        start = options["start"] if start is None else start
        (f, m, context), x, times, previous, key, _, _ = self._prepare(fixed, moving, options, start, fixed_mask,
                                                                       moving_mask, direction, key)
        run = self._runner_for(options)
        last = None
        warp = jax.jit(jax.vmap(spatial.warp))
        for snap in samplers.observe(run, x, aux=(params, f, m, context), times=times, previous=previous, key=key,
                                     every=every):
            ddf0 = self.denormalize(snap.x0)
            change = float("inf") if last is None else float(jnp.linalg.norm(ddf0 - last) /
                                                              jnp.maximum(jnp.linalg.norm(ddf0), 1e-12))
            last = ddf0
            yield Observation(snap.index, snap.total, snap.t, self.denormalize(snap.x_t), ddf0, warp(m, ddf0)[..., 0], change)
            if stop_tol and change < stop_tol:
                return
