"""Defaults shared by every config: each ``<method>_<dataset>.py`` starts from these.

Not a run by itself (``data.source`` is empty). Sections: ``data``, ``model``, ``loss``,
``optimizer``, ``training``, ``eval``; see docs/training.md for what each field does.
"""

import ml_collections


def get_config(arg=None) -> ml_collections.ConfigDict:
    """Shared defaults (``arg`` unused)."""
    del arg
    config = ml_collections.ConfigDict()

    config.data = data = ml_collections.ConfigDict()
    data.source = ""  # learn2reg | neurite_oasis | acdc | synthetic | tfds (jaxreg.data.SOURCES)
    data.root = ""  # dataset folder (folder sources)
    data.name = ""  # TFDS dataset name (source tfds)
    data.tfds_dir = ""  # TFDS data_dir (source tfds; "" = TFDS default)
    data.seed = 0  # seed of the pairs (synthetic), the shuffling and the augmentation
    data.options = ml_collections.ConfigDict()  # keyword arguments of the reader / synthetic_pair
    data.batch_size = 1  # pairs per device per step (global batch = this × devices)
    data.normalize = None  # None | minmax | percentile | zscore, per image
    data.downsample = 1  # the network trains on pairs shrunk by this (block means); evaluation brings fields to full size
    data.augment = None  # {"flip_axes": .., "transpose_axes": .., "affine": {...}} or None
    data.keys = None  # batch entries the loss needs (None: fixed, moving)
    data.num_threads = 4  # pairs read and transformed in parallel
    data.prefetch = 4  # pairs buffered ahead of the train step

    config.model = model = ml_collections.ConfigDict()
    model.name = "voxelmorph"  # a key of jaxreg.methods.METHODS
    model.encoder = (16, 32, 32, 32)  # U-Net encoder widths (VoxelMorph's)
    model.decoder = (32, 32, 32, 32, 32, 16, 16)  # U-Net decoder widths (VoxelMorph's)
    model.integration_steps = 0  # scaling-and-squaring steps (0: plain displacement)
    model.dtype = "float32"  # activations: float32 | bfloat16 (parameters, fields, losses stay float32)

    config.loss = loss = ml_collections.ConfigDict()
    loss.similarity = "lncc"  # lncc | mse | ssim
    loss.window = 9  # LNCC window (voxels)
    loss.weight = 1.0  # λ of the diffusion regulariser

    config.optimizer = opt = ml_collections.ConfigDict()
    opt.learning_rate = 1e-4  # peak AdamW rate (after warm-up)
    opt.warmup_steps = 0  # linear warm-up
    opt.decay_steps = 0  # cosine decay length, usually training.num_steps (0: constant)
    opt.final_fraction = 0.0  # final rate as a fraction of the peak
    opt.weight_decay = 1e-4  # AdamW decoupled weight decay
    opt.grad_clip = 0.0  # global-norm clipping (0: off)
    opt.max_consecutive_nonfinite = 10  # non-finite updates skipped in a row before giving up

    config.training = training = ml_collections.ConfigDict()
    training.num_steps = 1000  # optimiser updates
    training.seed = 0  # parameter initialisation and train-state PRNG
    training.log_every = 50  # steps between metrics.jsonl / TensorBoard lines
    training.eval_every = 1000  # steps between validations (0: never)
    training.val_pairs = 0  # validation pairs per validation (0: the whole split)
    training.checkpoint_every = 1000  # steps between checkpoints (plus one at the end)
    training.keep = 3  # latest checkpoints kept (plus the best)
    training.best_metric = "dice"  # validation metric that picks the best checkpoint ("" : none)
    training.best_mode = "max"  # max | min
    training.ema_decay = 0.0  # EMA of the parameters (0: off)
    training.async_checkpoints = True  # write checkpoints in the background
    training.tensorboard = True  # also write TensorBoard events to W/tensorboard
    training.progress = True  # tqdm progress bar
    training.distributed = False  # multi-host: call jax.distributed.initialize()
    training.coordinator_address = ""  # multi-host: "host:port" of process 0 ("": auto-detect)
    training.num_processes = 0  # multi-host: number of processes (0: auto-detect)
    training.process_id = -1  # multi-host: this process (-1: auto-detect)
    training.coordinator_timeout = 300  # multi-host: seconds to wait for the coordinator and all processes

    config.eval = ev = ml_collections.ConfigDict()
    ev.split = "test"  # split eval.py scores by default
    ev.step = "latest"  # checkpoint: latest | best | a step number
    ev.labels = None  # labels to score (None: every label present)
    ev.label_names = ml_collections.config_dict.placeholder(dict)  # {"1": "RV", ...}: names in summary.md
    ev.limit = 0  # score only the first N pairs (0: all)
    ev.with_hd95 = True  # HD95 per label (a distance transform per label and pair)
    ev.num_figures = 4  # pairs drawn as PNG figures
    ev.save_disp = False  # also write Learn2Reg displacement files (3-D)
    ev.use_ema = True  # score the EMA parameters when the run kept them
    ev.name = ""  # output folder W/eval/<name> ("": the split's name), e.g. one per sampler setting
    ev.observe_frames = 6  # DiffuseReg: sampler snapshots drawn in figures/sampling.png
    ev.uncertainty_samples = 8  # DiffuseReg: ensemble size of figures/uncertainty.png (0: no figure)
    return config


