"""Train steps on one device against the same steps over 2 simulated devices (shared by the sharding tests).

A test writes a script that builds its model, calls :func:`one_and_two_devices` and prints one
JSON line; :func:`run_script` runs it in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the flag must be set before JAX
starts) and ``tests/`` importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_script(script: str, *, timeout: int) -> dict:
    """Runs ``script`` with 2 simulated CPU devices; returns the JSON of its last output line."""
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    from conftest import xla_flags

    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"), JAX_PLATFORMS="cpu",
               PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_and_two_devices(train_step, optimizer, params, batch, *, steps: int, metrics=("loss",), state_key: int = 1):
    """``steps`` jitted train steps from the same state, on one device and with the batch split over a
    ``data`` mesh of every device (state replicated), written by hand with ``NamedSharding``.

    Returns a dict: ``single``/``sharded`` (per step, the values of ``metrics``; one value when
    ``metrics`` has one name), ``single_params``/``sharded_params`` (parameter leaves after the
    steps) and ``batch_shards`` (addressable shards of the sharded batch).
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxreg.training import create_state

    def run(mesh):
        state = create_state(params, optimizer, jax.random.key(state_key))
        if mesh is None:
            step, data = jax.jit(train_step), batch
        else:
            replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
            state = jax.device_put(state, replicated)
            data = jax.device_put(batch, sharded)
            step = jax.jit(train_step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated))
        values = []
        for _ in range(steps):
            state, out = step(state, data)
            row = [float(out[k]) for k in metrics]
            values.append(row[0] if len(metrics) == 1 else row)
        return values, jax.tree.leaves(state.params), data

    single, single_params, _ = run(None)
    sharded, sharded_params, data = run(Mesh(np.array(jax.devices()), ("data",)))
    return {"single": single, "sharded": sharded, "single_params": single_params, "sharded_params": sharded_params,
            "batch_shards": len(jax.tree.leaves(data)[0].addressable_shards)}
