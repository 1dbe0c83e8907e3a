"""The optimiser every method trains with: AdamW, linear warm-up + cosine decay, clipping.

Read from a config's ``optimizer`` section:

* ``learning_rate``: peak rate (after warm-up);
* ``warmup_steps``: linear ramp from 0 to the peak;
* ``decay_steps``: steps of the cosine from the peak to ``learning_rate * final_fraction``
  (usually the run's total steps; 0 keeps the rate constant after warm-up);
* ``final_fraction``: the rate at the end, as a fraction of the peak;
* ``weight_decay``: AdamW's decoupled decay;
* ``grad_clip``: clip the global gradient norm to this (0 or None: no clipping);
* ``max_consecutive_nonfinite``: how many non-finite updates in a row are skipped before
  they are applied anyway (and the run visibly diverges).

Non-finite gradients never reach the parameters: ``optax.apply_if_finite`` skips the update
and counts it (``nonfinite_count`` reads the total from the optimiser state).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import optax

__all__ = ["make_optimizer", "make_schedule", "nonfinite_count"]


def make_schedule(opt: Mapping) -> optax.Schedule:
    """Learning rate as a function of the step (see the module docstring)."""
    peak = float(opt["learning_rate"])
    warmup = int(opt.get("warmup_steps", 0) or 0)
    decay = int(opt.get("decay_steps", 0) or 0)
    if peak <= 0 or warmup < 0 or decay < 0:
        raise ValueError(f"optimizer needs learning_rate > 0 and non-negative step counts; got {dict(opt)}.")
    if decay == 0:
        if not warmup:
            return optax.constant_schedule(peak)
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=warmup + decay,
        end_value=peak * float(opt.get("final_fraction", 0.0)))


def make_optimizer(opt: Mapping) -> optax.GradientTransformation:
    """Clipping → AdamW on the schedule, wrapped so non-finite updates are skipped."""
    chain = []
    if opt.get("grad_clip"):
        chain.append(optax.clip_by_global_norm(float(opt["grad_clip"])))
    chain.append(optax.adamw(make_schedule(opt), weight_decay=float(opt.get("weight_decay", 0.0))))
    return optax.apply_if_finite(optax.chain(*chain), int(opt.get("max_consecutive_nonfinite", 10)))


def nonfinite_count(opt_state) -> jax.Array:
    """Updates skipped so far for non-finite gradients (from ``make_optimizer``'s state)."""
    return opt_state.total_notfinite
