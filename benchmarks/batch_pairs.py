"""Are the pairs of a batch independent? A batch of 3 pairs against 3 single-pair calls; prints JSON.

    python benchmarks/batch_pairs.py [--deqreg runs/deqreg_demo] [--diffusereg runs/diffusereg_demo]

For every method, the largest difference (voxels) between the fields of one call on ``(3, ...)``
and three calls on ``(1, ...)``, next to the largest field value (the scale):

* **DEQReg**, each solver (``fixed_point``, ``anderson``, ``broyden``), with the trained
  parameters of ``--deqreg`` (the demo run) on 3 of its test pairs, ``max_steps = 96`` and the
  run's ``tol``; the steps each pair took are reported (pairs that stop at different steps
  are the case a batch-wide solver gets wrong);
* **VoxelMorph** and the **unrolled baselines** (each variant, 3 levels × 3 steps) with
  initial parameters whose last kernel is scaled up (so the fields are not ~0), on 3
  synthetic 64² pairs (GraDIRN's step sizes α = 0.1: with α = 0.5 its fields reach 24 voxels on
  64² images and float rounding, amplified through 9 gradient steps, differs by 1.5 voxels);
* **DiffuseReg**: the noise a sampler draws depends on the batch shape, so batch and single
  calls cannot be compared draw for draw; instead the batch ``[a, b, c]`` is compared with
  ``[a, b', c']`` under one key (DDIM-20, η = 0 and η = 1, and DDPM): pair ``a`` must come out
  the same. With ``--diffusereg`` the trained run (its test pairs), else a small untrained
  denoiser on synthetic 32² cardiac pairs.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import methods
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.deq.solvers import SOLVERS


def _synthetic(shape, anatomies=("brain", "cardiac", "brain"), seed=3):
    pairs = [synthetic_pair(jax.random.key(seed + i), shape, anatomy=a) for i, a in enumerate(anatomies)]
    return {k: jnp.stack([jnp.asarray(p[k]) for p in pairs]) for k in ("fixed", "moving")}


def _test_pairs(config, count=3):
    from jaxreg.data.sources import open_source

    source = open_source(config.data, "test")
    pairs = [source[i] for i in range(count)]
    return {k: jnp.stack([jnp.asarray(p[k]) for p in pairs]) for k in ("fixed", "moving")}


def _loud(params, factor=1e4):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: v * factor if "update" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
        else v, params)


def _compare(predict, pairs) -> dict:
    batch = np.asarray(predict(pairs["fixed"], pairs["moving"]))
    singles = np.concatenate([np.asarray(predict(pairs["fixed"][b:b + 1], pairs["moving"][b:b + 1]))
                              for b in range(batch.shape[0])])
    return {"max_difference": float(np.abs(batch - singles).max()), "max_field": float(np.abs(batch).max())}


def deqreg(workdir: str) -> dict:
    from jaxreg.runs.restore import load_run

    run = load_run(workdir)
    deq, params = run.method.module, run.params
    pairs = _test_pairs(run.config)
    out = {}
    for method in SOLVERS:
        options = {"method": method, "max_steps": 96}
        solve = jax.jit(lambda p, f, m, o=options: deq.solve(p, f, m, **o)[:2])  # parameters as arguments
        _, info = solve(params, pairs["fixed"], pairs["moving"])
        result = _compare(lambda f, m, s=solve: s(params, f, m)[0], pairs)
        out[method] = dict(result, steps=np.asarray(info.steps).tolist())
    return out


def feed_forward(shape=(64, 64)) -> dict:
    pairs = _synthetic(shape)
    loss = {"similarity": "lncc", "window": 5, "weight": 0.1}
    out = {}
    specs = {"voxelmorph": {"name": "voxelmorph"}}
    specs.update({f"unroll_{v}_3x3": {"name": "unroll", "variant": v, "steps": 3, "levels": 3}
                  for v in ("vanilla", "riir", "gradirn")})
    for name, spec in specs.items():
        method = methods.build(spec, loss)
        params = _loud(method.init(jax.random.key(1), pairs))
        if spec.get("variant") == "gradirn":
            params["step_size"] = jnp.asarray([0.1, 0.1, 0.1])
        if name == "voxelmorph":  # its flow layer is the one initialised near zero
            params = jax.tree_util.tree_map_with_path(
                lambda path, v: v * 1e5 if "flow" in jax.tree_util.keystr(path) else v, params)
        predict = jax.jit(method.predict)  # parameters as arguments, not closed-over constants
        out[name] = _compare(lambda f, m, p=params, pr=predict: pr(p, f, m), pairs)
    return out


def diffusereg(workdir: str | None) -> dict:
    if workdir:
        from jaxreg.runs.restore import load_run

        run = load_run(workdir)
        reg, params = run.method.module, run.params
        pairs = _test_pairs(run.config)
        others = {k: v[::-1] for k, v in pairs.items()}  # [c, b, a]: pairs 1, 2 replaced below
    else:
        config = {"name": "diffusereg", "features": 8, "depths": (1, 1), "heads": (2, 2), "window": (2, 4, 4)}
        pairs = _synthetic((32, 32), anatomies=("cardiac",) * 3)
        others = _synthetic((32, 32), anatomies=("cardiac",) * 3, seed=11)
        method = methods.build({**config, "window": (4, 4)}, {}, diffusion={"num_steps": 200})
        reg = method.module
        params = method.init(jax.random.key(1), pairs)
    swapped = {k: jnp.concatenate([pairs[k][:1], others[k][1:]]) for k in pairs}
    out = {}
    for name, options in {"ddim20_eta0": {"method": "ddim", "steps": 20, "eta": 0.0},
                          "ddim20_eta1": {"method": "ddim", "steps": 20, "eta": 1.0},
                          "ddpm": {"method": "ddpm"}}.items():
        def sample(f, m, o=options):
            return reg.sample(params, f, m, key=jax.random.key(7), **o).ddf
        a = np.asarray(sample(pairs["fixed"], pairs["moving"]))[0]
        b = np.asarray(sample(swapped["fixed"], swapped["moving"]))[0]
        out[name] = {"max_difference": float(np.abs(a - b).max()), "max_field": float(np.abs(a).max())}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deqreg", default="runs/deqreg_demo", help="a trained DEQReg workdir ('' to skip)")
    parser.add_argument("--diffusereg", default="", help="a trained DiffuseReg workdir (default: an untrained tiny one)")
    args = parser.parse_args(argv)
    result = {"backend": jax.default_backend()}
    if args.deqreg:
        result["deqreg"] = deqreg(args.deqreg)
    result.update(feed_forward())
    result["diffusereg"] = diffusereg(args.diffusereg or None)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