def deq_solver() -> ml_collections.ConfigDict:
    """The ``solver`` section of equilibrium models (DEQReg): the paper's settings."""
    solver = ml_collections.ConfigDict()
    solver.method = "anderson"  # fixed_point | anderson | broyden | jaxopt_anderson | jaxopt_broyden (jaxreg.deq.solvers)
    solver.max_steps = 48  # T: forward solver steps at most
    solver.tol = 1e-3  # stop when the residual is below this
    solver.stop = "relative"  # relative: ‖T(φ) − φ‖ / ‖T(φ)‖; absolute: ‖T(φ) − φ‖ (voxels)
    solver.history = 5  # memory of Anderson and of Broyden (its last secant pairs): 2·history copies of φ per pair
    solver.damping = 1.0  # fixed_point: φ ← d·T(φ) + (1 − d)·φ
    solver.backward = "phantom"  # phantom (paper, Eq. 7-8) | ift (exact implicit gradient)
    solver.phantom_steps = 5  # K damped steps differentiated from φ*
    solver.phantom_damping = 0.8  # τ of the phantom steps
    solver.phantom_remat = False  # recompute each phantom step in the backward pass: memory of 1 step, not K
    # The ift adjoint w = g + Jᵀw (solved with `method`): its own tolerance and step limit. Its steps, residual and
    # convergence are metrics (adjoint_*); a pair whose adjoint does not converge takes the Jacobian-free gradient
    # (adjoint_fallbacks counts them).
    solver.adjoint_tol = 1e-3  # the adjoint's residual tolerance (`stop` rule as above)
    solver.adjoint_max_steps = 48  # the adjoint's steps at most
    return solver


def deqreg_model(model: ml_collections.ConfigDict) -> None:
    """Turns ``model`` into DEQReg's: the VoxelMorph U-Net as update network, S = 3, γ = 0.5."""
    model.name = "deqreg"
    model.correction_states = 3  # S intermediate states (Eq. 9), at equal intervals of the trajectory
    model.correction_weight = 0.5  # γ, the weight of each corrected state's loss
    model.sequential_states = True  # backward one state at a time: memory of one phantom pass (slow on CPU)
    model.jacobian_weight = 0.0  # weight of ‖∂T/∂φ‖_F²/d at φ* (keeps T contractive); 0 in the paper


def unroll_model(model: ml_collections.ConfigDict, arg: str | None, *, steps: int = 3, levels: int = 3) -> None:
    """Turns ``model`` into an unrolled baseline; ``arg`` is ``"variant[,steps[,levels]]"``.

    The defaults are the papers' baselines: 3 resolution levels × 3 steps.
    """
    variant, *numbers = (arg or "vanilla").split(",")
    if len(numbers) > 2 or not all(n.strip().isdigit() for n in numbers):
        raise ValueError(f"the config argument must be 'variant[,steps[,levels]]' with whole numbers; got {arg!r}")
    model.name = "unroll"
    model.variant = variant  # vanilla | riir | gradirn (jaxreg.deq.unroll)
    model.steps = int(numbers[0]) if numbers else steps  # steps per level, trained through (BPTT)
    model.levels = int(numbers[1]) if len(numbers) > 1 else levels  # resolution levels, coarse to fine (1: single)
    model.hidden = 8  # RIIR's hidden-state channels


