"""Optimiser schedule, the non-finite guard, EMA, and the sharded train step."""

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _two_devices import run_script
from jaxreg.training import create_state, make_optimizer, make_schedule, make_train_step


def test_schedule_matches_closed_form():
    opt = {"learning_rate": 1e-3, "warmup_steps": 10, "decay_steps": 90, "final_fraction": 0.01}
    schedule = make_schedule(opt)
    for t in [0, 3, 10, 11, 40, 99, 100, 150]:
        if t < 10:
            expected = 1e-3 * t / 10
        else:
            progress = min(t - 10, 90) / 90
            expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-5, abs=1e-12), t
    constant = make_schedule({"learning_rate": 2e-4, "warmup_steps": 4})
    assert [float(constant(t)) for t in (2, 4, 1000)] == pytest.approx([1e-4, 2e-4, 2e-4])
    with pytest.raises(ValueError, match="learning_rate"):
        make_schedule({"learning_rate": 0.0})


def _quadratic_loss(params, batch, key):
    del key
    residual = params["w"] * batch["x"] - batch["y"]
    loss = jnp.mean(residual**2) * batch["scale"][0]
    return loss, {"residual": jnp.mean(jnp.abs(residual))}


def _batch(scale=1.0):
    x = jnp.linspace(-1.0, 1.0, 8)
    return {"x": x, "y": 3.0 * x, "scale": jnp.full((8,), scale)}


def test_nonfinite_updates_are_skipped_and_counted():
    optimizer = make_optimizer({"learning_rate": 0.1, "weight_decay": 0.0, "grad_clip": 1.0})
    step = jax.jit(make_train_step(_quadratic_loss, optimizer))
    state = create_state({"w": jnp.zeros(())}, optimizer, jax.random.key(0))
    state, m = step(state, _batch())
    assert float(state.params["w"]) != 0.0 and int(m["nonfinite"]) == 0
    before = float(state.params["w"])
    state, m = step(state, _batch(scale=float("nan")))
    assert float(state.params["w"]) == before and int(m["nonfinite"]) == 1 and int(state.step) == 2
    for _ in range(100):
        state, m = step(state, _batch())
    assert abs(float(state.params["w"]) - 3.0) < 0.05 and int(m["nonfinite"]) == 1


def test_ema_is_the_closed_form_average():
    optimizer = make_optimizer({"learning_rate": 0.1})
    step = jax.jit(make_train_step(_quadratic_loss, optimizer, ema_decay=0.9))
    state = create_state({"w": jnp.zeros(())}, optimizer, jax.random.key(0), ema=True)
    expected = 0.0
    for _ in range(5):
        state, _ = step(state, _batch())
        expected = 0.9 * expected + 0.1 * float(state.params["w"])
    assert float(state.ema_params["w"]) == pytest.approx(expected, rel=1e-6)


_SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from _two_devices import one_and_two_devices
    from jaxreg import methods
    from jaxreg.training import make_optimizer, make_train_step

    module, _, loss_fn, _ = methods.build({"name": "voxelmorph"}, {"similarity": "lncc", "window": 5, "weight": 0.1})
    rng = np.random.default_rng(0)
    batch = {"fixed": jnp.asarray(rng.normal(size=(4, 32, 32)), jnp.float32),
             "moving": jnp.asarray(rng.normal(size=(4, 32, 32)), jnp.float32)}
    params = module.init(jax.random.key(0), batch["fixed"][..., None], batch["moving"][..., None])
    optimizer = make_optimizer({"learning_rate": 1e-3, "grad_clip": 1.0})
    r = one_and_two_devices(make_train_step(loss_fn, optimizer), optimizer, params, batch, steps=3)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(r["single_params"], r["sharded_params"]))
    print(json.dumps({"devices": len(jax.devices()), "single": r["single"], "sharded": r["sharded"],
                      "max_param_diff": diff, "batch_shards": r["batch_shards"]}))
""")


@pytest.mark.slow
def test_sharded_train_step_matches_one_device():
    result = run_script(_SHARDED, timeout=600)
    assert result["devices"] == 2 and result["batch_shards"] == 2
    np.testing.assert_allclose(result["sharded"], result["single"], rtol=1e-5, atol=1e-6)
    assert result["max_param_diff"] < 1e-5
