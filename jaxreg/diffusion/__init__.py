"""Diffusion models of deformation fields (DiffuseReg): noise schedules and their closed forms.

``schedule``: :func:`linear_schedule` (DiffuseReg's 1e-6 → 1e-2 over T = 2000),
:func:`cosine_schedule`, forward noising :func:`q_sample`, :func:`predict_x0` /
:func:`predict_eps` and the DDPM :func:`posterior`. ``samplers``: :func:`ddpm_sample` (ancestral, all T steps) and
:func:`ddim_sample` (any number of steps, η), each one jitted ``lax.scan``.
"""

from jaxreg.diffusion import samplers, schedule
from jaxreg.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
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
    "Schedule",
    "cosine_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "linear_schedule",
    "posterior",
    "predict_eps",
    "predict_x0",
    "q_sample",
    "samplers",
    "schedule",
]
