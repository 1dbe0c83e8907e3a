"""Unrolled baselines on NLST (the convergence and memory studies of DEQReg's paper).

    python train.py --config configs/unroll_nlst.py:riir,6 --workdir runs/riir_nlst \\
        --config.data.root=...

The part after the colon is the variant (vanilla | riir | gradirn) and, optionally, the
number of steps T trained through. Data, loss, optimiser and schedule are those of
``voxelmorph_nlst.py`` (and DEQReg's).
"""

from configs import default, voxelmorph_nlst


def get_config(arg=None):
    """The config for ``arg`` = "variant[,T]" (default "vanilla,6")."""
    config = voxelmorph_nlst.get_config()
    default.unroll_model(config.model, arg)
    return config
