"""VoxelMorph on the built-in synthetic brains: the demo that trains in minutes on a CPU.

    python train.py --config configs/voxelmorph_demo.py --workdir runs/demo
    python eval.py --workdir runs/demo

``--config configs/voxelmorph_demo.py:3d`` trains the same on 32³ volumes instead of
128² slices (slower: ~0.8 s per step on 2 CPU cores). ``:cardiac`` trains on the built-in
cardiac-like 64² slices (LV, Myo, RV): the teacher of the DiffuseReg demo,

    python train.py --config configs/voxelmorph_demo.py:cardiac --workdir runs/vxm_cardiac_demo
 Any field can be overridden, e.g.
``--config.training.num_steps=200``.
"""

from configs import default


def get_config(arg: str | None = None):
    """The demo config; ``arg`` is ``"2d"`` (default), ``"3d"`` or ``"cardiac"``."""
    arg = arg or "2d"
    if arg not in ("2d", "3d", "cardiac"):
        raise ValueError(f"voxelmorph_demo takes '2d', '3d' or 'cardiac' after the colon; got {arg!r}.")
    config = default.get_config()

    data = config.data
    data.source = "synthetic"  # the built-in dataset (jaxreg.data.synthetic), generated on the fly
    data.num_pairs = {"train": 2048, "val": 16, "test": 32}  # pairs per split (independent streams)
    data.options.shape = {"2d": (128, 128), "3d": (32, 32, 32), "cardiac": (64, 64)}[arg]  # spatial shape of a pair
    data.options.anatomy = "cardiac" if arg == "cardiac" else "brain"  # brain | cardiac | lung
    if arg != "cardiac":
        data.options.num_labels = 12  # brain structures to score Dice on (cardiac: RV 1, Myo 2, LV 3)
    data.batch_size = 1 if arg == "3d" else 4  # pairs per device per step
    data.num_threads = 2  # pairs generated in parallel

    config.model.integration_steps = 7  # diffeomorphic: scaling and squaring of a velocity

    opt = config.optimizer
    opt.learning_rate = 1e-3  # a short run: a high rate
    opt.warmup_steps = 50
    opt.decay_steps = {"2d": 1200, "3d": 600, "cardiac": 800}[arg]
    opt.final_fraction = 0.05
    opt.grad_clip = 1.0

    training = config.training
    training.num_steps = opt.decay_steps
    training.eval_every = 300
    training.val_pairs = 16
    training.checkpoint_every = 300
    training.keep = 2
    if arg == "cardiac":
        config.eval.labels = (1, 2, 3)  # RV, Myo, LV (the ACDC convention)
        config.eval.label_names = {"1": "RV", "2": "Myo", "3": "LV"}
    return config
