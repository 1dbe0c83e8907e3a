"""Fixed-point solvers for z = T(z) behind one small interface.

``solve(fn, z0, method=...)`` runs plain (damped) fixed-point iteration, Anderson
acceleration or limited-memory Broyden inside a ``lax.while_loop`` with *our* stopping
rule, records the residual of every step and, optionally, ``states`` iterates at equal
intervals of the steps actually taken (DEQReg's Eq. 9).

Anderson and Broyden are written here (tests check them against jaxopt, deprecated
upstream): Anderson as jaxopt's ``AndersonAcceleration`` with a relative Tikhonov term;
Broyden's good method on ``z - T(z)`` with the last ``history`` secant pairs in Byrd,
Nocedal & Schnabel's compact form, so its memory is bounded like Anderson's. (jaxopt's
Broyden keeps ``max_steps`` pairs by default; with fewer, its ring buffer drops the oldest
rank-one term of a product that was built on it, and it diverged on contractive linear
problems.) Their histories are updated in place: ``2 * history`` copies of ``z``.

``solve`` treats ``z`` as one problem: norms, mixing coefficients and the stop are those of
the whole array. :func:`solve_pairs` solves a batch of independent problems (image pairs)
one by one under ``jax.vmap``: each pair has its own coefficients, residuals and stop, and a
pair that has stopped is frozen while the others run, so a batch gives the fields of
separate calls. Everything jits; ``fn`` may close over traced arrays. Memory does not grow
with ``max_steps`` (apart from the ``(max_steps,)`` residual record).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg.deq.jaxopt_solvers import JAXOPT_SOLVERS, solve_batch

#: The project's solvers: each pair of a batch on its own.
OWN_SOLVERS = ("fixed_point", "anderson", "broyden")
#: Every ``method``: the project's, then jaxopt's (the batch as one system, :mod:`jaxreg.deq.jaxopt_solvers`).
SOLVERS = OWN_SOLVERS + JAXOPT_SOLVERS
#: The options of :func:`solve` a solver configuration may set (``states`` is per call).
OPTIONS = ("method", "max_steps", "tol", "stop", "history", "damping")
STOPS = ("relative", "absolute")
#: Memory (``history``) of each method when :func:`solve` gets ``history=None`` (configs set their own).
#: (``jaxopt_broyden``: jaxopt's own default, every step's pair: with fewer it can diverge, docs/deqreg.md.)
HISTORY = {"fixed_point": None, "anderson": 5, "broyden": 8, "jaxopt_anderson": 5, "jaxopt_broyden": None}
_EPS = 1e-8
_RIDGE = 1e-5  # Anderson's Tikhonov term, relative to the mean squared residual


class SolverInfo(NamedTuple):
    """What a solve did (all JAX arrays; :func:`solve_pairs` adds a leading batch axis).

    Attributes:
      steps: int32 scalar, iterations taken (``1 <= steps <= max_steps``).
      residual: float32 scalar, residual of the last step under the chosen ``stop`` rule.
      residuals: float32 ``(max_steps,)``, residual of every step, NaN after the last.
      converged: bool scalar, whether ``residual < tol`` was reached.
      state_steps: int32 ``(states,)``, the steps of the returned intermediate states
        (:func:`state_steps` of ``steps``; 0 is ``z0``).
    """

    steps: jax.Array
    residual: jax.Array
    residuals: jax.Array
    converged: jax.Array
    state_steps: jax.Array


def validate_options(*, method="anderson", max_steps=48, tol=1e-3, stop="relative",
                     history=None, damping=1.0, states=0):
    """Validates ``solve`` options; raises ``ValueError`` naming the bad one.

    Returns:
      ``states`` as a Python int.
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
    if method in ("anderson", "jaxopt_anderson") and history is not None and history < 2:
        raise ValueError(f"history must be >= 2 for method='anderson', got {history!r}")
    if not (_positive(damping) and float(damping) <= 1.0):
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    if not _is_int(states) or states < 0:
        raise ValueError(f"states must be an integer >= 0, got {states!r}")
    return int(states)


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