def diffusereg_model(model: ml_collections.ConfigDict, loss: ml_collections.ConfigDict) -> None:
    """Turns ``model``/``loss`` into DiffuseReg's: the paper's Swin-UNETR denoiser and consistency loss."""
    for field in ("encoder", "decoder", "integration_steps", "dtype"):  # the U-Net fields do not apply
        del model[field]
    model.name = "diffusereg"
    model.features = 120  # Swin token width of the first stage (doubles per stage)
    model.depths = (2, 2, 2, 2)  # Swin blocks per stage
    model.heads = (3, 6, 12, 24)  # attention heads per stage
    model.window = (2, 4, 4)  # window sides in tokens (D, H, W)
    model.patch = 2  # patch side of the token embedding
    model.fusion = "layerwise"  # layerwise (joint attention in every field block) | input (concatenation ablation)
    model.conditional_mask = True  # tile the shifted-window mask over the image tokens (ablation: False)
    model.time_in_resblocks = True  # a time projection in every conv block (ablation: False)
    model.image_skip = False  # also give the images to the full-resolution conv skip (not in the paper)
    model.image_tokens = "input"  # input (official code: image tokens entering each image block) | output (leaving it)
    loss.ssim_weight = 1.0  # λ₁ of 1 − SSIM(I_m∘φ̂₀, I_f)
    loss.ssim_window = 9  # SSIM Gaussian window side (σ 1.5)
    loss.smooth_weight = 0.1  # λ₂ of the diffusion regulariser of φ̂₀
    loss.consistency_weighting = "none"  # none (paper) | alpha_bar: weight the SSIM and smoothness terms by ᾱ_t


def diffusion_section() -> ml_collections.ConfigDict:
    """The ``diffusion`` section of DiffuseReg: teacher, schedule, normalisation and the sampler."""
    diffusion = ml_collections.ConfigDict()
    diffusion.teacher_workdir = ""  # required: a trained registration run whose fields φ₀ are the targets
    diffusion.teacher_step = "latest"  # the teacher's checkpoint: latest | best | a step number
    diffusion.stats_pairs = 0  # training pairs the per-channel φ₀ statistics are computed on (0: all)
    diffusion.mean = ml_collections.config_dict.placeholder(list)  # filled by training (W/diffusion_stats.json)
    diffusion.std = ml_collections.config_dict.placeholder(list)  # filled by training
    diffusion.schedule = "linear"  # linear | cosine
    diffusion.num_steps = 2000  # T
    diffusion.beta_start = 1e-6  # β_1 of the linear schedule
    diffusion.beta_end = 1e-2  # β_T of the linear schedule
    diffusion.condition_dropout = 0.0  # share of training samples without images (classifier-free guidance)
    diffusion.prediction = "eps"  # eps (paper; loss MSE(ε̂, ε)) | v (loss MSE(v̂, v)): what the denoiser predicts

    diffusion.sampler = sampler = ml_collections.ConfigDict()  # what eval.py and predict use
    sampler.method = "ddim"  # ddim | ddpm (all T steps)
    sampler.steps = 50  # DDIM model calls
    sampler.eta = 0.0  # DDIM stochasticity (0: deterministic)
    sampler.seed = 0  # seed of the sampler's noise
    sampler.cfg_scale = 0.0  # classifier-free guidance scale (needs condition_dropout > 0 in training)
    sampler.ensemble = 1  # samples per pair (mean field reported; std = uncertainty)
    sampler.start = "noise"  # noise | teacher (start from the teacher's field at start_step)
    sampler.start_step = -1  # step to start from (-1: T − 1)
    sampler.clip = 0.0  # clip x̂₀ to ±clip (z-scored units) at every step (0: off)
    sampler.guidance = guidance = ml_collections.ConfigDict()  # weights of energies on x̂₀ (0: off)
    for term in ("diffusion", "bending", "folding", "similarity", "masked_similarity", "organ", "direction"):
        guidance[term] = 0.0
    return diffusion
