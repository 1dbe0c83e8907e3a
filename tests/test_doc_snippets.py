"""The fenced code blocks of README.md and docs/*.md (docs/api.md excluded) run as written.

Every fenced block (```python, ```bash and unlabelled ones) is named in exactly one of two
tables: ``RUN`` (executed here) or ``NOT_RUN`` (with the reason). A new block, or a table
entry whose block is gone, fails ``test_every_block_is_in_one_table``, so each new snippet
forces a decision.

A block is identified by its document and its *key*: the first line that is not blank, not
a comment and not an import (``quickstart.md`` has two blocks starting ``import jaxreg``),
stripped, without a trailing ``# comment``; a block of comments and imports only is keyed by
its first non-comment line.

The ``RUN`` blocks of one document run top to bottom, as a reader runs them, in one fresh
Python process whose working directory is a temporary folder: Python blocks are ``exec``-ed
in one shared namespace, bash blocks run with ``bash -e -o pipefail`` (``python`` and
``jaxreg`` are this interpreter's). Before a block, its *prelude* (Python, in the same
namespace) defines the names and files it assumes: small images (24³ blobs written by
numpy), NIfTI files, workdirs. A prelude never changes the block; the one exception is the
``subs`` of an entry, listed beside the block, which replaces an absolute data path
(``/data/NLST``) by a folder in the temporary directory, or a reader's installation
(``python3 -m venv .venv && .venv/bin/pip install -e .``, ``.venv/bin/jaxreg``) by this
interpreter's installed ``jaxreg``.

Trained workdirs (``runs/deqreg_demo``, ...) are stood in for by *initialised* workdirs: the
config of a tiny test run (``tests/configs``) and a checkpoint of freshly initialised
parameters, written through ``jaxreg.runs`` (training one, even a tiny one, takes minutes on
2 cores; DiffuseReg's get parameters of the right shapes with small random values, because its
``init`` alone compiles for minutes). What is checked is that the documented calls run, with
the documented names and arguments, not their numbers.

``test_snippets_run`` takes minutes (every ``jaxreg.register`` compiles), so it is marked
slow; the table check and the runner's own tests take a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md without the generated API reference."""
    return [root / "README.md"] + sorted(p for p in (root / "docs").glob("*.md") if p.name != "api.md")


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root, e.g. "docs/quickstart.md"
    line: int  # 1-based line of the opening fence (for messages only)
    lang: str  # "python", "bash", "" (unlabelled), ...
    code: str  # the block's text, dedented to its fence

    @property
    def key(self) -> str:
        return block_key(self.code)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} [{self.lang or 'unlabelled'}] {self.key[:70]}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_IMPORT = re.compile(r"^(import\s+\S|from\s+\S+\s+import\s)")


