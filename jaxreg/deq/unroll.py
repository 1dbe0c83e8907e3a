"""Unrolled baselines of the convergence and memory studies, trained through time (BPTT).

All run weight-tied steps of the update network of DEQReg (:class:`jaxreg.deq.model.UpdateNet`)
from φ₀ = 0 and are differentiated through every step (``lax.scan``), so their training
memory grows with the number of steps:

* ``"vanilla"``: φ_{t+1} = φ_t + f_θ(I_f, I_m∘φ_t, φ_t); loss on the last field.
* ``"riir"`` (RIIR-like): a recurrent hidden state ``h`` and the similarity gradient
  ``g_t = ∇_φ L_sim(φ_t)`` as extra inputs. The network returns the update and, for the
  state, a gate ``z`` and a candidate ``c`` (a gated recurrent cell whose gate sees ``h_t``
  through the network's input):
  ``[Δφ, z, c] = f_θ(I_f, I_m∘φ_t, φ_t, g_t, h_t)``, ``φ_{t+1} = φ_t + Δφ``,
  ``h_{t+1} = σ(z)·h_t + (1 − σ(z))·tanh(c)``. Loss over every step (RIIR's weighting,
  which includes the final state): Σ_t w_t L(φ_t) / Σ_t w_t with w_t = 10^((t−1)/(N−1)),
  t = 1..N over all N steps.
* ``"gradirn"`` (GraDIRN-like): an explicit similarity-gradient step and the network update,
  both taken at φ_t: φ_{t+1} = φ_t − α·ĝ(φ_t) + f_θ(I_f, I_m∘φ_t, φ_t), with ĝ the gradient
  normalised to unit RMS per pair and a learned step size α per level (starting at 0); loss
  on the last field.

**Resolution levels.** ``levels = L`` runs ``steps`` steps at each of L resolutions, coarse to
fine (factors 2^(L−1), …, 2, 1; the papers' baselines: 3 levels × 3 steps); ``levels = 1`` is
the single-resolution form. Each level has its own update network (and α); images are
resized with anti-aliasing, the field (in voxels) is carried to the next level by
:func:`jaxreg.spatial.resize_ddf` and the hidden state by linear resizing. Each level's input
is zero-padded to the sides the U-Net needs (multiples of 2^len(encoder)) and cropped back.
Losses are computed on full-resolution fields (coarse fields resized up).

The similarity gradient enters as data (``stop_gradient``): no second derivatives, as
when it is computed by a separate autograd call. Inference can run any number of steps per
level (``steps=``), which is what the convergence study varies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg import losses, spatial
from jaxreg.deq.model import UpdateNet, warp_batch
from jaxreg.models.unet import DECODER, ENCODER, activation_dtype
from jaxreg.models.voxelmorph import SIMILARITIES, registration_loss

__all__ = ["VARIANTS", "Unrolled", "level_shapes", "step_weights"]

VARIANTS = ("vanilla", "riir", "gradirn")


def step_weights(steps: int) -> jax.Array:
    """RIIR's loss weights w_t = 10^((t−1)/(N−1)), t = 1..N (all 1 for N = 1)."""
    t = jnp.arange(1, steps + 1, dtype=jnp.float32)
    return 10.0 ** ((t - 1) / max(steps - 1, 1))


def level_shapes(shape, levels: int) -> tuple[tuple[int, ...], ...]:
    """Spatial shapes of the ``levels`` resolutions, coarse to fine: ``max(1, round(S / 2^k))``."""
    return tuple(tuple(max(1, round(s / 2**k)) for s in shape) for k in reversed(range(levels)))


def _resize_batch(x: jax.Array, shape) -> jax.Array:
    """``(B, *S, C)`` resized (linear, anti-aliased when shrinking) to ``(B, *shape, C)``."""
    if tuple(x.shape[1:-1]) == tuple(shape):
        return x
    return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), "linear", antialias=True)


def _resize_fields(ddf: jax.Array, shape) -> jax.Array:
    """``(B, *S, ndim)`` displacements (voxels) onto another grid, vectors rescaled."""
    if tuple(ddf.shape[1:-1]) == tuple(shape):
        return ddf
    return jax.vmap(lambda u: spatial.resize_ddf(u, shape))(ddf)


