"""Fixed-point solvers for z = T(z) behind one small interface.

``solve(fn, z0, method=...)`` runs plain (damped) fixed-point iteration, Anderson
acceleration or limited-memory Broyden inside one ``lax.while_loop`` with *our* stopping
rule, records the residual of every step and, optionally, the iterate after chosen steps.
Anderson and Broyden are jaxopt's (deprecated upstream, kept behind this interface so they
can be replaced); we drive their ``init_state``/``update`` ourselves. Broyden finds the root
of ``z - T(z)`` (the opposite sign diverges silently, DESIGN.md §5).

``z`` is one array of any shape — a ``(D, H, W, 3)`` field, or a ``(B, ...)`` batch — and
norms treat it as one flat vector (for a batch, the stop is decided for the batch as a
whole). Everything jits; ``fn`` may close over traced arrays.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

with warnings.catch_warnings():  # jaxopt warns on import that it is unmaintained
    warnings.simplefilter("ignore", DeprecationWarning)
    import jaxopt

SOLVERS = ("fixed_point", "anderson", "broyden")
#: The options of :func:`solve` a solver configuration may set (``capture`` is per call).
OPTIONS = ("method", "max_steps", "tol", "stop", "history", "damping")
STOPS = ("relative", "absolute")
_EPS = 1e-8
_RIDGE = 1e-5  # Anderson's Tikhonov term, relative to the mean squared residual


class SolverInfo(NamedTuple):
    """What a solve did (all JAX arrays; batch them with ``vmap`` if you like).

    Attributes:
      steps: int32 scalar, iterations taken (``1 <= steps <= max_steps``).
      residual: float32 scalar, residual of the last step under the chosen ``stop`` rule.
      residuals: float32 ``(max_steps,)``, residual of every step, NaN after the last.
      converged: bool scalar, whether ``residual < tol`` was reached.
    """

    steps: jax.Array
    residual: jax.Array
    residuals: jax.Array
    converged: jax.Array


def validate_options(*, method="anderson", max_steps=48, tol=1e-3, stop="relative",
                     history=None, damping=1.0, capture=()):
    """Validates ``solve`` options; raises ``ValueError`` naming the bad one.

    Returns:
      ``capture`` as a tuple of Python ints.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    if not _is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not _positive(tol):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if history is not None and (not _is_int(history) or history < 1):
        raise ValueError(f"history must be an integer >= 1, got {history!r}")
    if method == "anderson" and history is not None and history < 2:
        raise ValueError(f"history must be >= 2 for method='anderson', got {history!r}")
    if not (_positive(damping) and float(damping) <= 1.0):
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    try:
        capture = tuple(capture)
    except TypeError:
        raise ValueError(f"capture must be a tuple of step indices, got {capture!r}") from None
    for c in capture:
        if not _is_int(c) or not 1 <= c <= max_steps:
            raise ValueError(f"capture indices must be integers in 1..max_steps={max_steps}, "
                             f"got {capture!r}")
    return tuple(int(c) for c in capture)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive(v) -> bool:
    try:
        return float(v) > 0
    except (TypeError, ValueError):
        return False


def _norm(a: jax.Array) -> jax.Array:
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    return jnp.sqrt(jnp.sum(a * a))


def _residual(diff_norm: jax.Array, t_norm: jax.Array, stop: str) -> jax.Array:
    """``||T(z) - z||`` (absolute) or ``||T(z) - z|| / (||T(z)|| + eps)``, float32 scalar.

    An overflowing ``||T(z)||`` gives NaN (a blow-up), never a small relative residual.
    """
    if stop == "relative":
        diff_norm = jnp.where(jnp.isfinite(t_norm), diff_norm / (t_norm + _EPS), jnp.nan)
    return diff_norm.astype(jnp.float32)


