"""VoxelMorph on OASIS brains (neurite-oasis, 128³, 300/30/84 subjects): DEQReg's baseline.

    python train.py --config configs/voxelmorph_oasis.py --workdir runs/vxm_oasis \\
        --config.data.root=/data/neurite-oasis.v1.0
    python eval.py --workdir runs/vxm_oasis

Settings of DEQReg's experiments (Zhang, Zhao & Tao): LNCC window 5 + 0.1 · diffusion, AdamW
1e-4, batch 1, 100 epochs. One epoch here is 300 steps (one pass over the training subjects
as moving images; training pairs are drawn from all ordered pairs). Paper: VoxelMorph Dice
77.8 on OASIS (DEQReg 80.7).
"""

from configs import default


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = default.get_config()

    data = config.data
    data.source = "neurite_oasis"
    data.root = ""  # required: the extracted neurite-oasis.v1.0 folder
    data.options.shape = (128, 128, 128)  # resampled over the same field of view
    data.options.split_sizes = (300, 30, 84)  # train / val / test subjects (fixed by seed 0)
    data.options.seed = 0  # split seed; pass data.options.workdir to store it in a file too

    config.loss.similarity = "lncc"
    config.loss.window = 5
    config.loss.weight = 0.1

    epochs, steps_per_epoch = 100, 300
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4

    training = config.training
    training.num_steps = epochs * steps_per_epoch
    training.eval_every = 10 * steps_per_epoch  # every 10 epochs
    training.checkpoint_every = 10 * steps_per_epoch
    training.best_metric = "dice"
    training.best_mode = "max"
    return config
