"""DiffuseReg end to end: a tiny teacher → train.py (statistics stored) → eval.py with sampler overrides; CLI errors.

The DiffuseReg run trains on two simulated devices in one process, so it is also the reference
of the same run over two processes (one device each), as ``tests/test_multihost.py`` checks the
other methods.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.py")
TINY_DR = str(ROOT / "tests" / "configs" / "tiny_diffusereg.py")

# Every test uses the `runs` module fixture (two train.py runs): one worker builds it once.
pytestmark = pytest.mark.xdist_group("test_diffusereg_workdir.runs")


def _run(script, *args, devices=1):
    from conftest import xla_flags

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    teacher, student = tmp_path_factory.mktemp("teacher"), tmp_path_factory.mktemp("diffusereg")
    out = _run("train.py", f"--config={TINY}", f"--workdir={teacher}", "--config.training.num_steps=2",
               "--config.training.eval_every=0")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("train.py", f"--config={TINY_DR}", f"--workdir={student}", f"--config.diffusion.teacher_workdir={teacher}",
               devices=2)
    assert out.returncode == 0, out.stderr[-3000:]
    return teacher, student


def _val_line(workdir: Path, step: int) -> dict:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in lines if r["split"] == "val" and r["step"] == step)


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(runs, tmp_path):
    # Its train step (Swin denoiser) and its validation (sampling from noise) over 2 processes
    # against the module's run: one process, 2 devices, the same mesh and global batches.
    from test_multihost import _launch, _check, _max_difference, _params

    teacher, one = runs
    two = tmp_path / "two"
    _check(_launch("train.py", [f"--config={TINY_DR}", f"--workdir={two}", "--config.training.num_steps=2",
                                f"--config.diffusion.teacher_workdir={teacher}"], processes=2))
    difference = _max_difference(_params(two, 2), _params(one, 2))
    assert difference < 1e-5, difference
    a, b = _val_line(two, 2), _val_line(one, 2)  # validation samples the same fields
    assert abs(a["dice"] - b["dice"]) < 1e-5 and abs(a["sdlogj"] - b["sdlogj"]) < 1e-5, (a, b)


@pytest.mark.slow
def test_training_stores_the_teacher_statistics(runs):
    _, student = runs
    stats = json.loads((student / "diffusion_stats.json").read_text())
    config = json.loads((student / "config.json").read_text())
    assert stats["pairs"] == 8 and len(stats["mean"]) == len(stats["std"]) == 3
    np.testing.assert_allclose(config["diffusion"]["mean"], stats["mean"])
    np.testing.assert_allclose(config["diffusion"]["std"], stats["std"])
    assert all(s > 0 for s in stats["std"])
    val = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" and "dice" in r for r in val)
    assert any(r["split"] == "train" and {"eps_mse", "ssim", "smoothness"} <= set(r) for r in val)


@pytest.mark.slow
def test_eval_writes_sampler_figures_and_takes_overrides(runs):
    _, student = runs
    out = _run("eval.py", f"--workdir={student}", "--config.diffusion.sampler.steps=2", "--config.eval.name=ddim2",
               "--config.eval.limit=2")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((student / "eval" / "ddim2" / "metrics.json").read_text())
    assert result["model"] == "diffusereg" and result["num_pairs"] == 2
    assert result["sampler"]["steps"] == 2 and result["sampler"]["method"] == "ddim"
    assert result["uncertainty"]["samples"] == 2 and result["uncertainty"]["mean_std_voxels"] > 0
    assert {"dice", "folding", "dice_1"} <= set(result["metrics"])
    figures = student / "eval" / "ddim2" / "figures"
    assert (figures / "sampling.png").stat().st_size > 1000 and (figures / "uncertainty.png").stat().st_size > 1000
    assert "ddim, 2 steps" in (student / "eval" / "ddim2" / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--config.diffusion.sampler.steps=21",), "steps"),
    (("--config.diffusion.sampler.guidance.wiggle=1.0",), "no field"),
    (("--config.diffusion.sampler.guidance={'wiggle': 1.0}",), "unknown guidance term 'wiggle'"),
    (("--config.diffusion.nonsense=1",), "no field 'diffusion.nonsense'"),
])
def test_eval_bad_sampler_options_are_one_line_errors(runs, args, message):
    _, student = runs
    out = _run("eval.py", f"--workdir={student}", *args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_train_with_a_bad_teacher_is_a_one_line_error(runs, tmp_path):
    _, student = runs
    for teacher, message in ((tmp_path / "missing", "does not exist"), (student, "holds a 'diffusereg' model")):
        out = _run("train.py", f"--config={TINY_DR}", f"--workdir={tmp_path / 'w'}",
                   f"--config.diffusion.teacher_workdir={teacher}")
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_resuming_with_another_image_token_wiring_is_a_one_line_error(runs):
    """The run trained with the default model.image_tokens=input; resuming its checkpoints with "output"
    would load the same parameters into another network: refused before config.json is rewritten."""
    teacher, student = runs
    saved = (student / "config.json").read_text()
    assert json.loads(saved)["model"]["image_tokens"] == "input"
    out = _run("train.py", f"--config={TINY_DR}", f"--workdir={student}", f"--config.diffusion.teacher_workdir={teacher}",
               "--config.model.image_tokens=output")
    assert out.returncode != 0 and "--config.model.image_tokens=input" in out.stderr and "Traceback" not in out.stderr, \
        out.stderr[-2000:]
    assert (student / "config.json").read_text() == saved


@pytest.mark.slow
def test_register_front_door_samples_with_a_diffusereg_workdir(runs):
    import jax

    import jaxreg

    _, student = runs
    rng = np.random.default_rng(0)
    fixed, moving = rng.uniform(size=(2, 12, 16, 16)).astype(np.float32)  # padded to 16³ inside
    result = jaxreg.register(fixed, moving, model=student, steps=2, eta=1.0, key=jax.random.key(3))
    again = jaxreg.register(fixed, moving, model=student, steps=2, eta=1.0, key=jax.random.key(3))
    other = jaxreg.register(fixed, moving, model=student, steps=2, eta=1.0, key=jax.random.key(4))
    assert result.ddf.shape == (12, 16, 16, 3) and result.info["method"] == "diffusereg"
    np.testing.assert_array_equal(np.asarray(result.ddf), np.asarray(again.ddf))  # the key decides the sample
    assert not np.allclose(np.asarray(result.ddf), np.asarray(other.ddf))
    with pytest.raises(ValueError, match="unknown sampler option"):
        jaxreg.register(fixed, moving, model=student, temperature=2.0)
