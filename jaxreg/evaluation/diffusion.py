"""What evaluation adds for DiffuseReg: how a sample forms, and how sure the model is.

For the first pair of the evaluated split, with the run's sampler options:

* ``figures/sampling.png``: the sampler observed at ``eval.observe_frames`` points: the
  first model call, then calls spaced geometrically towards the last (1, 28, 41, 46, 49, 50
  of DDIM-50), where the noisy field φ_t turns from noise into the sample (x̂₀ is close
  to its final value from the first call on) — the noisy field φ_t, the predicted x̂₀ over
  the warped image, the remaining difference (DiffuseReg's Fig. 3);
* ``figures/uncertainty.png``: an ensemble of ``eval.uncertainty_samples`` samples — the
  mean-warped image and the per-voxel standard deviation of the field (voxels), with the
  fixed labels as contours named in a legend (``eval.label_names``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jaxreg import spatial
from jaxreg.evaluation import diffusion_figures

__all__ = ["diffusion_figures_for", "sampler_summary"]


def sampler_summary(options: Mapping) -> str:
    """One line naming a sampler setting, e.g. ``"ddim, 50 steps, eta 0"``."""
    text = "ddpm, all steps" if options["method"] == "ddpm" else f"ddim, {options['steps']} steps, eta {options['eta']:g}"
    if options.get("start_step") is not None:
        text += f", from {options.get('start', 'noise')} at step {options['start_step']}"
    if options.get("cfg_scale"):
        text += f", cfg {options['cfg_scale']:g}"
    if options.get("guidance"):
        text += ", guidance " + " ".join(f"{k}={v:g}" for k, v in options["guidance"].items())
    if options.get("ensemble", 1) > 1:
        text += f", ensemble {options['ensemble']}"
    return text


def diffusion_figures_for(out_dir, model, params, record: Mapping, config, *, labels=None) -> dict:
    """Writes ``sampling.png`` and ``uncertainty.png`` for one pair; returns the sampler facts for metrics.json.

    Args:
      out_dir: the evaluation's ``figures`` folder.
      model: the run's :class:`jaxreg.diffusion.DiffuseReg`.
      params: its parameters.
      record: a pair record (``fixed``, ``moving``, optional ``fixed_labels``).
      config: the run's config (``eval.observe_frames``, ``eval.uncertainty_samples``).
    """
    out_dir = Path(out_dir)
    ev = config.get("eval") or {}
    options = dict(model.sampler)
    fixed, moving = np.asarray(record["fixed"], np.float32)[None], np.asarray(record["moving"], np.float32)[None]
    total = len(model_timesteps(model, options))
    keep = observed_calls(total, max(1, int(ev.get("observe_frames", 6) or 6)))
    frames = [(obs.t, np.asarray(obs.ddf_t[0]), np.asarray(obs.ddf0[0]), np.asarray(obs.warped[0]))
              for obs in model.observe(params, fixed, moving, every=1, **{**options, "ensemble": 1}) if obs.index in keep]
    diffusion_figures.sampling_figure(out_dir / "sampling.png", fixed[0], moving[0], frames,
                                      title=f"DiffuseReg sampling ({sampler_summary(options)})")
    out = {"sampler": dict(options), "sampler_summary": sampler_summary(options)}
    n = int(ev.get("uncertainty_samples", 8) or 0)
    if n > 1:
        result = model.sample(params, fixed, moving, **{**options, "ensemble": n})
        mean = np.asarray(result.ddf[0])
        std = np.asarray(result.std[0])
        warped = np.asarray(spatial.warp(record["moving"], mean))
        diffusion_figures.uncertainty_figure(out_dir / "uncertainty.png", record["fixed"], warped, std,
                                             labels=record.get("fixed_labels"), label_names=ev.get("label_names"),
                                             title=f"uncertainty: {n} samples ({sampler_summary(options)})")
        magnitude = np.linalg.norm(std, axis=-1)
        out["uncertainty"] = {"samples": n, "mean_std_voxels": float(magnitude.mean()),
                              "max_std_voxels": float(magnitude.max())}
    return out


def observed_calls(total: int, frames: int) -> set[int]:
    """The model calls (1-based, the last always included) after which ``sampling.png`` shows the sampler.

    The first call, then calls spaced geometrically towards the last (``total = 50,
    frames = 6``: 1, 28, 41, 46, 49, 50), i.e. dense at low t: there the noisy field φ_t
    turns from noise into the sample, while x̂₀ (v-prediction, the demo) is close to its
    final value from the first call on. At most ``frames`` calls (fewer when ``total`` is
    small).
    """
    if frames <= 1:
        return {total}
    return {total + 1 - int(k) for k in np.rint(np.geomspace(1, total, num=min(frames, total)))}


def model_timesteps(model, options: Mapping) -> np.ndarray:
    """The steps the sampler will denoise with ``options``."""
    from jaxreg.diffusion.samplers import sampling_timesteps

    return sampling_timesteps(model.schedule.num_steps, method=options["method"], steps=options["steps"],
                              start_step=options["start_step"])[0]
