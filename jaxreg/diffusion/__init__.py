"""Diffusion models of deformation fields (DiffuseReg): noise schedules and their closed forms.

``schedule``: :func:`linear_schedule` (DiffuseReg's 1e-6 → 1e-2 over T = 2000),
:func:`cosine_schedule`, forward noising :func:`q_sample`, :func:`predict_x0` /
:func:`predict_eps` and the DDPM :func:`posterior`.
"""

from jaxreg.diffusion import schedule
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
    "linear_schedule",
    "posterior",
    "predict_eps",
    "predict_x0",
    "q_sample",
    "schedule",
]
