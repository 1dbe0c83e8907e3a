"""DEQReg on Learn2Reg NLST lung CT (keypoints, masks): the paper's Table 1.

    python train.py --config configs/deqreg_nlst.py --workdir runs/deqreg_nlst \\
        --config.data.root=/data/NLST
    python eval.py --workdir runs/deqreg_nlst --save_disp

Paper settings: Anderson, at most T = 48 steps, phantom gradient, S = 3, γ = 0.5, LNCC
window 5 + 0.125 · diffusion, AdamW 1e-4, batch 1, 100 epochs; best checkpoint by TRE.
Paper: TRE 2.23 mm, Dice 96.6, |J|≤0 0.079 %.
"""

from configs import default, voxelmorph_nlst


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = voxelmorph_nlst.get_config()
    default.deqreg_model(config.model)
    config.solver = default.deq_solver()
    # Large volumes on an accelerator: each phantom step recomputed in the backward pass, so a
    # training step holds one update-network pass (benchmarks/memory.py: 292 vs 1281 MB at 64³).
    config.solver.phantom_remat = True
    return config