def block_key(code: str) -> str:
    """The first line that is not blank, a comment or an import, without a trailing comment."""
    lines = [line.strip() for line in code.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    chosen = next((line for line in lines if not _IMPORT.match(line)), lines[0] if lines else "")
    return re.sub(r"\s+#\s.*$", "", chosen).strip()


def parse_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    doc = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        lang = (match["info"].split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[j]):
            j += 1
        body = [line[indent:] if line[:indent].strip() == "" else line for line in lines[i + 1:j]]
        blocks.append(Block(doc, i + 1, lang, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [block for path in documents(root) for block in parse_blocks(path, root)]


def table_problems(blocks: list[Block], run: dict, not_run: dict) -> list[str]:
    """What is wrong between the blocks and the two tables (empty when each block is in exactly one)."""
    problems = []
    seen: dict[tuple[str, str], Block] = {}
    for block in blocks:
        ident = (block.doc, block.key)
        if ident in seen:
            problems.append(f"{block.where}: same key as the block at line {seen[ident].line}; "
                            "make their first lines differ")
            continue
        seen[ident] = block
        if ident in run and ident in not_run:
            problems.append(f"{block.where}: in both RUN and NOT_RUN")
        elif ident not in run and ident not in not_run:
            problems.append(f"{block.where}: in neither RUN nor NOT_RUN; add it to one of them, "
                            f"key {ident!r}")
        elif ident in run and block.lang not in ("python", "bash", "sh", "shell", ""):
            problems.append(f"{block.where}: RUN takes python and bash blocks only")
    for name, table in (("RUN", run), ("NOT_RUN", not_run)):
        for ident in table:
            if ident not in seen:
                problems.append(f"{name} names {ident!r}, which is no fenced block of {ident[0]} (any more)")
    return problems


# --------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Run:
    """How a block runs: Python code that prepares what it assumes, and path substitutions."""

    prelude: str = ""
    subs: tuple[tuple[str, str], ...] = ()  # (old, new) replaced in the block's text: data paths, the install


_DRIVER = r"""
import json, subprocess, sys, time, traceback
steps = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for step in steps:
    print(f"--- {step['where']}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        if step["kind"] == "bash":
            subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["code"]], check=True)
        else:
            exec(compile(step["code"], step["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {step['where']}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"    ok, {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
print("ALL OK", file=sys.stderr, flush=True)
"""


def program(blocks: list[Block], run: dict) -> list[dict]:
    """The steps of a document: each RUN block in order, its prelude before it."""
    steps = []
    for block in blocks:
        how = run.get((block.doc, block.key))
        if how is None:
            continue
        if how.prelude:
            steps.append({"kind": "python", "where": f"prelude of {block.where}", "code": textwrap.dedent(how.prelude)})
        code = block.code
        for old, new in how.subs:
            assert old in code, f"{block.where}: substitution {old!r} not in the block"
            code = code.replace(old, new)
        steps.append({"kind": "python" if block.lang == "python" else "bash", "where": block.where, "code": code})
    return steps


def run_steps(steps: list[dict], cwd: Path, *, timeout: float = 1800, default_xla: bool = False):
    """Runs the steps in one fresh Python process in ``cwd``; returns the CompletedProcess."""
    cwd.mkdir(parents=True, exist_ok=True)
    script = cwd.parent / f"{cwd.name}_steps.json"
    script.write_text(json.dumps(steps), encoding="utf-8")
    flags = os.environ.get("XLA_FLAGS", "")
    if default_xla:  # XLA's default optimisation level instead of the test run's (conftest.py)
        flags = " ".join(f for f in flags.split() if "xla_backend_optimization_level" not in f)
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", XLA_FLAGS=flags,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    return subprocess.run([sys.executable, "-c", _DRIVER, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------------------------
# Preludes

# Small 3-D images (24³: one pyramid level, so one compiled program per stage) and label maps.
_PAIR = """
import numpy as np

def _blobs(centres, radii, shape=(24, 24, 24)):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    return [np.exp(-((grid - np.array(c, np.float32).reshape(-1, *[1] * len(shape))) ** 2).sum(0) / (2 * r * r))
            for c, r in zip(centres, radii)]

_f = _blobs([(12, 12, 12), (8, 15, 12)], [5.0, 3.0])
_m = _blobs([(13, 11, 12), (9, 14, 13)], [5.5, 3.0])
fixed, moving = (_f[0] + 0.5 * _f[1]).astype(np.float32), (_m[0] + 0.5 * _m[1]).astype(np.float32)
fixed_seg = ((_f[0] > 0.4).astype(np.int32) + (_f[1] > 0.5)).astype(np.int32)
seg = ((_m[0] > 0.4).astype(np.int32) + (_m[1] > 0.5)).astype(np.int32)
"""

# Initialised stand-ins for trained workdirs: config.json + a checkpoint of fresh parameters.
_WORKDIRS = f"""
import importlib.util
import jax, numpy as np
from pathlib import Path

def _config(name):
    spec = importlib.util.spec_from_file_location(name, {str(CONFIGS)!r} + "/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()

def _default():
    spec = importlib.util.spec_from_file_location("default", {str(ROOT / "configs" / "default.py")!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def _initialised_run(workdir, model, shape=(24, 24, 24), diffusion_steps=20):
    '''A workdir as train.py leaves it, with freshly initialised parameters (3-D tiny models).'''
    from jaxreg import methods
    from jaxreg.runs import Checkpoints, save_config
    config = _config("tiny_diffusereg" if model == "diffusereg" else "tiny")
    if model == "deqreg":
        default = _default()
        default.deqreg_model(config.model)
        config.model.correction_states = 2
        config.solver = default.deq_solver()
        config.solver.max_steps = 4
    if model == "diffusereg":
        config.diffusion.mean, config.diffusion.std = [0.0] * len(shape), [1.0] * len(shape)
        config.diffusion.num_steps = diffusion_steps  # T
    config.data.options.shape = tuple(shape)
    method = methods.build_from_config(config)
    images = np.zeros((1, *shape), np.float32)
    batch = {{"fixed": images, "moving": images}}
    if model == "diffusereg":
        # Its init compiles for minutes on 2 cores: parameters of the right shapes, small random values.
        shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    else:
        params = method.init(jax.random.key(0), batch)
    save_config(config, workdir)
    with Checkpoints(Path(workdir) / "checkpoints", every=1, asynchronous=False) as checkpoints:
        checkpoints.save(1, {{"params": params}}, force=True)
"""

_NIFTI = """
import nibabel as nib, numpy as np

def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
"""

# A reader's fresh install (README's first block): here the package is installed already, and
# ``jaxreg`` on the PATH is this interpreter's.
_INSTALLED = (("python3 -m venv .venv && .venv/bin/pip install -e .\n", ""), (".venv/bin/jaxreg", "jaxreg"))

RUN: dict[tuple[str, str], Run] = {
    # README.md: the first registration (`jaxreg example`, then `jaxreg register` on its files)
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -e ."): Run(subs=_INSTALLED),
    ("README.md", "result = jaxreg.register(fixed, moving)"): Run(_PAIR),
    ("README.md", "fixed, moving = jnp.zeros((64, 64, 64)), jnp.zeros((64, 64, 64))"): Run(),
    # docs/quickstart.md
    ("docs/quickstart.md", "result = jaxreg.register(fixed, moving)"): Run(_PAIR),
    ("docs/quickstart.md", 'result = jaxreg.register(fixed, moving, similarity="mi")'): Run(
        "brain_mask = fixed > 0.2\n"),
    ("docs/quickstart.md", 'fixed_nii = jaxreg.io.load_nifti("fixed.nii.gz")'): Run(
        _NIFTI + "_nifti('fixed.nii.gz', fixed); _nifti('moving.nii.gz', moving)\n"),
    ("docs/quickstart.md", "results = jaxreg.register(fixed_stack, moving_stack, batch=True)"): Run(
        "fixed_stack, moving_stack = np.stack([fixed, moving]), np.stack([moving, fixed])\n"
        "seg_stack, mask = np.stack([seg, fixed_seg]), brain_mask\n"),
    ("docs/quickstart.md", 'model = jaxreg.load_model("runs/deqreg_demo")'): Run(
        _WORKDIRS + "import jax\n"
        "_initialised_run('runs/deqreg_demo', 'deqreg')\n"
        "_initialised_run('runs/diffusereg_demo', 'diffusereg', diffusion_steps=50)  # steps=25 below\n"),
    ("docs/quickstart.md",
     "jaxreg register --fixed fixed.nii.gz --moving moving.nii.gz --moving-labels moving_seg.nii.gz --out out/"): Run(
        _NIFTI + "_nifti('fixed.nii.gz', fixed); _nifti('moving.nii.gz', moving); _nifti('moving_seg.nii.gz', seg)\n"
        "_nifti('f.nii.gz', fixed); _nifti('m.nii.gz', moving)\n"
        "_initialised_run('runs/deqreg_oasis', 'deqreg')\n"),
    # The block above wrote out/; this one (a new section) starts from a folder without it.
    ("docs/quickstart.md", "jaxreg register --fixed fixed.nii.gz --moving moving.nii.gz \\"): Run(
        "import shutil; shutil.rmtree('out')\n_nifti('fixed_seg.nii.gz', fixed_seg)\n"),
    ("docs/quickstart.md", "jaxreg apply --transform out/ --image moving_seg.nii.gz --labels --out seg_on_fixed.nii.gz"): Run(
        "_nifti('fixed_atlas.nii.gz', fixed)\n"),
    # ``result`` is the page's last registration (the DiffuseReg one above); F: the fixed grid's affine.
    ("docs/quickstart.md", 'warped = jaxreg.apply("out/", moving_image)'): Run(
        "moving_image, fixed_image, F = moving, fixed, np.eye(4)\n"),
    # docs/register.md: two NIfTI files on different grids (the moving one cropped, its origin moved)
    ("docs/register.md", 'result = jaxreg.register("fixed.nii.gz", "moving.nii.gz", moving_labels="moving_seg.nii.gz")'): Run(
        _PAIR + _NIFTI + "_m_affine = np.eye(4); _m_affine[:3, 3] = (2.0, 0.0, 1.0)\n"
        "_nifti('fixed.nii.gz', fixed); _nifti('moving.nii.gz', moving[2:, :, 1:], _m_affine)\n"
        "_nifti('moving_seg.nii.gz', seg[2:, :, 1:].astype(np.int16), _m_affine)\n"),
    # docs/data.md
    ("docs/data.md", 'pair = synthetic_pair(jax.random.key(0), (64, 64, 64), anatomy="brain")'): Run(),
    ("docs/data.md", 'task = open_task("/data/NLST")'): Run(
        "from jaxreg.data.learn2reg import write_learn2reg\n"
        "write_learn2reg('data/NLST', task='NLST', num_cases=3, num_val=1, shape=(24, 24, 24))\n",
        subs=(("/data/NLST", "data/NLST"),)),
    ("docs/data.md", 'data = open_acdc("/data/ACDC/database", num_val=10)'): Run(
        "from jaxreg.data.acdc import write_acdc\n"
        "write_acdc('data/ACDC/database', num_train=11, num_test=1, shape=(16, 16, 4))\n",
        subs=(("/data/ACDC/database", "data/ACDC/database"),)),
    ("docs/data.md", "config.data = ml_collections.ConfigDict(dict("): Run(
        "import ml_collections\nconfig = ml_collections.ConfigDict()\n"),
    # docs/deqreg.md
    ("docs/deqreg.md", 'method = methods.build({"name": "deqreg"}, {"similarity": "lncc", "window": 5, "weight": 0.1},'): Run(
        "import jax, numpy as np\n"
        "key = jax.random.key(0)\n"
        "fixed = np.random.default_rng(0).random((1, 32, 32), np.float32)   # (B, H, W)\n"
        "moving = np.roll(fixed, 2, axis=1)\n"),
    # docs/diffusereg.md
    ("docs/diffusereg.md", 'run = load_run("runs/diffusereg_demo")'): Run(
        _WORKDIRS + "_initialised_run('runs/diffusereg_demo', 'diffusereg', shape=(16, 16, 16))\n"
        "fixed = np.random.default_rng(0).random((1, 16, 16, 16), np.float32)   # (B, D, H, W)\n"
        "moving = np.roll(fixed, 2, axis=1)\n"),
    # docs/jax.md: register under jit, vmap and grad (the page's own 48² synthetic pairs)
    ("docs/jax.md", 'pair = jaxreg.data.synthetic_pair(jax.random.key(0), (48, 48))'): Run(),
    ("docs/jax.md", 'fixed = jnp.stack([pair["fixed"], pair["moving"]])'): Run(),
    ("docs/jax.md", "def soft_dice_loss(log_weight, fixed, moving, fixed_labels, moving_labels):"): Run(),
    # docs/training.md: a metrics log as training writes it
    ("docs/training.md", 'val = read_metrics("runs/demo", split="val")'): Run(
        "from jaxreg.runs.writers import MetricWriter\n"
        "with MetricWriter('runs/demo', tensorboard=False) as _writer:\n"
        "    _writer.write(300, {'loss': 0.5})\n"
        "    _writer.write(300, {'dice': 0.7, 'folding': 0.0}, split='val')\n"
        "    _writer.write(600, {'dice': 0.75, 'folding': 0.0}, split='val')\n"),
}

_INSTALL = "installs packages into a new virtual environment"
_TRAINS = "trains for minutes (the demo); the tiny runs of tests/test_train_eval.py check these scripts"
NOT_RUN: dict[tuple[str, str], str] = {
    # README.md
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python train.py --config "
                  "configs/deqreg_demo.py --workdir runs/deqreg_demo && .venv/bin/python eval.py --workdir "
                  "runs/deqreg_demo"): "installs, then trains the DEQReg demo for ~22 min (.ci/run runs it)",
    ("README.md", 'python3 -m venv .venv && .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e ".[test]"'):
        _INSTALL,
    ("README.md", '.venv/bin/python -m pytest -q -n 2 --dist loadgroup -m "not slow" tests'):
        "runs the first test tier (this file is part of it)",
    ("README.md", ".venv/bin/python -m pytest -q -n 2 --dist loadgroup -m slow tests"):
        "runs the slow test tier (test_snippets_run is part of it)",
    ("README.md", '.venv/bin/pip install -e ".[test,cuda12]"'): "installs CUDA wheels and needs an NVIDIA GPU",
    # docs/conventions.md
    ("docs/conventions.md", "warped(x) = moving(x + ddf(x))"): "a formula, not code",
    # docs/data.md
    ("docs/data.md", "ROOT/"): "a folder layout, not code",
    ("docs/data.md", 'ds = open_neurite_oasis("/data/neurite-oasis.v1.0", workdir="runs/deqreg_oasis",'):
        "the default split 300/30/84 needs all 414 downloaded subjects",
    ("docs/data.md", "database/"): "a folder layout, not code",
    ("docs/data.md", 'for batch in from_config(config.data, "train", start_step=step):'):
        "an endless loop over the ACDC download",
    ("docs/data.md", "python -m jaxreg.data.tfds_builders --name learn2reg_nlst --manual_dir /data/NLST "
                     "--data_dir /shared/tfds"): "needs the NLST download and writes to /shared/tfds",
    # docs/deqreg.md
    ("docs/deqreg.md", "T(φ) = φ + f_θ(I_f, I_m∘φ, φ)        registration: φ* = T(φ*)"): "a formula, not code",
    ("docs/deqreg.md", "python train.py --config configs/deqreg_demo.py --workdir runs/deqreg_demo"): _TRAINS,
    ("docs/deqreg.md", "python train.py --config configs/unroll_demo.py:vanilla,3 --workdir runs/unroll_demo \\"):
        _TRAINS,
    ("docs/deqreg.md", "python benchmarks/convergence.py runs/deqreg_demo runs/unroll_demo_3x3 --steps "
                       "1,2,4,8,16,32,48,64,96"): "needs the two trained demo runs; minutes",
    ("docs/deqreg.md", "python benchmarks/memory.py --size 64 --skip-time"):
        "compiles training steps of many models at 64³: minutes",
    ("docs/deqreg.md", "python train.py --config configs/deqreg_demo.py --workdir runs/deqreg_demo_bf16 "
                       "--config.model.dtype=bfloat16"): _TRAINS,
    # docs/diffusereg.md
    ("docs/diffusereg.md", "MSE(ε̂, ε) + λ₁·(1 − SSIM(I_m∘φ̂₀, I_f)) + λ₂·diffusion(φ̂₀),   λ₁ = 1, λ₂ = 0.1"):
        "a formula, not code",
    ("docs/diffusereg.md", "python train.py --config configs/voxelmorph_demo.py:cardiac --workdir "
                           "runs/vxm_cardiac_demo"): _TRAINS,
    # docs/performance.md
    ("docs/performance.md", 'pip install -e ".[cuda12]"'): "installs CUDA wheels and benchmarks an NVIDIA GPU",
    # docs/quickstart.md
    ("docs/quickstart.md", "python3 -m venv .venv && .venv/bin/pip install -e ."): _INSTALL,
    ("docs/quickstart.md", "antsApplyTransforms -d 3 -r fixed.nii.gz -i moving.nii.gz -o warped_by_ants.nii.gz \\"):
        "needs the ANTs binaries (tests/test_transform.py checks the files with antspyx and SimpleITK)",
    ("docs/quickstart.md", "python docs/examples/register_2d.py"):
        "its first command reads the ANTs slices of ../shared/data (not shipped)",
    # docs/training.md
    ("docs/training.md", "python train.py --config configs/voxelmorph_demo.py --workdir runs/demo"): _TRAINS,
    ("docs/training.md", "python train.py --config configs/voxelmorph_demo.py --workdir runs/demo \\"): _TRAINS,
    ("docs/training.md", "W/config.json           the config of the run"): "a folder layout, not code",
    ("docs/training.md", "step 1200 val: dice 0.7742 ± 0.04663 | dice_before 0.5313 | folding 0 | sdlogj 0.2704"):
        "shows output, not a command",
    ("docs/training.md", '.venv/bin/pip install -e ".[cuda12]"'): "installs CUDA wheels and needs an NVIDIA GPU",
    ("docs/training.md", "XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py --config ... "
                         "--workdir ..."): "a pattern with `...` placeholders (tests/test_training.py runs 2 devices)",
    ("docs/training.md", "for i in 0 1; do"): "trains the demo in two processes for minutes (tests/test_multihost.py)",
    ("docs/training.md", "python train.py --config configs/deqreg_nlst.py --workdir /shared/runs/nlst \\"):
        "needs several hosts and the NLST download",
    ("docs/training.md", "srun python train.py --config configs/deqreg_nlst.py --workdir /shared/runs/nlst \\"):
        "needs a SLURM cluster",
    ("docs/training.md", "python eval.py --workdir W [--split test|val|train] [--step latest|best|N] [--save_disp]"):
        "a usage line with placeholders",
    ("docs/training.md", "$ python train.py --config configs/voxelmorph_demo.py --workdir W "
                         "--config.model.name=transmorph"): "a terminal transcript (commands with their output)",
}


# --------------------------------------------------------------------------------------------
# Tests


def test_every_block_is_in_one_table():
    problems = table_problems(all_blocks(), RUN, NOT_RUN)
    assert not problems, "\n".join(problems)


def _docs_with_runs() -> list[str]:
    return sorted({doc for doc, _ in RUN})


# Pages whose time is optimiser steps (registrations) run at XLA's default optimisation level:
# level 0, the test run's (conftest.py), compiles faster but runs such loops slower. The
# quickstart's page took 198 s at level 0 and 117 s at level 1 alone on the 2-core CPU; the
# pages that compile large programs (jax.md's gradient, data.md, diffusereg.md, deqreg.md) were
# 20-30 s slower each at the default level in the slow tier.
DEFAULT_XLA = {"README.md", "docs/quickstart.md"}


@pytest.mark.slow
@pytest.mark.parametrize("doc", _docs_with_runs())
def test_snippets_run(doc, tmp_path):
    # The pages' processes (and the CLI processes they start) inherit the test run's compilation
    # cache (conftest.py: JAX_COMPILATION_CACHE_DIR, which JAX reads at import).
    blocks = parse_blocks(ROOT / doc)
    steps = program(blocks, RUN)
    assert steps, doc
    start = time.perf_counter()
    out = run_steps(steps, tmp_path / "work", default_xla=doc in DEFAULT_XLA)
    log = out.stderr[-8000:] + out.stdout[-2000:]
    assert out.returncode == 0, f"{doc}: a snippet failed ({time.perf_counter() - start:.0f} s)\n{log}"
    assert "ALL OK" in out.stderr, log


_FAKE = """# A page

```python
x = 1
```

Some text.

```python
import sys
raise SystemExit(1)
```

```bash
echo "not reached"
```
"""


def test_runner_reports_a_failing_snippet(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(_FAKE, encoding="utf-8")
    blocks = parse_blocks(page, tmp_path)
    assert [(b.lang, b.key) for b in blocks] == [("python", "x = 1"), ("python", "raise SystemExit(1)"),
                                                ("bash", 'echo "not reached"')]
    run = {("docs/page.md", b.key): Run() for b in blocks}
    out = run_steps(program(blocks, run), tmp_path / "work")
    assert out.returncode != 0
    assert "FAILED: docs/page.md:9 [python] raise SystemExit(1)" in out.stderr
    assert "not reached" not in out.stdout + out.stderr
    # A failing shell command fails too, and a passing page passes.
    bash = [b for b in blocks if b.lang == "bash"]
    failing = {("docs/page.md", bash[0].key): Run(), ("docs/page.md", "x = 1"): Run()}
    out = run_steps(program(blocks, failing), tmp_path / "work2")
    assert out.returncode == 0 and "not reached" in out.stdout  # echo succeeds
    page.write_text("```bash\nfalse\necho after\n```\n", encoding="utf-8")
    blocks = parse_blocks(page, tmp_path)
    out = run_steps(program(blocks, {("docs/page.md", "false"): Run()}), tmp_path / "work3")
    assert out.returncode != 0 and "after" not in out.stdout and "FAILED" in out.stderr


def test_unlisted_and_stale_entries_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(_FAKE, encoding="utf-8")
    blocks = parse_blocks(page, tmp_path)
    run = {("docs/page.md", "x = 1"): Run()}
    not_run = {("docs/page.md", "raise SystemExit(1)"): "fails on purpose",
               ("docs/page.md", "gone = True"): "a block that was deleted"}
    problems = table_problems(blocks, run, not_run)
    assert len(problems) == 2, problems
    assert any("echo \"not reached\"" in p and "neither" in p for p in problems)
    assert any("'gone = True'" in p and "NOT_RUN names" in p for p in problems)
    both = {**run, ("docs/page.md", "raise SystemExit(1)"): Run()}
    assert any("in both" in p for p in table_problems(blocks, both, not_run))
    # Two blocks with one key are refused: their entries would be ambiguous.
    page.write_text("```python\nx = 1\n```\n\n```python\nimport os\nx = 1  # again\n```\n", encoding="utf-8")
    assert any("same key" in p for p in table_problems(parse_blocks(page, tmp_path), run, {}))
