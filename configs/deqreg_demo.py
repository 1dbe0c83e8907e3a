"""DEQReg on the built-in synthetic brains: the DEQReg demo, minutes on a CPU.

    python train.py --config configs/deqreg_demo.py --workdir runs/deqreg_demo
    python eval.py --workdir runs/deqreg_demo

The data are the VoxelMorph demo's synthetic brains as 64×64 slices (a DEQReg step runs
the update network T times forward plus (S + 1)·K differentiated phantom steps, ~20× a
VoxelMorph step). Paper settings otherwise (Anderson, T = 48, phantom gradient, S = 3, γ = 0.5), except the
loss (the VoxelMorph demo's), 450 training steps, and a Jacobian regulariser (weight 1.0,
not in the paper) that keeps the update contractive; the convergence study
(benchmarks/convergence.py) runs inference with up to 96 steps.
"""

from configs import default, voxelmorph_demo


def get_config(arg=None):
    """The config (``arg`` unused)."""
    del arg
    config = voxelmorph_demo.get_config("2d")
    config.data.options.shape = (64, 64)
    default.deqreg_model(config.model)
    config.model.integration_steps = 0  # DEQReg's update adds displacements
    config.model.sequential_states = False  # ~20× faster on a CPU, at (S + 1)·K steps of memory
    config.solver = default.deq_solver()
    config.solver.max_steps = 48  # the paper's T; 12 trained faster but drifted past 16 inference steps
    # Keeps T contractive, so that 96 inference steps do not drift (docs/deqreg.md, convergence study).
    config.model.jacobian_weight = 1.0
    # The VoxelMorph demo's loss (LNCC window 9 + 1.0 · diffusion), so the two demos compare
    # like with like; the paper's λ = 0.1 folded 1 % of the voxels here after 200 steps.
    config.optimizer.decay_steps = 450
    config.training.num_steps = 450
    config.training.eval_every = 150
    config.training.checkpoint_every = 150
    return config
