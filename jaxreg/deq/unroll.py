"""Unrolled baselines of the convergence and memory studies, trained through time (BPTT).

All run ``T`` weight-tied steps of the update network of DEQReg
(:class:`jaxreg.deq.model.UpdateNet`) from φ₀ = 0 and are differentiated through every
step (``lax.scan``), so their training memory grows with ``T``:

* ``"vanilla"``: φ_{t+1} = φ_t + f_θ(I_f, I_m∘φ_t, φ_t); loss on φ_T.
* ``"riir"`` (RIIR-like): a recurrent hidden state ``h`` and the similarity gradient
  ∇_φ L_sim as extra inputs, [Δφ, h] = f_θ(I_f, I_m∘φ_t, φ_t, ∇_φ L_sim, h_t);
  loss Σ_t w_t L(φ_t) / Σ_t w_t with w_t = 10^((t−1)/(T−1)).
* ``"gradirn"`` (GraDIRN-like): an explicit similarity-gradient step added to the network
  update, φ_{t+1} = φ_t − α·ĝ_t + f_θ(I_f, I_m∘φ_t, φ_t), with ĝ_t the gradient normalised
  to unit RMS per pair and a learned step size α (starting at 0); loss on φ_T.

The similarity gradient enters as data (``stop_gradient``): no second derivatives, as
when it is computed by a separate autograd call. Inference can run any number of steps
(``steps=``), which is what the convergence study varies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg import losses
from jaxreg.deq.model import UpdateNet, warp_batch
from jaxreg.models.unet import DECODER, ENCODER
from jaxreg.models.voxelmorph import SIMILARITIES, registration_loss

__all__ = ["VARIANTS", "Unrolled", "step_weights"]

VARIANTS = ("vanilla", "riir", "gradirn")


def step_weights(steps: int) -> jax.Array:
    """RIIR's loss weights w_t = 10^((t−1)/(T−1)), t = 1..T (all 1 for T = 1)."""
    t = jnp.arange(1, steps + 1, dtype=jnp.float32)
    return 10.0 ** ((t - 1) / max(steps - 1, 1))


class Unrolled:
    """An unrolled registration network (a plain object; parameters are explicit).

    Args:
      variant: ``"vanilla"``, ``"riir"`` or ``"gradirn"``.
      steps: T, the steps trained through (and the default at inference).
      encoder, decoder: U-Net widths of the update network.
      hidden: channels of RIIR's hidden state.
      similarity, window, weight: the loss (as DEQReg's).
    """

    def __init__(self, *, variant: str = "vanilla", steps: int = 6, encoder=ENCODER, decoder=DECODER, hidden: int = 8,
                 similarity: str = "lncc", window: int = 5, weight: float = 0.1):
        if variant not in VARIANTS:
            raise ValueError(f"`model.variant` must be one of {VARIANTS}; got {variant!r}.")
        if steps < 1:
            raise ValueError(f"`model.steps` (T) must be >= 1; got {steps}.")
        if similarity not in SIMILARITIES:
            raise ValueError(f"`loss.similarity` must be one of {SIMILARITIES}; got {similarity!r}.")
        self.variant, self.steps, self.hidden = variant, int(steps), int(hidden) if variant == "riir" else 0
        self.net = UpdateNet(tuple(encoder), tuple(decoder), outputs=self.hidden)
        self.loss_options = {"similarity": similarity, "window": int(window), "weight": float(weight)}
        self._similarity = similarity, int(window)

    def _extra_channels(self, ndim: int) -> int:
        return ndim + self.hidden if self.variant == "riir" else 0

    def init(self, key, batch):
        fixed = jnp.asarray(batch["fixed"])[..., None]
        ndim = fixed.ndim - 2
        ddf = jnp.zeros((*fixed.shape[:-1], ndim), fixed.dtype)
        extra = jnp.zeros((*fixed.shape[:-1], self._extra_channels(ndim)), fixed.dtype) if self.variant == "riir" else None
        params = {"net": self.net.init(key, fixed, fixed, ddf, extra)}
        if self.variant == "gradirn":
            params["step_size"] = jnp.zeros((), jnp.float32)
        return params

    def _similarity_gradient(self, fixed, moving, ddf):
        """∇_φ L_sim per pair, normalised to unit RMS, as data (no gradient through it)."""
        name, window = self._similarity
        ndim = ddf.shape[-1]

        def sim(f, m, u):
            warped = warp_batch(m[None], u[None])[0]
            if name == "lncc":
                return losses.lncc(f, warped, window=window, ndim=ndim)
            if name == "ssim":
                return losses.ssim(f, warped, ndim=ndim)
            return losses.mse(f, warped)

        grad = jax.vmap(jax.grad(sim, argnums=2))(fixed, moving, jax.lax.stop_gradient(ddf))
        rms = jnp.sqrt(jnp.mean(grad**2, axis=tuple(range(1, grad.ndim)), keepdims=True))
        return jax.lax.stop_gradient(grad / (rms + 1e-12))

    def _run(self, params, fixed, moving, steps: int) -> jax.Array:
        """``(steps, B, *S, ndim)``: φ_1 … φ_steps for ``(B, *S, 1)`` images."""
        ndim = fixed.ndim - 2
        ddf = jnp.zeros((*fixed.shape[:-1], ndim), fixed.dtype)
        hidden = jnp.zeros((*fixed.shape[:-1], self.hidden), fixed.dtype)

        def body(carry, _):
            ddf, hidden = carry
            warped = warp_batch(moving, ddf)
            if self.variant == "riir":
                grad = self._similarity_gradient(fixed, moving, ddf)
                out = self.net.apply(params["net"], fixed, warped, ddf, jnp.concatenate([grad, hidden], axis=-1))
                ddf, hidden = ddf + out[..., :ndim], jnp.tanh(out[..., ndim:])
            else:
                ddf = ddf + self.net.apply(params["net"], fixed, warped, ddf)
                if self.variant == "gradirn":
                    ddf = ddf - params["step_size"] * self._similarity_gradient(fixed, moving, ddf)
            return (ddf, hidden), ddf

        # Unrolled (see implicit.phantom_steps): a rolled scan's backward is ~15x slower on CPU.
        return jax.lax.scan(body, (ddf, hidden), None, length=steps, unroll=True)[1]

    def predict(self, params, fixed, moving, *, steps: int | None = None):
        """φ after ``steps`` (default T) steps, ``(B, *S, ndim)``, for ``(B, *S)`` images."""
        x = jnp.asarray(fixed)[..., None], jnp.asarray(moving)[..., None]
        return self._run(params, *x, int(steps or self.steps))[-1]

    def loss_fn(self, params, batch, key):
        """BPTT loss: L(φ_T), or RIIR's weighted sum over the steps."""
        del key
        fixed, moving = jnp.asarray(batch["fixed"])[..., None], jnp.asarray(batch["moving"])[..., None]
        fields = self._run(params, fixed, moving, self.steps)

        def loss_at(ddf):
            per_pair = jax.vmap(lambda f, m, u: registration_loss(f, m, u, **self.loss_options))(fixed, moving, ddf)
            return jax.tree.map(jnp.mean, per_pair)

        if self.variant != "riir":
            return loss_at(fields[-1])
        weights = step_weights(self.steps)
        per_step = jax.vmap(loss_at)(fields)  # (T,) losses and parts
        loss = jnp.sum(weights * per_step[0]) / jnp.sum(weights)
        return loss, {k: v[-1] for k, v in per_step[1].items()}
