"""Unrolled baselines on the DEQReg demo's data (64×64 synthetic brain slices).

    python train.py --config configs/unroll_demo.py:vanilla,3 --workdir runs/unroll_demo

The part after the colon is the variant (vanilla | riir | gradirn) and, optionally, the
steps per level and the resolution levels (default 1: the single-resolution form, whose
curve the convergence study shows). Everything else is ``deqreg_demo.py``'s, so the convergence study compares like with like.
"""

from configs import default, deqreg_demo


def get_config(arg=None):
    """The config for ``arg`` = "variant[,steps[,levels]]" (default "vanilla,3", one level)."""
    config = deqreg_demo.get_config()
    del config.solver
    for field in ("correction_states", "correction_weight"):
        del config.model[field]
    default.unroll_model(config.model, arg or "vanilla,3", levels=1)
    return config