class Unrolled:
    """An unrolled registration network (a plain object; parameters are explicit).

    Args:
      variant: ``"vanilla"``, ``"riir"`` or ``"gradirn"``.
      steps: steps per level trained through (and the default at inference).
      levels: resolution levels L (1: single resolution; the papers' baselines use 3).
      encoder, decoder: U-Net widths of the update network.
      hidden: channels of RIIR's hidden state.
      dtype: activation dtype of the update network, ``"float32"`` or ``"bfloat16"`` (as DEQReg's).
      similarity, window, weight: the loss (as DEQReg's).

    Parameters: ``{"net": p}`` for one level, ``{"net": {"level_0": p_0, ...}}`` (coarse
    first) for several; GraDIRN adds ``"step_size"``, a scalar or ``(L,)``.
    """

    def __init__(self, *, variant: str = "vanilla", steps: int = 6, levels: int = 1, encoder=ENCODER,
                 decoder=DECODER, hidden: int = 8, dtype: str = "float32", similarity: str = "lncc", window: int = 5, weight: float = 0.1):
        if variant not in VARIANTS:
            raise ValueError(f"`model.variant` must be one of {VARIANTS}; got {variant!r}.")
        if steps < 1:
            raise ValueError(f"`model.steps` (steps per level) must be >= 1; got {steps}.")
        if levels < 1:
            raise ValueError(f"`model.levels` must be >= 1; got {levels}.")
        if similarity not in SIMILARITIES:
            raise ValueError(f"`loss.similarity` must be one of {SIMILARITIES}; got {similarity!r}.")
        self.variant, self.steps, self.levels = variant, int(steps), int(levels)
        self.hidden = int(hidden) if variant == "riir" else 0
        activation_dtype(dtype)
        self.net = UpdateNet(tuple(encoder), tuple(decoder), outputs=2 * self.hidden, dtype=str(dtype))
        self._multiple = 2 ** len(tuple(encoder))
        self.loss_options = {"similarity": similarity, "window": int(window), "weight": float(weight)}
        self._similarity = similarity, int(window)

    # ------------------------------------------------------------------ parameters
    def _level_params(self, params, level: int):
        return params["net"] if self.levels == 1 else params["net"][f"level_{level}"]

    def _step_size(self, params, level: int):
        return params["step_size"] if self.levels == 1 else params["step_size"][level]

    def init(self, key, batch):
        fixed = jnp.asarray(batch["fixed"])[..., None]
        ndim = fixed.ndim - 2
        shape = self._padded(fixed.shape[1:-1])  # the U-Net's weights do not depend on the size
        x = jnp.zeros((fixed.shape[0], *shape, 1), fixed.dtype)
        ddf = jnp.zeros((*x.shape[:-1], ndim), fixed.dtype)
        extra = jnp.zeros((*x.shape[:-1], ndim + self.hidden), fixed.dtype) if self.variant == "riir" else None
        keys = jax.random.split(key, self.levels)
        nets = [self.net.init(k, x, x, ddf, extra) for k in keys]
        params = {"net": nets[0] if self.levels == 1 else {f"level_{i}": p for i, p in enumerate(nets)}}
        if self.variant == "gradirn":
            params["step_size"] = jnp.zeros(() if self.levels == 1 else (self.levels,), jnp.float32)
        return params

    # ------------------------------------------------------------------ one step
    def _padded(self, shape) -> tuple[int, ...]:
        m = self._multiple
        return tuple(-(-int(s) // m) * m for s in shape)

    def _apply_net(self, params, fixed, warped, ddf, extra):
        """The update network on sides padded (zeros, far ends) to the U-Net's multiple, cropped back."""
        shape = fixed.shape[1:-1]
        pad = [(0, 0)] + [(0, p - s) for s, p in zip(shape, self._padded(shape))] + [(0, 0)]
        if all(hi == 0 for _, hi in pad):
            return self.net.apply(params, fixed, warped, ddf, extra)
        padded = [None if a is None else jnp.pad(a, pad) for a in (fixed, warped, ddf, extra)]
        out = self.net.apply(params, *padded)
        return out[(slice(None), *(slice(0, s) for s in shape))]

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

    def _level(self, params, level, fixed, moving, ddf, hidden, steps):
        """``steps`` steps at one level; returns the last ``(ddf, hidden)`` and ``(steps, B, *S, ndim)``."""
        ndim = ddf.shape[-1]
        net = self._level_params(params, level)

        def body(carry, _):
            ddf, hidden = carry
            warped = warp_batch(moving, ddf)
            if self.variant == "riir":
                grad = self._similarity_gradient(fixed, moving, ddf)
                out = self._apply_net(net, fixed, warped, ddf, jnp.concatenate([grad, hidden], axis=-1))
                gate = jax.nn.sigmoid(out[..., ndim:ndim + self.hidden])
                hidden = gate * hidden + (1.0 - gate) * jnp.tanh(out[..., ndim + self.hidden:])
                ddf = ddf + out[..., :ndim]
            elif self.variant == "gradirn":  # both terms at φ_t
                grad = self._similarity_gradient(fixed, moving, ddf)
                ddf = ddf - self._step_size(params, level) * grad + self._apply_net(net, fixed, warped, ddf, None)
            else:
                ddf = ddf + self._apply_net(net, fixed, warped, ddf, None)
            return (ddf, hidden), ddf

        # Unrolled (see implicit.phantom_steps): a rolled scan's backward is ~15x slower on CPU.
        (ddf, hidden), fields = jax.lax.scan(body, (ddf, hidden), None, length=steps, unroll=True)
        return ddf, hidden, fields

    def _run(self, params, fixed, moving, steps: int, *, all_fields: bool):
        """The final ``(B, *S, ndim)`` field for ``(B, *S, 1)`` images; with ``all_fields`` also every
        step's field at full resolution, ``(levels·steps, B, *S, ndim)``."""
        ndim = fixed.ndim - 2
        shape = fixed.shape[1:-1]
        ddf = hidden = None
        trajectory = []
        for level, level_shape in enumerate(level_shapes(shape, self.levels)):
            f, m = _resize_batch(fixed, level_shape), _resize_batch(moving, level_shape)
            if ddf is None:
                ddf = jnp.zeros((fixed.shape[0], *level_shape, ndim), fixed.dtype)
                hidden = jnp.zeros((fixed.shape[0], *level_shape, self.hidden), fixed.dtype)
            else:
                ddf = _resize_fields(ddf, level_shape)
                hidden = _resize_batch(hidden, level_shape) if self.hidden else ddf[..., :0]
            ddf, hidden, fields = self._level(params, level, f, m, ddf, hidden, steps)
            if all_fields:
                up = jax.vmap(lambda u: _resize_fields(u, shape))(fields) if level_shape != shape else fields
                trajectory.append(up)
        return ddf, (jnp.concatenate(trajectory) if all_fields else None)

    # ------------------------------------------------------------------ the Method interface
    def predict(self, params, fixed, moving, *, steps: int | None = None):
        """φ after ``steps`` (default: the trained number) steps per level, ``(B, *S, ndim)``, for
        ``(B, *S)`` images."""
        x = jnp.asarray(fixed)[..., None], jnp.asarray(moving)[..., None]
        return self._run(params, *x, int(steps or self.steps), all_fields=False)[0]

    def loss_fn(self, params, batch, key):
        """BPTT loss: L(φ_N), or RIIR's weighted sum over all N = levels·steps steps."""
        del key
        fixed, moving = jnp.asarray(batch["fixed"])[..., None], jnp.asarray(batch["moving"])[..., None]
        riir = self.variant == "riir"
        final, fields = self._run(params, fixed, moving, self.steps, all_fields=riir)

        def loss_at(ddf):
            per_pair = jax.vmap(lambda f, m, u: registration_loss(f, m, u, **self.loss_options))(fixed, moving, ddf)
            return jax.tree.map(jnp.mean, per_pair)

        if not riir:
            return loss_at(final)
        weights = step_weights(fields.shape[0])
        per_step = jax.vmap(loss_at)(fields)  # (N,) losses and parts
        loss = jnp.sum(weights * per_step[0]) / jnp.sum(weights)
        return loss, {k: v[-1] for k, v in per_step[1].items()}
