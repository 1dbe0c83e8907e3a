"""DEQReg on OASIS brains (neurite-oasis, 128³, 300/30/84 subjects): the paper's Table 1.

    python train.py --config configs/deqreg_oasis.py --workdir runs/deqreg_oasis \\
        --config.data.root=/data/neurite-oasis.v1.0
    python eval.py --workdir runs/deqreg_oasis

Paper settings: Anderson, at most T = 48 steps, phantom gradient, S = 3 corrected states
with γ = 0.5, LNCC window 5 + 0.1 · diffusion, AdamW 1e-4, batch 1, 100 epochs.
Paper: Dice 80.7, HD 2.43 mm, |J|≤0 0.053 %, SDlogJ 0.542.
"""

from configs import default, voxelmorph_oasis


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = voxelmorph_oasis.get_config()  # same data, loss, optimiser and schedule
    default.deqreg_model(config.model)
    config.solver = default.deq_solver()
    # Large volumes on an accelerator: each phantom step recomputed in the backward pass, so a
    # training step holds one update-network pass (benchmarks/memory.py: 292 vs 1281 MB at 64³).
    config.solver.phantom_remat = True
    return config