def state_steps(steps, num_states: int):
    """The steps of ``num_states`` (S) states at equal intervals of a ``steps``-step trajectory.

    ``t_k = floor(k * steps / (S + 1) + 1/2)`` for ``k = 1..S``: the S points that cut
    ``[0, steps]`` into S + 1 equal parts, rounded to the nearest step (halves up). The
    end points are excluded (step 0 is the start, step ``steps`` the returned fixed point);
    trajectories shorter than S + 1 steps repeat steps and may give step 0.
    ``state_steps(48, 3) == (12, 24, 36)``, ``state_steps(10, 3) == (3, 5, 8)``.

    Args:
      steps: steps taken, a Python int (gives a tuple) or an int array (gives an int32
        array with a trailing axis of length S).
      num_states: S >= 0.
    """
    k = np.arange(1, num_states + 1)
    if isinstance(steps, (int, np.integer)):
        return tuple(int(t) for t in (2 * k * int(steps) + num_states + 1) // (2 * (num_states + 1)))
    steps = jnp.asarray(steps, jnp.int32)[..., None]
    return ((2 * jnp.asarray(k, jnp.int32) * steps + num_states + 1) // (2 * (num_states + 1))).astype(jnp.int32)


def solve(fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, method: str = "anderson",
          max_steps: int = 48, tol: float = 1e-3, stop: str = "relative",
          history: int | None = None, damping: float = 1.0, states: int = 0):
    """Solves z = fn(z) from ``z0`` (one problem; see :func:`solve_pairs` for a batch).

    Stopping rule (ours, for every method): after each step, ``r = ||T(z) - z||`` with
    ``stop="absolute"``, or ``r = ||T(z) - z|| / (||T(z)|| + 1e-8)`` with
    ``stop="relative"``; stop once ``r < tol`` or after ``max_steps`` steps. For
    ``fixed_point`` and ``anderson`` the residual is that of the point T was evaluated at
    and the returned z is the step's update; for ``broyden`` it is that of the returned z.

    Intermediate states (``states`` = S > 0): the iterates after the steps
    :func:`state_steps` ``(n, S)`` of the n steps taken, i.e. at equal intervals of the
    real trajectory. They are captured during the solve when it runs all ``max_steps``;
    when it stops earlier, n is only known at the stop, so the solver is run again from
    ``z0`` (deterministically, the same iterates) up to the last of those steps: no
    memory beyond the S states, at most ``S/(S+1)·n`` more steps, none when the solve
    runs to ``max_steps``.

    Args:
      fn: ``T``, maps an array of ``z0``'s shape and dtype to the same.
      z0: initial guess, any shape, e.g. ``(*spatial, ndim)``; one problem.
      method: ``"fixed_point"`` (z <- damping*T(z) + (1-damping)*z), ``"anderson"``
        (memory ``history``, mixing ``beta=damping``; its first ``history`` steps are
        plain undamped iterations) or ``"broyden"`` (limited-memory Broyden's
        good method on ``g(z) = z - T(z)``, ours: the inverse Jacobian built from the
        identity with the last ``history`` steps' secant pairs, step ``damping``, no line
        search; its first step is a plain iteration).
      max_steps: most iterations (static).
      tol: stopping tolerance, > 0.
      stop: ``"relative"`` or ``"absolute"``.
      history: memory, each slot costs ``2 * z.size``. Anderson: >= 2; Broyden: >= 1, the
        last ``history`` secant pairs (a ring: a new pair replaces the oldest, no restart).
        ``None``: ``HISTORY[method]`` (Anderson 5, Broyden 8); a config's ``solver.history``
        (5 in ``configs/default.py``) is passed as given, for either method.
      damping: in (0, 1]; 1 is undamped.
      states: S >= 0 (static), intermediate states to return.

    Returns:
      ``(z, info, captured)``: ``z`` shaped like ``z0`` (same dtype); ``info`` a
      :class:`SolverInfo`; ``captured`` ``(S, *z0.shape)``, the iterates after steps
      ``info.state_steps``.

    Raises:
      ValueError: an option is invalid (the message names it).
    """
    z0 = jnp.asarray(z0)
    z, info, captured = solve_pairs(lambda z: fn(z[0])[None], z0[None], method=method, max_steps=max_steps, tol=tol,
                                    stop=stop, history=history, damping=damping, states=states)
    return z[0], jax.tree.map(lambda a: a[0], info), captured[:, 0]


def solve_pairs(fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, method: str = "anderson",
                max_steps: int = 48, tol: float = 1e-3, stop: str = "relative", history: int | None = None,
                damping: float = 1.0, states: int = 0):
    """Solves a batch of independent problems ``z_b = T(z)_b``, each on its own.

    ``fn`` is evaluated on the whole batch, and pair b of its output must depend on pair b
    of its input only (as an update network applied to a batch of image pairs does). The
    solver's algebra runs per pair: every pair has its own mixing coefficients, residual,
    stop and intermediate states, exactly as :func:`solve` on that pair alone. One loop runs
    until the last pair stops; the pairs that stopped are frozen (their outputs no longer
    change), so a batch gives the results of separate calls, on one device or sharded over
    many. Memory: as :func:`solve` per pair; the histories are updated in place (the k-th
    iteration is the k-th step of every active pair, so they share one slot index).

    Args:
      fn: ``T`` on batches, ``(B, ...)`` to ``(B, ...)``.
      z0: ``(B, ...)`` initial guesses.
      method, max_steps, tol, stop, history, damping, states: as in :func:`solve`, per pair.

    Returns:
      ``(z, info, captured)``: ``z`` ``(B, ...)``; ``info`` a :class:`SolverInfo` with a
      leading ``(B,)`` axis on every field; ``captured`` ``(S, B, ...)``.

    Raises:
      ValueError: an option is invalid (the message names it).
    """
    states = validate_options(method=method, max_steps=max_steps, tol=tol, stop=stop,
                              history=history, damping=damping, states=states)
    if history is None:
        history = HISTORY[method]
    z0 = jnp.asarray(z0)
    if method in JAXOPT_SOLVERS:  # the batch as one system (jaxreg.deq.jaxopt_solvers)
        def pair_residual(t, x):
            return jax.vmap(lambda t, x: _residual(_norm(t - x), _norm(t), stop))(t, x)

        z, (k, r, residuals), captured = solve_batch(
            fn, z0, method=method, max_steps=max_steps, tol=float(tol), history=history, damping=float(damping),
            states=states, pair_residual=pair_residual, state_steps=lambda n: state_steps(n, states))
        info = SolverInfo(steps=k, residual=r, residuals=residuals, converged=r < tol, state_steps=state_steps(k, states))
        return z, info, captured
    dtype = z0.dtype
    work = dtype  # carried dtype: Anderson and Broyden compute in (at least) the default float type
    if method != "fixed_point":
        work = jnp.promote_types(dtype, jnp.asarray(0.0).dtype)
    damping, tol = float(damping), float(tol)
    batch = z0.shape[0]

    def t_of(z):
        return fn(z.astype(dtype)).astype(work)

    # Per pair, vmapped: propose(z, state, k) -> the point T is evaluated at in step k (0-based);
    # accept(z, x, t, state, k) -> (z_new, state, residual) with t = T(x); init(z, t, zero) with
    # t = T(z) and ``zero`` a zero array like z, which orders the histories' allocation.
    if method == "fixed_point":
        needs_t0 = False

        def init(z, t, zero):
            return ()

        def propose(z, state, k):
            return z

        def accept(z, x, t, state, k):
            return damping * t + (1.0 - damping) * x, state, _residual(_norm(t - x), _norm(t), stop)
    elif method == "anderson":
        m, needs_t0 = int(history), False

        def init(z, t, zero):
            zeros = jnp.broadcast_to(zero, (m,) + z.shape)
            return _AndersonState(x=zeros, f=zeros, gram=jnp.zeros((m, m), work))

        def propose(z, state, k):
            return jnp.where(k >= m, _anderson_extrapolate(state, damping), z)

        def accept(z, x, t, state, k):
            res = t - x
            return t, _anderson_update(state, x, res, k % m), _residual(_norm(res), _norm(t), stop)
    else:
        m, needs_t0 = int(history), True

        def init(z, t, zero):
            zeros = jnp.broadcast_to(zero, (m,) + z.shape)
            return _BroydenState(g=z - t, s=zeros, y=zeros, ss=jnp.zeros((m, m), work), sy=jnp.zeros((m, m), work))

        def propose(z, state, k):
            return z - damping * _broyden_direction(state, k)

        def accept(z, x, t, state, k):
            g_new = x - t
            return x, _broyden_update(state, x - z, g_new, k % m), _residual(_norm(g_new), _norm(t), stop)

    propose_b = jax.vmap(propose, in_axes=(0, 0, None))
    accept_b = jax.vmap(accept, in_axes=(0, 0, 0, 0, None))
    pair_shape = (batch,) + (1,) * (z0.ndim - 1)  # a (B,) mask against (B, ...) fields
    cap_shape = (states, batch) + (1,) * (z0.ndim - 1)  # a (B, S) mask against (S, B, ...) states

    def run(start, limit, points, captured, use_tol, after):
        """Pair b takes up to ``limit[b]`` steps from ``start[b]`` (fewer if it converges with
        ``use_tol`` or blows up); its iterate after step ``points[b, i]`` goes to ``captured[i, b]``.
        The histories are allocated after ``after`` (an array like ``start``) is computed."""
        def cond(carry):
            return jnp.any(carry[-1])

        def body(carry):
            k, steps, z, state, r, residuals, captured, active = carry
            x = propose_b(z, state, k)
            z_new, state, r_new = accept_b(z, x, t_of(x), state, k)
            finite = jnp.isfinite(r_new)
            z = jnp.where((active & finite).reshape(pair_shape), z_new, z)  # a blow-up keeps the last good z
            r = jnp.where(active, r_new, r)
            steps = jnp.where(active, k + 1, steps)  # an active pair has taken k steps before this one
            residuals = residuals.at[:, k].set(jnp.where(active, r_new, residuals[:, k]))
            take = active[:, None] & (points == k + 1)
            captured = jnp.where(take.T.reshape(cap_shape), z[None].astype(dtype), captured)
            active = active & (k + 1 < limit) & finite
            if use_tol:
                active = active & ~(r_new < tol)
            return k + 1, steps, z, state, r, residuals, captured, active

        start = start.astype(work)
        state = jax.vmap(init)(start, t_of(start) if needs_t0 else start, 0 * after.astype(work))
        carry = (jnp.int32(0), jnp.zeros((batch,), jnp.int32), start, state,
                 jnp.full((batch,), jnp.inf, jnp.float32), jnp.full((batch, max_steps), jnp.nan, jnp.float32),
                 captured, limit > 0)
        return lax.while_loop(cond, body, carry)

    full_points = jnp.broadcast_to(jnp.asarray(state_steps(max_steps, states), jnp.int32), (batch, states))
    captured = jnp.where((full_points == 0).T.reshape(cap_shape), z0[None], jnp.zeros((states,) + z0.shape, dtype))
    _, k, z, _, r, residuals, captured, _ = run(z0, jnp.full((batch,), max_steps, jnp.int32), full_points,
                                                captured, True, z0)
    points = full_points
    if states:
        # A pair that stopped early: the states of its n-step trajectory, by a second run from
        # z0 (the same iterates). Its histories are zeros made from the first run's result, so
        # XLA allocates them after the first run (sharing its memory) instead of merging them
        # with the first run's initial zeros and keeping those alive through it.
        points = state_steps(k, states)
        again = k < max_steps
        captured = jnp.where((again[:, None] & (points == 0)).T.reshape(cap_shape), z0[None], captured)
        captured = run(z0, jnp.where(again, points[:, -1], 0), points, captured, False, z)[-2]
    info = SolverInfo(steps=k, residual=r, residuals=residuals, converged=r < tol, state_steps=points)
    return z.astype(dtype), info, captured


class _AndersonState(NamedTuple):
    """Anderson acceleration's memory: the last ``m`` points ``x`` and residuals ``f = T(x) - x``
    in a ring (step k writes slot ``k % m``), and the residuals' Gram matrix."""

    x: jax.Array
    f: jax.Array
    gram: jax.Array


def _anderson_extrapolate(state: _AndersonState, beta: float) -> jax.Array:
    """``Σ α_i (x_i + β f_i)`` with ``α`` minimising ``‖Σ α_i f_i‖²`` subject to ``Σ α_i = 1``.

    As jaxopt's ``AndersonAcceleration`` (the bordered system with a Tikhonov term), but
    with the term relative to the residuals' scale: 1e-5 · mean diagonal of the Gram matrix
    (an absolute one swamps the Gram matrix near convergence and Anderson decays to averaging).
    """
    m = state.gram.shape[0]
    gram = state.gram
    ridge = _RIDGE * jnp.trace(gram) / m + jnp.finfo(gram.dtype).tiny
    bordered = jnp.block([[jnp.zeros((1, 1), gram.dtype), jnp.ones((1, m), gram.dtype)],
                          [jnp.ones((m, 1), gram.dtype), gram + ridge * jnp.eye(m, dtype=gram.dtype)]])
    alpha = jnp.linalg.solve(bordered, jnp.zeros(m + 1, gram.dtype).at[0].set(1))[1:]
    return jnp.tensordot(alpha, state.x, 1) + beta * jnp.tensordot(alpha, state.f, 1)


def _anderson_update(state: _AndersonState, x: jax.Array, res: jax.Array, p) -> _AndersonState:
    """Stores ``(x, T(x) - x)`` in slot ``p``, the oldest (in place, as :func:`_broyden_update`)."""
    row = _dots(state.f, res).at[p].set(jnp.vdot(res, res))  # f_i·res, the old slot p replaced
    after = 0 * row[0]
    return _AndersonState(x=lax.dynamic_update_index_in_dim(state.x, x + after, p, 0),
                          f=lax.dynamic_update_index_in_dim(state.f, res + after, p, 0),
                          gram=state.gram.at[p, :].set(row).at[:, p].set(row))


class _BroydenState(NamedTuple):
    """Limited-memory Broyden: ``g = z - T(z)`` at the current z and the last ``m`` secant pairs.

    ``s[i] = Δz``, ``y[i] = Δg`` in a ring (step k writes slot ``k % m``), with their Gram
    matrices ``ss = SᵀS``, ``sy = SᵀY`` (``sy[i, j] = s_i·y_j``).
    """

    g: jax.Array
    s: jax.Array
    y: jax.Array
    ss: jax.Array
    sy: jax.Array


def _broyden_direction(state: _BroydenState, count) -> jax.Array:
    """``H g`` with ``H`` the inverse Jacobian of ``g`` that Broyden's good method builds from
    ``H₀ = I`` with the stored pairs, oldest first (Byrd, Nocedal & Schnabel 1994, compact form):
    ``H = I + (S − Y) M⁻¹ Sᵀ``, ``M = SᵀY − strictly_lower(SᵀS)``. Dropping the oldest pair
    gives the matrix of the remaining pairs, so a bounded memory stays consistent; a singular
    ``M`` falls back to the plain step ``g``. ``count``: pairs stored so far."""
    m = state.ss.shape[0]
    idx = jnp.arange(m)
    used = jnp.minimum(count, m)
    order = jnp.where(count >= m, (count + idx) % m, idx)  # slots, oldest first
    valid = idx < used
    ss, sy = state.ss[order][:, order], state.sy[order][:, order]
    mat = sy - jnp.tril(ss, -1)
    mat = jnp.where(valid[:, None] & valid[None, :], mat, jnp.eye(m, dtype=mat.dtype))
    rhs = jnp.where(valid, _dots(state.s, state.g)[order], 0)
    w = jnp.linalg.solve(mat, rhs)
    w = jnp.zeros_like(w).at[order].set(jnp.where(valid, w, 0))  # back to slot order
    step = state.g + jnp.tensordot(w, state.s, 1) - jnp.tensordot(w, state.y, 1)
    return jnp.where(jnp.all(jnp.isfinite(w)), step, state.g)


def _dots(history: jax.Array, v: jax.Array) -> jax.Array:
    """``(m,)``: the dot product of each slot of ``history`` ``(m, *v.shape)`` with ``v``."""
    return jnp.tensordot(history, v, v.ndim)


def _broyden_update(state: _BroydenState, s: jax.Array, g_new: jax.Array, p) -> _BroydenState:
    """Stores the pair ``(Δz, Δg)`` of the last step in slot ``p``, the oldest (the Gram matrices
    from dot products with the old slots, so the histories are read once and then updated in place)."""
    y = g_new - state.g
    s_dot_y = jnp.vdot(s, y)
    ss_row = _dots(state.s, s).at[p].set(jnp.vdot(s, s))  # s_i·s
    sy_row = _dots(state.y, s).at[p].set(s_dot_y)  # s·y_j
    sy_col = _dots(state.s, y).at[p].set(s_dot_y)  # s_i·y
    ss = state.ss.at[p, :].set(ss_row).at[:, p].set(ss_row)
    sy = state.sy.at[p, :].set(sy_row).at[:, p].set(sy_col)
    # In place, one slot: the writes depend on the dot products (0·x, which XLA keeps), so
    # every read of the old histories comes first, and dynamic_update_slice (not .at[p].set,
    # whose bounds check is a select over the whole history). Without these, XLA keeps two
    # more copies of each history (measured: 38 vs 22 field copies for 8 pairs).
    after = 0 * (ss_row[0] + sy_row[0] + sy_col[0])
    return _BroydenState(g=g_new, s=lax.dynamic_update_index_in_dim(state.s, s + after, p, 0),
                         y=lax.dynamic_update_index_in_dim(state.y, y + after, p, 0), ss=ss, sy=sy)


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
