"""DEQReg: registration as the fixed point of a weight-tied update network.

The update network ``f_θ`` (the VoxelMorph U-Net) sees ``[I_f, I_m∘φ, φ]`` and predicts a
residual; registration is the equilibrium ``φ* = T(φ*)`` with ``T(φ) = φ + f_θ(I_f, I_m∘φ, φ)``,
found by a root solver (``jaxreg.deq.solvers``). Training differentiates the equilibrium
implicitly (``jaxreg.deq.implicit``): the phantom gradient of the paper (Eq. 7–8) or the
exact implicit-function gradient, so memory does not depend on the number of solver steps.
The intermediate-state correction (Eq. 9) adds the loss of ``S`` states taken at equal
intervals of the steps the forward solver took (:func:`jaxreg.deq.solvers.state_steps`),
each with its own phantom gradient, weighted ``γ``.

Pairs of a batch are independent: the solver runs per pair (its own coefficients, residual
and stop; :func:`jaxreg.deq.solvers.solve_pairs`), and every loss is a mean of per-pair
losses, so a batch of B pairs gives the fields, losses and gradients of B separate calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreg import _random, spatial
from jaxreg.deq import implicit, solvers
from jaxreg.deq.implicit import BACKWARDS
from jaxreg.deq.solvers import state_steps
from jaxreg.models.conv import Conv
from jaxreg.models.unet import DECODER, ENCODER, UNet, activation_dtype
from jaxreg.models.voxelmorph import SIMILARITIES, registration_loss

__all__ = ["BACKWARDS", "SOLVER_OPTIONS", "DEQReg", "UpdateNet", "state_steps"]

#: Options of :func:`jaxreg.deq.solvers.solve` a config's ``solver`` section may set.
SOLVER_OPTIONS = solvers.OPTIONS


class UpdateNet(nn.Module):
    """``f_θ(I_f, I_m∘φ, φ)``: the residual update of DEQReg (and of the unrolled baselines).

    Attributes:
      encoder, decoder: U-Net widths (VoxelMorph's).
      extra: channels of additional inputs appended after ``φ`` (e.g. a similarity gradient,
        a hidden state); 0 for DEQReg.
      outputs: output channels beyond the ``ndim`` of the residual (e.g. a new hidden state).
      dtype: activation dtype of the network (``"float32"`` or ``"bfloat16"``, see
        :func:`jaxreg.models.unet.activation_dtype`); the parameters and the output are float32,
        so the solver state, fields and losses stay float32.

    Call with ``fixed``, ``warped`` ``(B, *S, 1)``, ``ddf`` ``(B, *S, ndim)`` and optional
    ``extra`` ``(B, *S, extra)``; returns ``(B, *S, ndim + outputs)``, the residual first.
    The last convolution starts near zero, so ``T`` starts close to the identity.
    """

    encoder: Sequence[int] = ENCODER
    decoder: Sequence[int] = DECODER
    outputs: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, fixed, warped, ddf, extra=None):
        ndim = ddf.shape[-1]
        dtype = activation_dtype(self.dtype)
        inputs = [fixed, warped, ddf] + ([] if extra is None else [extra])
        features = UNet(self.encoder, self.decoder, dtype=dtype, name="unet")(jnp.concatenate(inputs, axis=-1))
        init = _random.normal_initializer(1e-5)  # flax's normal(1e-5), drawn flat (compiles faster)
        update = Conv(ndim + self.outputs, (3,) * ndim, padding="SAME", kernel_init=init, dtype=dtype, name="update")
        return update(features).astype(ddf.dtype)


def warp_batch(moving: jax.Array, ddf: jax.Array) -> jax.Array:
    """``moving∘φ`` for a batch: ``(B, *S, C)`` images, ``(B, *S, ndim)`` fields."""
    return jax.vmap(spatial.warp)(moving, ddf)


def _solver_section(options: Mapping | None, name: str, more: str = "") -> dict:
    """``options`` as a dict of :data:`SOLVER_OPTIONS`; a ValueError names any other key."""
    options = dict(options or {})
    unknown = set(options) - set(SOLVER_OPTIONS)
    if unknown:
        raise ValueError(f"unknown `{name}` option(s) {sorted(unknown)}; known: {SOLVER_OPTIONS}{more}.")
    return options


class DEQReg:
    """DEQReg with its solver and gradient options (a plain object; parameters are explicit).

    Args:
      encoder, decoder: U-Net widths of the update network.
      solver: options of :func:`jaxreg.deq.solvers.solve` for the forward pass
        (``method``, ``max_steps`` = T, ``tol``, ``stop``, ``history``, ``damping``).
      backward: ``"phantom"`` (paper, Eq. 7–8) or ``"ift"`` (exact implicit gradient).
      phantom_steps, phantom_damping: K and τ of the phantom gradient.
      correction_states, correction_weight: S and γ of the intermediate-state correction.
      sequential_states: differentiate the phantom passes of φ* and the S states one at a
        time (memory of one pass; slow on CPUs) or all at once (see ``_phantom_losses``).
      phantom_remat: rematerialise each phantom step in the backward pass: activation
        memory of one update-network pass instead of K, for K more forward passes.
      jacobian_weight: weight of the Jacobian regulariser ``‖∂T/∂φ‖_F²/d`` at φ* (Hutchinson,
        one probe; Bai et al. 2021), which keeps T contractive so that more inference steps
        do not drift; 0 (the paper) turns it off.
      similarity, window, weight: the loss: LNCC (window 5 in the paper) + λ·diffusion.
      dtype: activation dtype of the update network, ``"float32"`` or ``"bfloat16"`` (mixed
        precision: parameters, solver state, fields and losses stay float32).
      adjoint: options of the ``"ift"`` adjoint solve (``tol``, ``max_steps``, ...; unset ones are
        ``solver``'s). Its steps, residual and convergence are training metrics, and a pair whose
        adjoint does not converge takes the Jacobian-free gradient (``adjoint_fallbacks``).
    """

    def __init__(self, *, encoder=ENCODER, decoder=DECODER, dtype: str = "float32", solver: Mapping | None = None,
                 backward: str = "phantom", phantom_steps: int = 5, phantom_damping: float = 0.8,
                 correction_states: int = 3, correction_weight: float = 0.5, sequential_states: bool = True,
                 phantom_remat: bool = False, jacobian_weight: float = 0.0, similarity: str = "lncc", window: int = 5,
                 weight: float = 0.1, adjoint: Mapping | None = None):
        self.solver = _solver_section(solver, "solver", " (and backward, phantom_steps, phantom_damping, phantom_remat)")
        self.solver.setdefault("max_steps", 48)
        if backward not in BACKWARDS:
            raise ValueError(f"`solver.backward` must be one of {BACKWARDS}; got {backward!r}.")
        if similarity not in SIMILARITIES:
            raise ValueError(f"`loss.similarity` must be one of {SIMILARITIES}; got {similarity!r}.")
        if correction_weight < 0:
            raise ValueError(f"`model.correction_weight` (γ) must be >= 0; got {correction_weight}.")
        if not jacobian_weight >= 0:
            raise ValueError(f"`model.jacobian_weight` must be >= 0; got {jacobian_weight}.")
        solvers.validate_options(**self.solver)
        if not 0 <= correction_states <= self.solver["max_steps"]:
            raise ValueError(f"`model.correction_states` (S) must be in 0..solver.max_steps={self.solver['max_steps']}; "
                             f"got {correction_states}.")
        self.states = int(correction_states)
        activation_dtype(dtype)  # a ValueError now, not at the first trace
        self.net = UpdateNet(tuple(encoder), tuple(decoder), dtype=str(dtype))
        self.backward, self.phantom_steps, self.phantom_damping = backward, int(phantom_steps), float(phantom_damping)
        self.correction_weight, self.sequential_states = float(correction_weight), bool(sequential_states)
        self.phantom_remat, self.jacobian_weight = bool(phantom_remat), float(jacobian_weight)
        self.loss_options = {"similarity": similarity, "window": int(window), "weight": float(weight)}
        implicit.check_phantom(self.phantom_steps, self.phantom_damping)
        self.adjoint = _solver_section(adjoint, "adjoint")
        # The "ift" path: the equilibrium's loss with its exact gradient and a reported adjoint.
        self.ift_loss = implicit.equilibrium_loss(self.update, self._pair_losses, solver=self.solver,
                                                  adjoint=self.adjoint, batched=True,
                                                  states=self.states if self.correction_weight > 0 else 0)

    # T(φ) = φ + f_θ(I_f, I_m∘φ, φ); x = (fixed, moving) as (B, *S, 1) images.
    def update(self, params, x, ddf):
        fixed, moving = x
        return ddf + self.net.apply(params, fixed, warp_batch(moving, ddf), ddf)

    def init(self, key, batch):
        fixed = jnp.asarray(batch["fixed"])[..., None]
        return self.net.init(key, fixed, fixed, self._start(fixed))

    def _start(self, fixed):
        return jnp.zeros((*fixed.shape[:-1], fixed.ndim - 2), fixed.dtype)

    def solve(self, params, fixed, moving, *, states: int = 0, **overrides):
        """Forward solve, pair by pair, without gradients: ``(ddf, info, captured)`` for ``(B, *S)`` images.

        ``states``: how many intermediate states to return (``captured`` ``(states, B, *S, ndim)``,
        at equal intervals of each pair's steps, ``info.state_steps``); ``info`` has a ``(B,)``
        axis; ``overrides`` replace solver options (e.g. ``max_steps=96``, ``tol=1e-6``).
        """
        x = (jnp.asarray(fixed)[..., None], jnp.asarray(moving)[..., None])
        options = dict(self.solver, **overrides)
        return solvers.solve_pairs(lambda z: self.update(params, x, z), self._start(x[0]), states=states, **options)

    def predict(self, params, fixed, moving, *, steps: int | None = None, **overrides):
        """The equilibrium ``ddf`` ``(B, *S, ndim)`` (voxels, pull) for ``(B, *S)`` images, each pair solved on its own.

        ``steps`` runs the solver for exactly that many steps (``max_steps=steps`` and no
        early stop), as the convergence study does; ``overrides`` replace other solver
        options (e.g. ``tol``).
        """
        if steps is not None:
            overrides = dict(overrides, max_steps=int(steps), tol=overrides.get("tol", 1e-12))
        return self.solve(params, fixed, moving, **overrides)[0]

    def trajectory(self, params, fixed, moving, *, steps: int):
        """``(steps + 1, B, *S, ndim)``: φ₀ = 0 and the first ``steps`` plain iterates of T."""
        x = (jnp.asarray(fixed)[..., None], jnp.asarray(moving)[..., None])

        def body(z, _):
            z = self.update(params, x, z)
            return z, z

        start = self._start(x[0])
        return jnp.concatenate([start[None], jax.lax.scan(body, start, None, length=steps)[1]])

    def _pair_losses(self, x, ddf):
        fixed, moving = x
        per_pair = jax.vmap(lambda f, m, u: registration_loss(f, m, u, **self.loss_options))(fixed, moving, ddf)
        return jax.tree.map(jnp.mean, per_pair)

    def _phantom_losses(self, params, x, states):
        """Losses after K phantom steps from each of ``states`` ``(n, B, *S, ndim)``: ``((n,), parts)``.

        With ``sequential_states`` (default), a rolled scan over rematerialised bodies: the
        backward pass recomputes one state's K steps at a time, so n states cost the
        activation memory of one phantom pass. Without, all passes are differentiated at
        once: memory of n·K steps, but on a CPU ~20× faster (XLA's CPU backward of a rolled
        loop over convolutions is slow: 32 s vs 0.9 s per step at 4×64²).
        """

        def one(state):
            z = implicit.phantom_steps(self.update, params, x, state, steps=self.phantom_steps,
                                       damping=self.phantom_damping, remat=self.phantom_remat)
            return self._pair_losses(x, z)

        states = jax.lax.stop_gradient(states)
        if not self.sequential_states:  # all at once: faster on a CPU, (S + 1)·K steps of memory
            return jax.tree.map(lambda *v: jnp.stack(v), *[one(state) for state in states])
        return jax.lax.scan(lambda carry, state: (carry, jax.checkpoint(one)(state)), None, states)[1]

    def loss_fn(self, params, batch, key):
        """Equilibrium loss + γ·Σ loss of the S corrected states (+ the Jacobian regulariser).

        Every term is the mean over pairs of per-pair losses. Metrics include the solver's
        steps (mean over pairs), residual (largest) and convergence (fraction of pairs), with
        ``"ift"`` the adjoint's too (``adjoint_steps``, ``adjoint_residual``,
        ``adjoint_converged``, ``adjoint_fallbacks``: pairs that took the Jacobian-free gradient),
        with ``"phantom"`` ``loss_at_equilibrium`` (the loss of φ*, which ``predict`` returns,
        beside the trained loss of z_K), and ``jacobian`` (``‖∂T/∂φ‖_F²/d`` at φ*) when it is
        regularised.
        """
        x = (jnp.asarray(batch["fixed"])[..., None], jnp.asarray(batch["moving"])[..., None])
        start = self._start(x[0])
        corrections = self.states > 0 and self.correction_weight > 0
        adjoint = None
        if self.backward == "ift":  # one forward solve: the states come with it
            loss, (equilibrium, info, adjoint, fallbacks, captured, parts) = self.ift_loss(params, x, start)
            if corrections:
                correction = jnp.sum(self._phantom_losses(params, x, captured)[0])
        else:
            frozen = jax.lax.stop_gradient(params)
            equilibrium, info, captured = solvers.solve_pairs(lambda z: self.update(frozen, x, z), start,
                                                              states=self.states if corrections else 0, **self.solver)
            states = jnp.concatenate([equilibrium[None], captured]) if corrections else equilibrium[None]
            losses, per_state = self._phantom_losses(params, x, states)
            loss, parts = losses[0], {k: v[0] for k, v in per_state.items()}
            correction = jnp.sum(losses[1:])
            # The loss trained is that of z_K (K phantom steps from φ*); predict returns φ* itself.
            parts["loss_at_equilibrium"] = self._pair_losses(x, jax.lax.stop_gradient(equilibrium))[0]
        metrics = dict(parts, solver_steps=jnp.mean(info.steps.astype(jnp.float32)),
                       solver_residual=jnp.max(info.residual),
                       solver_converged=jnp.mean(info.converged.astype(jnp.float32)))
        if adjoint is not None:
            metrics.update(adjoint_steps=jnp.mean(adjoint.steps.astype(jnp.float32)),
                           adjoint_residual=jnp.max(adjoint.residual),
                           adjoint_converged=jnp.mean(adjoint.converged.astype(jnp.float32)),
                           adjoint_fallbacks=fallbacks)
        if corrections:
            loss = loss + self.correction_weight * correction
            metrics["correction"] = correction
        if self.jacobian_weight > 0:
            jacobian = implicit.jacobian_penalty(self.update, params, x, jax.lax.stop_gradient(equilibrium), key)
            loss = loss + self.jacobian_weight * jacobian
            metrics["jacobian"] = jacobian
        return loss, metrics
