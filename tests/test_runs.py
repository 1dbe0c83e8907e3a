"""jaxreg.runs.restore.load_run: the one loader of a trained workdir's parameters.

References: orbax's own reader of the checkpoint folder (``StandardCheckpointer`` on
``W/checkpoints/<step>/default``, no template), and the workdir's ``metrics.jsonl`` for "best".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxreg
from jaxreg.runs.restore import load_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny DEQReg run, trained 2 steps with a checkpoint at each step."""
    workdir = tmp_path_factory.mktemp("run")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny_deq.py"),
                          "--workdir", str(workdir), "--config.training.checkpoint_every=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir


def _orbax_params(workdir: Path, step: int) -> dict:
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "default")
    return state["ema_params"] if state.get("ema_params") is not None else state["params"]


def _assert_same_tree(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.xdist_group("runs_workdir")  # one trained `workdir` for all
def test_load_run_gives_the_saved_parameters_of_each_step(workdir):
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    for step in steps:
        run = load_run(workdir, step=step)
        assert run.step == step and run.config.model.name == "deqreg"
        _assert_same_tree(run.params, _orbax_params(workdir, step))
    latest = load_run(workdir)
    assert latest.step == steps[-1]
    # The steps' parameters differ (training moved them), so the step chosen matters.
    first = jax.tree.leaves(load_run(workdir, step=steps[0]).params)
    assert any(not np.array_equal(a, b) for a, b in zip(first, jax.tree.leaves(latest.params)))


@pytest.mark.xdist_group("runs_workdir")  # one trained `workdir` for all
def test_load_run_needs_neither_the_training_data_nor_the_optimiser(workdir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data"]["source"] = "folder"  # a dataset that is not there
    config["data"]["root"] = str(tmp_path / "no_such_data")
    (moved / "config.json").write_text(json.dumps(config))
    run = load_run(moved)
    _assert_same_tree(run.params, _orbax_params(moved, run.step))
    model = jaxreg.load_model(moved)  # the front door goes through load_run
    _assert_same_tree(model.params, run.params)
    assert model.step == run.step and model.workdir == moved


@pytest.mark.xdist_group("runs_workdir")  # one trained `workdir` for all
def test_params_are_replicated_on_the_mesh(workdir):
    from jaxreg import sharding

    mesh = sharding.make_mesh()
    run = load_run(workdir, mesh=mesh)
    for leaf in jax.tree.leaves(run.params):
        assert leaf.sharding.is_fully_replicated and set(leaf.sharding.device_set) == set(mesh.devices.flat)


@pytest.mark.xdist_group("runs_workdir")  # one trained `workdir` for all
def test_bad_workdirs_and_steps_say_what_is_wrong(workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 999"):
        load_run(workdir, step=999)
    with pytest.raises(ValueError, match="--step must be"):
        load_run(workdir, step="soon")
