"""End to end: train.py → checkpoints → resume (bit-identical) → eval.py files; CLI errors.

Uses tests/configs/tiny.py (16³ synthetic brains, 2-level U-Net, 6 steps).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from conftest import xla_flags

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.py")


def _run(script, *args, env=None, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _params(workdir, step):
    """Parameters of a checkpoint, read with orbax directly (not through jaxreg)."""
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(Path(workdir, "checkpoints", str(step), "default").absolute())
    return tree["params"], tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run, and one run stopped at step 3 then resumed to 6."""
    full, resumed = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("resumed")
    out_full = _run("train.py", f"--config={TINY}", f"--workdir={full}")
    assert out_full.returncode == 0, out_full.stderr[-3000:]
    first = _run("train.py", f"--config={TINY}", f"--workdir={resumed}", "--config.training.num_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run("train.py", f"--config={TINY}", f"--workdir={resumed}")
    assert second.returncode == 0, second.stderr[-3000:]
    return full, resumed, second


@pytest.mark.xdist_group("test_train_eval.trained")  # one worker builds the module fixture once
@pytest.mark.slow
def test_resumed_run_is_bit_identical(trained):
    full, resumed, second = trained
    assert "resumed" in second.stderr + second.stdout and "step 3" in second.stderr + second.stdout
    # Checkpoints every 3 steps and at the end: 3 and 6 (keep=2 latest).
    assert sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    a, tree_a = _params(full, 6)
    b, tree_b = _params(resumed, 6)
    leaves_a, leaves_b = _leaves(a), _leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)  # bit-identical, not merely close
    assert int(tree_a["step"]) == int(tree_b["step"]) == 6
    for x, y in zip(_leaves(tree_a["ema_params"]), _leaves(tree_b["ema_params"])):
        np.testing.assert_array_equal(x, y)
    # And training did something: step-6 params differ from step-3 params.
    early, _ = _params(full, 3)
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(early), leaves_a))


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    return [np.asarray(tree)]


@pytest.mark.xdist_group("test_train_eval.trained")  # one worker builds the module fixture once
@pytest.mark.slow
def test_metrics_log_and_tensorboard(trained):
    full, resumed, _ = trained
    for workdir in (full, resumed):
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        train_steps = [r["step"] for r in lines if r["split"] == "train"]
        val_steps = [r["step"] for r in lines if r["split"] == "val"]
        assert train_steps == [2, 3, 4, 6] if workdir == resumed else train_steps == [2, 4, 6]
        assert val_steps == [3, 6]
        for r in lines:
            if r["split"] == "val":
                assert 0.0 <= r["dice"] <= 1.0 and 0.0 <= r["dice_before"] <= 1.0 and r["folding"] >= 0.0
            else:
                assert np.isfinite(r["loss"]) and r["nonfinite"] == 0
        assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    saved = json.loads((full / "config.json").read_text())
    assert saved["training"]["num_steps"] == 6 and saved["model"]["encoder"] == [4, 8]


@pytest.mark.xdist_group("test_train_eval.trained")  # one worker builds the module fixture once
@pytest.mark.slow
def test_eval_pair_figures_get_the_voxel_spacing_3d(trained, tmp_path, monkeypatch):
    """The 3-D pair figures are drawn with each record's spacing (three orthogonal rows, true aspect)."""
    from jaxreg.data import pipeline
    from jaxreg.evaluation import evaluate, figures

    full, _, _ = trained
    calls = []
    monkeypatch.setattr(figures, "pair_figure", lambda path, *args, **kwargs: calls.append((path, args, kwargs)))
    evaluate.evaluate_workdir(full, progress=False, overrides=[f"eval.name={tmp_path.name}", "eval.save_disp=False"])
    config = evaluate.load_config(full)
    records = list(pipeline.records(config.data, "test", limit=2))
    assert len(calls) == 2 and all(np.ndim(args[0]) == 3 for _, args, _ in calls)  # 16³ volumes
    for (_, _, kwargs), record in zip(calls, records):
        assert "spacing" in kwargs and np.allclose(kwargs["spacing"], np.ravel(record["spacing"]))
        assert kwargs.get("axis") is None  # all three orthogonal slices


