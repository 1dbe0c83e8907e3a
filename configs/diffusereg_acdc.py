"""DiffuseReg on ACDC cardiac MRI (ED fixed, ES moving; 32×128×128): the paper's settings.

    python train.py --config configs/voxelmorph_acdc.py --workdir runs/vxm_acdc --config.data.root=/data/ACDC/database
    python train.py --config configs/diffusereg_acdc.py --workdir runs/diffusereg_acdc \\
        --config.data.root=/data/ACDC/database --config.diffusion.teacher_workdir=runs/vxm_acdc
    python eval.py --workdir runs/diffusereg_acdc

Zhuo & Shen (MICCAI 2024) and their code: Swin-UNETR denoiser (feature size 120, depths
[2, 2, 2, 2], heads [3, 6, 12, 24], window [2, 4, 4], patch 2), linear β 1e-6 → 1e-2 over
T = 2000, loss MSE(ε̂, ε) + 1.0·(1 − SSIM) + 0.1·‖∇φ̂₀‖², AdamW 1e-4 with weight decay 1e-4
and cosine decay to 1e-6, batch 1, 1200 epochs (90 training pairs: 108 000 steps); Dice on RV (1),
Myo (2), LV (3). Their
teacher is VTN; ours is the VoxelMorph of configs/voxelmorph_acdc.py. The paper samples
with all 2000 DDPM steps (``--config.diffusion.sampler.method=ddpm``); DDIM-50 is the default here.
"""

from configs import default, voxelmorph_acdc


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = voxelmorph_acdc.get_config()
    default.diffusereg_model(config.model, config.loss)
    config.diffusion = default.diffusion_section()
    config.diffusion.teacher_workdir = "runs/vxm_acdc"  # the trained teacher (configs/voxelmorph_acdc.py)
    config.training.ema_decay = 0.0  # the paper keeps no EMA
    # 1200 epochs as the paper and its official config (the teacher's config trains 100).
    epochs, train_pairs = 1200, 90
    config.optimizer.decay_steps = epochs * train_pairs  # cosine 1e-4 -> 1e-6 over the whole run
    config.training.num_steps = epochs * train_pairs
    config.training.eval_every = 100 * train_pairs
    config.training.checkpoint_every = 10 * train_pairs
    return config
