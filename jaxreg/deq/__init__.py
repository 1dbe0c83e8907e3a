"""Deep equilibrium registration: fixed-point solvers and implicit-gradient layers.

``solvers``: :func:`solve` (plain iteration, Anderson, limited-memory Broyden) for z = T(z) with
our own stopping rule, per-step residuals and intermediate states at equal intervals of the
steps taken; :func:`solve_pairs` solves a batch pair by pair. ``implicit``: :func:`fixed_point_layer`, a
``custom_vjp`` layer with phantom or exact implicit-function gradients,
:func:`equilibrium_loss` (the loss at the equilibrium with the exact gradient and a reported
adjoint), :func:`phantom_steps`, :func:`jacobian_penalty`.
"""

from jaxreg.deq import implicit, solvers
from jaxreg.deq.implicit import BACKWARDS, equilibrium_loss, fixed_point_layer, jacobian_penalty, phantom_steps
from jaxreg.deq.solvers import SOLVERS, SolverInfo, describe, solve, solve_pairs, state_steps, validate_options

__all__ = [
    "BACKWARDS",
    "SOLVERS",
    "SolverInfo",
    "describe",
    "equilibrium_loss",
    "fixed_point_layer",
    "implicit",
    "jacobian_penalty",
    "phantom_steps",
    "solve",
    "solve_pairs",
    "solvers",
    "state_steps",
    "validate_options",
]
