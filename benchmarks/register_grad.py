"""Memory and time of a gradient through ``jaxreg.register`` (the traceable core), against the number of steps.

``python benchmarks/register_grad.py [--shape 64,64] [--steps 16,64,256]`` prints JSON: for each
step count, the compiled temp memory (XLA's ``memory_analysis``, meaningful on CPU) of the
gradient of ``sum(warped)`` with respect to the moving image through one level of the
deformable stage, with the steps rematerialised in a √n × √n nested scan (what
``register_traceable`` runs) and without (plain reverse mode through the scan), plus the
seconds of one gradient call (rematerialised) after compiling.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage as ndi

from jaxreg import _objective as obj
from jaxreg import _steps as steps_lib
from jaxreg import optimize


def _gradient(fixed, moving, steps, remat):
    shape = fixed.shape[:-1]
    _, (level,) = optimize.plan_levels(shape, (1.0,) * len(shape), levels=(1,), steps=steps)

    def loss(moving):
        params = jnp.zeros(shape + (len(shape),), fixed.dtype)
        carry = (params, steps_lib.optimizer(1.0, 1).init(params))
        (params, _), _ = optimize._level(carry, obj.normalise(fixed), obj.normalise(moving), None, 0.5, 0.05, steps, 0,
                                         length=steps, remat=remat, **level.options)
        return jnp.sum(params)

    return jax.jit(jax.grad(loss))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,64")
    parser.add_argument("--steps", default="16,64,256")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    fixed = ndi.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)[..., None]
    moving = np.roll(fixed, 2, axis=0)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        row = {"steps": steps}
        for remat in (True, False):
            compiled = _gradient(fixed, moving, steps, remat).lower(moving).compile()
            row[f"temp_mb_{'remat' if remat else 'plain'}"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
            if remat:
                jax.block_until_ready(compiled(moving))
                start = time.perf_counter()
                jax.block_until_ready(compiled(moving))
                row["grad_s_remat"] = time.perf_counter() - start
        rows.append(row)
    result = {"shape": list(shape), "device": jax.devices()[0].device_kind, "rows": rows}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
