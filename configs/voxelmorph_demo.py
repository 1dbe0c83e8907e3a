"""VoxelMorph on the built-in synthetic brains: the demo that trains in minutes on a CPU.

    python train.py --config configs/voxelmorph_demo.py --workdir runs/demo
    python eval.py --workdir runs/demo

``--config configs/voxelmorph_demo.py:3d`` trains the same on 32³ volumes instead of
128² slices (slower: ~0.8 s per step on 2 CPU cores). Any field can be overridden, e.g.
``--config.training.num_steps=200``.
"""

from configs import default


def get_config(arg: str | None = None):
    """The demo config; ``arg`` is ``"2d"`` (default) or ``"3d"``."""
    arg = arg or "2d"
    if arg not in ("2d", "3d"):
        raise ValueError(f"voxelmorph_demo takes '2d' or '3d' after the colon; got {arg!r}.")
    config = default.get_config()

    data = config.data
    data.source = "synthetic"  # the built-in dataset (jaxreg.data.synthetic), generated on the fly
    data.num_pairs = {"train": 2048, "val": 16, "test": 32}  # pairs per split (independent streams)
    data.options.shape = (128, 128) if arg == "2d" else (32, 32, 32)  # spatial shape of a pair
    data.options.anatomy = "brain"  # brain | cardiac | lung
    data.options.num_labels = 12  # brain structures to score Dice on
    data.batch_size = 4 if arg == "2d" else 1  # pairs per device per step
    data.num_threads = 2  # pairs generated in parallel

    config.model.integration_steps = 7  # diffeomorphic: scaling and squaring of a velocity

    opt = config.optimizer
    opt.learning_rate = 1e-3  # a short run: a high rate
    opt.warmup_steps = 50
    opt.decay_steps = 1200 if arg == "2d" else 600
    opt.final_fraction = 0.05
    opt.grad_clip = 1.0

    training = config.training
    training.num_steps = opt.decay_steps
    training.eval_every = 300
    training.val_pairs = 16
    training.checkpoint_every = 300
    training.keep = 2
    return config
