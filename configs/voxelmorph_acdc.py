"""VoxelMorph on ACDC cardiac MRI (ED fixed, ES moving; 32×128×128): DiffuseReg's teacher φ₀.

    python train.py --config configs/voxelmorph_acdc.py --workdir runs/vxm_acdc \\
        --config.data.root=/data/ACDC/database
    python eval.py --workdir runs/vxm_acdc

Preprocessing and optimiser of DiffuseReg's experiments (Zhuo & Shen): spacing
(1.5, 1.5, 3.15) mm, crop/pad to 32×128×128, intensities to [-1, 1]; AdamW 1e-4, weight
decay 1e-4, cosine to 1e-6, batch 1; Dice on RV (1), Myo (2), LV (3). DiffuseReg's own
teacher is VTN; this VoxelMorph (diffeomorphic, LNCC) takes its place.
"""

from configs import default


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = default.get_config()

    data = config.data
    data.source = "acdc"
    data.root = ""  # required: the ACDC folder holding training/ and testing/
    data.options.num_val = 10  # validation patients carved out of training/ (the rest train)
    data.options.spacing = (1.5, 1.5, 3.15)  # mm along the file axes X, Y, Z (arrays come out Z, X, Y)
    data.options.shape = (32, 128, 128)
    data.options.out_range = (-1.0, 1.0)

    config.model.integration_steps = 7  # diffeomorphic teacher
    config.loss.similarity = "lncc"
    config.loss.window = 9
    config.loss.weight = 1.0

    epochs, train_pairs = 100, 90
    opt = config.optimizer
    opt.learning_rate = 1e-4
    opt.weight_decay = 1e-4
    opt.decay_steps = epochs * train_pairs
    opt.final_fraction = 0.01  # cosine from 1e-4 to 1e-6

    training = config.training
    training.num_steps = epochs * train_pairs
    training.eval_every = 10 * train_pairs
    training.checkpoint_every = 10 * train_pairs
    training.best_metric = "dice"

    config.eval.labels = (1, 2, 3)  # RV, Myo, LV
    config.eval.label_names = {"1": "RV", "2": "Myo", "3": "LV"}
    return config
