"""Unrolled baselines on OASIS (the convergence and memory studies of DEQReg's paper).

    python train.py --config configs/unroll_oasis.py:riir --workdir runs/riir_oasis \\
        --config.data.root=...

The part after the colon is the variant (vanilla | riir | gradirn) and, optionally, the
steps per level and the resolution levels: the default 3 × 3 is the papers' (``riir,6,1``
is the single-resolution form with T = 6). Data, loss, optimiser and schedule are those of
``voxelmorph_oasis.py`` (and DEQReg's).
"""

from configs import default, voxelmorph_oasis


def get_config(arg=None):
    """The config for ``arg`` = "variant[,steps[,levels]]" (default "vanilla,3,3")."""
    config = voxelmorph_oasis.get_config()
    default.unroll_model(config.model, arg)
    return config
