"""jaxopt's root finders behind :func:`jaxreg.deq.solvers.solve_pairs`: ``method="jaxopt_anderson"`` and
``"jaxopt_broyden"``.

jaxopt solves the whole batch as **one system** (its norms, mixing coefficients and step are those of
the batch array), as ``jaxopt.AndersonAcceleration(...).run(z0)`` would; the project's own solvers
solve each pair on its own. The loop around jaxopt's ``init_state``/``update`` is ours, so that both
kinds report alike: every step's residual per pair in the project's rule (``stop``: relative or
absolute, measured where ``T`` was evaluated, through jaxopt's ``has_aux``), the intermediate states
of DEQReg's Eq. 9, and one stop for the batch: once every pair's residual is below ``tol`` (jaxopt's
own ``tol``, on the batch's absolute norm, is not used), or after ``max_steps``.

* ``jaxopt_anderson``: ``AndersonAcceleration(history_size=history, beta=damping, ridge=1e-5)``.
* ``jaxopt_broyden``: ``Broyden`` on ``g(z) = z − T(z)`` (written ``T(z) − z`` it diverges silently),
  ``history_size=history`` (``None``: every step's pair, jaxopt's default), a fixed ``stepsize=damping`` (no line search: each line-search trial
  would cost a forward pass of the update network).

jaxopt is deprecated upstream (its import warns; the warning is silenced here) and kept as a
dependency for these methods; the project's solvers are the default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

JAXOPT_SOLVERS = ("jaxopt_anderson", "jaxopt_broyden")


def _jaxopt():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt
    return jaxopt


def solve_batch(fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, method: str, max_steps: int, tol: float,
                history: int | None, damping: float, states: int, pair_residual: Callable, state_steps: Callable):
    """``(z, (steps, residual, residuals), captured)`` of jaxopt's ``method`` on the batch ``z0`` ``(B, ...)``.

    ``pair_residual(t, x)`` gives the ``(B,)`` residuals of ``t = T(x)`` in the caller's rule;
    ``state_steps(n)`` the ``(B, S)`` steps of the ``S = states`` intermediate states of an
    ``n``-step trajectory. ``steps`` and ``residual`` are ``(B,)`` (every pair takes the batch's
    steps), ``residuals`` ``(B, max_steps)`` (NaN after the last step), ``captured``
    ``(S, B, ...)`` in ``z0``'s dtype. Deterministic: a second run from ``z0`` repeats the iterates,
    which is how the states of a run that stopped early are taken.
    """
    jaxopt = _jaxopt()
    dtype = z0.dtype
    work = jnp.promote_types(dtype, jnp.asarray(0.0).dtype)
    batch = z0.shape[0]

    def evaluated(z):
        t = fn(z.astype(dtype)).astype(work)
        return t, pair_residual(t, z)

    if method == "jaxopt_anderson":
        solver = jaxopt.AndersonAcceleration(fixed_point_fun=evaluated, history_size=int(history), beta=damping,
                                             maxiter=max_steps, tol=tol, has_aux=True, implicit_diff=False, jit=True)
    else:
        def g(z):
            t, r = evaluated(z)
            return z - t, r

        solver = jaxopt.Broyden(fun=g, history_size=None if history is None else int(history), stepsize=damping, maxiter=max_steps, tol=tol,
                                has_aux=True, implicit_diff=False, jit=True)
    cap_shape = (states, batch) + (1,) * (z0.ndim - 1)

    def run(limit, points, captured, use_tol):
        def cond(carry):
            return carry[-1]

        def body(carry):
            k, z, state, r, residuals, captured, _ = carry
            z_new, state = solver.update(z, state)
            r_new = state.aux  # (B,): of the point T was evaluated at in this step
            finite = jnp.all(jnp.isfinite(r_new))
            z = jnp.where(finite, z_new, z)  # a blow-up keeps the last good z
            residuals = residuals.at[:, k].set(r_new)
            take = points == k + 1
            captured = jnp.where(take.T.reshape(cap_shape), z[None].astype(dtype), captured)
            active = (k + 1 < limit) & finite
            if use_tol:
                active = active & ~jnp.all(r_new < tol)
            return k + 1, z, state, r_new, residuals, captured, active

        start = z0.astype(work)
        carry = (jnp.int32(0), start, solver.init_state(start), jnp.full((batch,), jnp.inf, jnp.float32),
                 jnp.full((batch, max_steps), jnp.nan, jnp.float32), captured, limit > 0)
        return lax.while_loop(cond, body, carry)

    full_points = jnp.broadcast_to(state_steps(jnp.int32(max_steps)), (batch, states))
    captured = jnp.where((full_points == 0).T.reshape(cap_shape), z0[None], jnp.zeros((states,) + z0.shape, dtype))
    k, z, _, r, residuals, captured, _ = run(jnp.int32(max_steps), full_points, captured, True)
    if states:  # stopped early: the states of its k-step trajectory, from a second run (the same iterates)
        points = jnp.broadcast_to(state_steps(k), (batch, states))
        again = k < max_steps
        captured = jnp.where((again & (points == 0)).T.reshape(cap_shape), z0[None], captured)
        captured = run(jnp.where(again, points[0, -1], 0), points, captured, False)[-2]
    steps = jnp.full((batch,), k, jnp.int32)
    return z.astype(dtype), (steps, r, residuals), captured
