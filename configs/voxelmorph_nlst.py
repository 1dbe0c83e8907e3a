"""VoxelMorph on Learn2Reg NLST lung CT (224×192×224, keypoints, masks; trained at half size): DEQReg's baseline.

    python train.py --config configs/voxelmorph_nlst.py --workdir runs/vxm_nlst \\
        --config.data.root=/data/NLST
    python eval.py --workdir runs/vxm_nlst --save_disp   # Learn2Reg displacement files too

Settings of DEQReg's experiments: LNCC window 5 + 0.125 · diffusion, AdamW 1e-4, batch 1,
100 epochs over the training pairs (the split comes from NLST_dataset.json). The best
checkpoint is the one with the lowest validation TRE. Paper: VoxelMorph TRE 4.08 mm
(DEQReg 2.23 mm).
"""

from configs import default


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = default.get_config()

    data = config.data
    data.source = "learn2reg"
    data.root = ""  # required: the NLST task folder (holding NLST_dataset.json)
    data.normalize = "percentile"  # CT: [0, 1] between the 0.5th and 99.5th percentiles
    # Half resolution, as DEQReg's Table 1 ran NLST: its NLST memory is 0.575x its OASIS memory for
    # both DEQReg (3983 / 6925 MB) and VoxelMorph (1522 / 2645 MB), and 112x96x112 / 128^3 = 0.574.
    # Training sees 112x96x112 pairs at 3 mm; validation and eval.py register the full-size
    # images through the network at that size and score the field brought back to 224x192x224
    # (TRE on the original keypoints, Learn2Reg displacement files at full size).
    data.downsample = 2

    config.loss.similarity = "lncc"
    config.loss.window = 5
    config.loss.weight = 0.125

    epochs, train_pairs = 100, 170
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4

    training = config.training
    training.num_steps = epochs * train_pairs
    training.eval_every = 10 * train_pairs
    training.checkpoint_every = 10 * train_pairs
    training.best_metric = "tre"  # keypoints: target registration error in mm
    training.best_mode = "min"

    config.eval.split = "val"  # NLST's public test pairs have no keypoints; val does
    return config
