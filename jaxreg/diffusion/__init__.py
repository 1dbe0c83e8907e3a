"""Diffusion models of deformation fields (DiffuseReg): schedules, samplers, guidance and the model.

``schedule``: :func:`linear_schedule` (DiffuseReg's 1e-6 → 1e-2 over T = 2000),
:func:`cosine_schedule`, forward noising :func:`q_sample`, :func:`predict_x0` /
:func:`predict_eps` and the DDPM :func:`posterior`. ``samplers``: DDPM ancestral and DDIM
(any number of steps, η) as jitted scans, from noise or from a field at a given step, and
:func:`observe` for step-by-step snapshots. ``guidance``: energies of x̂₀ that steer sampling.
``model``: :class:`DiffuseReg` (training objective, sampling, observation, ensembles).
"""

from jaxreg.diffusion import guidance, samplers, schedule
from jaxreg.diffusion.model import DiffuseReg, Observation, Sample
from jaxreg.diffusion.samplers import (
    Snapshot,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    observe,
    sample,
)
from jaxreg.diffusion.schedule import (
    Schedule,
    cosine_schedule,
    linear_schedule,
    posterior,
    predict_eps,
    predict_x0,
    q_sample,
)

__all__ = [
    "DiffuseReg",
    "Observation",
    "Sample",
    "Schedule",
    "Snapshot",
    "cosine_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "guidance",
    "linear_schedule",
    "observe",
    "posterior",
    "predict_eps",
    "predict_x0",
    "q_sample",
    "sample",
    "samplers",
    "schedule",
]