@pytest.mark.xdist_group("test_train_eval.trained")  # one worker builds the module fixture once
@pytest.mark.slow
def test_eval_writes_files_and_its_dice_matches_scipy(trained):
    full, _, _ = trained
    out = _run("eval.py", f"--workdir={full}", "--step=best")
    assert out.returncode == 0, out.stderr[-3000:]
    folder = full / "eval" / "test"
    result = json.loads((folder / "metrics.json").read_text())
    assert result["num_pairs"] == 3 and result["split"] == "test" and result["step"] in (3, 6)
    assert result["params"] == "ema" and result["time_per_pair_s"] > 0 and result["memory_mb"] > 0
    for name in ("dice", "dice_std", "dice_before", "hd95", "folding", "sdlogj"):
        assert result["metrics"][name] is not None, name
    with open(folder / "per_pair.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    summary = (folder / "summary.md").read_text()
    assert "| Method | Dice (%) ↑ | HD95 (mm) ↓" in summary and "Before registration" in summary
    pngs = sorted(p.name for p in (folder / "figures").glob("*.png"))
    assert len(pngs) == 3 and "dice_boxplot.png" in pngs  # 2 pair figures + the box plot

    # Independent check of the first pair: warp its labels with scipy using the written
    # Learn2Reg displacement file and compute Dice with numpy.
    import jax

    from jaxreg.data import synthetic_pair

    pair = synthetic_pair(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 2), 0), (16, 16, 16), num_labels=4)
    fixed_labels, moving_labels = np.asarray(pair["fixed_labels"]), np.asarray(pair["moving_labels"])
    disp = np.asarray(nib.load(folder / "disp" / f"disp_{rows[0]['pair']}.nii.gz").dataobj)
    coords = np.indices(fixed_labels.shape).astype(np.float64) + np.moveaxis(disp, -1, 0)
    warped = ndimage.map_coordinates(moving_labels, coords, order=0, mode="nearest")
    labels = [k for k in range(1, 5) if (fixed_labels == k).any() or (moving_labels == k).any()]

    def dice(a, b):
        return np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels])

    assert float(rows[0]["dice"]) == pytest.approx(dice(fixed_labels, warped), abs=1e-5)
    assert float(rows[0]["dice_before"]) == pytest.approx(dice(fixed_labels, moving_labels), abs=1e-5)
    assert result["metrics"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-9)


@pytest.mark.xdist_group("test_train_eval.trained")  # one worker builds the module fixture once
@pytest.mark.slow
def test_interrupted_checkpoint_write_keeps_the_previous_one(trained, tmp_path):
    """A half-written checkpoint (what a kill during saving leaves) is ignored and cleaned up."""
    import shutil

    from jaxreg.training import Checkpoints

    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    partial = workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234567890"
    partial.mkdir()
    (partial / "garbage").write_bytes(b"\x00" * 100)
    with Checkpoints(workdir / "checkpoints", every=3) as checkpoints:
        assert checkpoints.latest_step() == 6 and checkpoints.all_steps() == [3, 6]
    out = _run("eval.py", f"--workdir={workdir}", "--split=val")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((workdir / "eval" / "val" / "metrics.json").read_text())["step"] == 6
    # The next save of a resumed run removes the unfinished folder.
    with Checkpoints(workdir / "checkpoints", every=3) as checkpoints:
        checkpoints.save(9, {"w": np.zeros(2)}, force=True)
        checkpoints.wait()
        assert checkpoints.all_steps()[-1] == 9
    assert not partial.exists()


@pytest.mark.slow
def test_two_devices_train_through_the_mesh(tmp_path):
    out = _run("train.py", f"--config={TINY}", f"--workdir={tmp_path}", "--config.training.num_steps=2",
               "--config.training.eval_every=0", env={"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2")})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss"])


@pytest.mark.parametrize("script,args,message", [
    ("train.py", ["--config.model.name=transmorph"], "model.name"),
    ("train.py", ["--config.training.num_steps=abc"], "num_steps"),
    ("train.py", ["--config.data.source=learn2reg", "--config.data.root=/no/such/folder"], "/no/such/folder"),
    ("train.py", ["--config.data.source=mnist"], "data.source"),
    ("eval.py", [], "does not exist"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, script, args, message):
    workdir = tmp_path / "missing" if script == "eval.py" else tmp_path
    base = [f"--config={TINY}"] if script == "train.py" else []
    out = _run(script, *base, f"--workdir={workdir}", *args)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
