"""Unrolled baselines on NLST (the convergence and memory studies of DEQReg's paper).

    python train.py --config configs/unroll_nlst.py:riir --workdir runs/riir_nlst \\
        --config.data.root=...

The part after the colon is the variant (vanilla | riir | gradirn) and, optionally, the
steps per level and the resolution levels: the default 3 × 3 is the papers' (``riir,6,1``
is the single-resolution form with T = 6). Data, loss, optimiser and schedule are those of
``voxelmorph_nlst.py`` (and DEQReg's).
"""

from configs import default, voxelmorph_nlst


def get_config(arg=None):
    """The config for ``arg`` = "variant[,steps[,levels]]" (default "vanilla,3,3")."""
    config = voxelmorph_nlst.get_config()
    default.unroll_model(config.model, arg)
    return config