def solve(fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, method: str = "anderson",
          max_steps: int = 48, tol: float = 1e-3, stop: str = "relative",
          history: int | None = None,
          damping: float = 1.0, capture: Sequence[int] = ()):
    """Solves z = fn(z) from ``z0``.

    Stopping rule (ours, for every method): after each step, ``r = ||T(z) - z||`` with
    ``stop="absolute"``, or ``r = ||T(z) - z|| / (||T(z)|| + 1e-8)`` with
    ``stop="relative"``; stop once ``r < tol`` or after ``max_steps`` steps. For
    ``fixed_point`` and ``anderson`` the residual is that of the point T was evaluated at
    and the returned z is the step's update; for ``broyden`` it is that of the returned z.

    Args:
      fn: ``T``, maps an array of ``z0``'s shape and dtype to the same.
      z0: initial guess, any shape, e.g. ``(*spatial, ndim)`` or ``(B, *spatial, ndim)``.
      method: ``"fixed_point"`` (z <- damping*T(z) + (1-damping)*z), ``"anderson"``
        (jaxopt, memory ``history``, mixing ``beta=damping``; its first ``history``
        steps are plain undamped iterations) or ``"broyden"`` (jaxopt
        Broyden's good method on ``z - T(z)``, memory ``history``, step ``damping``, no
        line search).
      max_steps: most iterations (static).
      tol: stopping tolerance, > 0.
      stop: ``"relative"`` or ``"absolute"``.
      history: memory, each slot costs ``2 * z.size``. Anderson: >= 2, default 5.
        Broyden: >= 1, default ``max_steps`` (full memory, i.e. exact Broyden); a
        shorter memory drops the oldest updates and can stagnate or diverge.
      damping: in (0, 1]; 1 is undamped.
      capture: static 1-based step indices; the iterate after each is returned.

    Returns:
      ``(z, info, captured)``: ``z`` shaped like ``z0`` (same dtype); ``info`` a
      :class:`SolverInfo`; ``captured`` ``(len(capture), *z0.shape)``, the iterate after
      each requested step (the final z for steps past the stop).

    Raises:
      ValueError: an option is invalid (the message names it).
    """
    capture = validate_options(method=method, max_steps=max_steps, tol=tol, stop=stop,
                            history=history, damping=damping, capture=capture)
    if history is None:
        history = 5 if method == "anderson" else max_steps
    z0 = jnp.asarray(z0)
    dtype = z0.dtype
    work = dtype  # carried dtype; jaxopt's solvers compute in the default float type
    if method != "fixed_point":
        work = jnp.promote_types(dtype, jnp.asarray(0.0).dtype)
    damping, tol = float(damping), float(tol)
    cap = jnp.asarray(capture, jnp.int32).reshape(len(capture))
    cap_shape = (len(capture),) + (1,) * z0.ndim

    def as_z(a):
        return a.astype(work)

    if method == "fixed_point":
        def init(z):
            return ()

        def step(z, state):
            tz = as_z(fn(z))
            r = _residual(_norm(tz - z), _norm(tz), stop)
            return as_z(damping * tz + (1.0 - damping) * z), state, r
    elif method == "anderson":
        aa = jaxopt.AndersonAcceleration(fixed_point_fun=lambda z: as_z(fn(z.astype(dtype))),
                                         history_size=int(history), beta=damping,
                                         maxiter=max_steps, tol=tol, jit=False)

        def init(z):
            return aa.init_state(z)

        def step(z, state):
            # jaxopt's ridge is absolute; make it relative to the residuals' scale, or
            # it swamps the Gram matrix near convergence and Anderson decays to averaging.
            gram = state.residual_gram
            ridge = _RIDGE * jnp.trace(gram) / gram.shape[0] + jnp.finfo(gram.dtype).tiny
            pos = state.iter_num % aa.history_size
            z_new, state = dataclasses.replace(aa, ridge=ridge).update(z, state)
            z_new = as_z(z_new)  # = T(x), x the extrapolated point; res = T(x) - x
            res = state.residuals_history[pos]
            return z_new, state, _residual(_norm(res), _norm(z_new), stop)
    else:
        br = jaxopt.Broyden(fun=lambda z: z - as_z(fn(z.astype(dtype))), history_size=int(history),
                            stepsize=damping, maxiter=max_steps, tol=tol, jit=False)

        def init(z):
            return br.init_state(z)

        def step(z, state):
            z_new, state = br.update(z, state)
            res = as_z(state.value)  # = z_new - T(z_new)
            return as_z(z_new), state, _residual(_norm(res), _norm(z_new - res), stop)

    def cond(carry):
        k, _, _, r, _, _ = carry
        return (k < max_steps) & ~(r < tol) & ((k == 0) | jnp.isfinite(r))

    def body(carry):
        k, z, state, _, residuals, captured = carry
        z_new, state, r = step(z, state)
        z = jnp.where(jnp.isfinite(r), z_new, z)  # a blow-up stops with the last good z
        k = k + 1
        residuals = residuals.at[k - 1].set(r)
        captured = jnp.where((cap == k).reshape(cap_shape), z[None].astype(dtype), captured)
        return k, z, state, r, residuals, captured

    carry = (jnp.int32(0), as_z(z0), init(as_z(z0)), jnp.float32(jnp.inf),
             jnp.full((max_steps,), jnp.nan, jnp.float32),
             jnp.zeros((len(capture),) + z0.shape, dtype))
    k, z, _, r, residuals, captured = lax.while_loop(cond, body, carry)
    z = z.astype(dtype)
    captured = jnp.where((cap > k).reshape(cap_shape), z[None], captured)
    info = SolverInfo(steps=k, residual=r, residuals=residuals, converged=r < tol)
    return z, info, captured


def describe(info: SolverInfo) -> str:
    """One-line, host-side summary of a :class:`SolverInfo` for logs.

    Works for a single solve or a batch of them (``vmap``-ed info): a batch reports the
    worst case (most steps, largest residual, how many did not converge).
    """
    steps = np.asarray(info.steps)
    residual = np.asarray(info.residual, np.float64)
    converged = np.asarray(info.converged)
    max_steps = np.shape(info.residuals)[-1]
    if steps.ndim == 0:
        state = "converged" if converged else "NOT converged"
        return f"{state} after {int(steps)}/{max_steps} steps, residual {float(residual):.3g}"
    failed = int(np.sum(~converged))
    state = "all converged" if failed == 0 else f"{failed}/{converged.size} NOT converged"
    return (f"{state}; steps <= {int(steps.max())}/{max_steps}, "
            f"residual <= {float(np.nanmax(residual)):.3g}")
