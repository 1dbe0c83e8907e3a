"""The train state, its replicated initialisation and the one train step shared by every method.

A method supplies ``loss_fn(params, batch, key) -> (loss, metrics)`` (a batch of numpy or
sharded arrays, the mean loss over it); :func:`make_train_step` turns it into the jitted
``train_step(state, batch) -> (state, metrics)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import methods
from jaxreg import sharding
from jaxreg.training.optimizer import nonfinite_count

__all__ = ["TrainState", "create_state", "init_compiler_options", "init_state", "make_train_step"]


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue bit-identically from a checkpoint.

    Attributes:
      step: updates taken (skipped non-finite ones included).
      params: model parameters.
      opt_state: optimiser state.
      key: PRNG key, split every step.
      ema_params: exponential moving average of ``params`` (``None`` when off).
    """

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    key: jax.Array
    ema_params: dict | None = None


def create_state(params, optimizer: optax.GradientTransformation, key: jax.Array, *, ema: bool = False) -> TrainState:
    """A fresh state at step 0."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), key=key,
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def init_state(method: methods.Method, optimizer, config, sample: Mapping, mesh) -> TrainState:
    """A fresh train state, replicated over ``mesh`` (``training.seed``; ``sample`` shapes the parameters).

    Built by one jitted function whose output is placed by ``out_shardings``: every process
    computes the same state from the same seed, also for devices it cannot address, so this
    works unchanged in a multi-process job.
    """
    ema = float(config.training.get("ema_decay", 0.0)) > 0

    def build(key, batch):
        init_key, state_key = jax.random.split(key)
        return create_state(method.init(init_key, batch), optimizer, state_key, ema=ema)

    batch = {k: np.asarray(sample[k])[None] for k in ("fixed", "moving")}
    key = jax.random.key(int(config.training.get("seed", 0)))
    return jax.jit(build, out_shardings=sharding.replicated(mesh), compiler_options=init_compiler_options())(key, batch)


def init_compiler_options() -> dict | None:
    """XLA options for compiling a parameter initialisation (run once): on a CPU, LLVM's
    first optimisation level instead of its default.

    XLA:CPU spends most of an initialisation's compile time optimising the random
    initialisers' code, at any volume size. Measured on a 2-core CPU, compile + run: DEQReg's
    update network 14.3 → 2.0 s; DiffuseReg's paper denoiser 58 → 39 s. Level 0 compiles as
    fast but its code runs 6× slower on the denoiser's 490 M parameters. The values can
    differ from the default program's in the last bit (contracted multiply-adds) and are the
    same on every run and every process.
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def make_train_step(
    loss_fn: Callable, optimizer: optax.GradientTransformation, *, ema_decay: float = 0.999
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The train step: gradient of ``loss_fn``, optimiser update, EMA, metrics.

    Returns an un-jitted function; the caller jits it (with shardings for data parallelism).
    Metrics: ``loss``, the method's own metrics, ``grad_norm`` and ``nonfinite`` (the
    running count of skipped updates).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key, step_key = jax.random.split(state.key)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, key=key, ema_params=ema)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), nonfinite=nonfinite_count(opt_state))
        return new_state, metrics

    return train_step
