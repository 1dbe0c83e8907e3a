"""Multi-process training on one machine: 2 processes × 1 CPU device train like 1 process × 2 devices.

Each run starts ``train.py`` (and ``eval.py``) as real processes that join through JAX's
distributed runtime on a free localhost port. By hand, in two shells::

    python train.py --config tests/configs/tiny.py --workdir W --config.training.distributed=True \\
        --config.training.coordinator_address=127.0.0.1:23457 --config.training.num_processes=2 \\
        --config.training.process_id=0          # and process_id=1 in the other shell

The reference is one process with two simulated devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the same mesh, the same global
batches, so the parameters must agree to float tolerance. DiffuseReg's two-process run is in
``tests/test_diffusereg_workdir.py``: its reference is that module's DiffuseReg run, trained on
two simulated devices.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"
TIMEOUT = 900  # seconds for one launch of all processes (2 DiffuseReg compiles sharing 2 cores take ~5 min)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int = 1) -> dict:
    from conftest import xla_flags

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
    return env


def _launch(script: str, args: list[str], *, processes: int, timeout: int = TIMEOUT, extra=None):
    """Runs ``script`` in ``processes`` processes joined on a free port; returns their (rc, stdout, stderr).

    Each process writes to its own files, not a pipe: a process whose pipe is full (a verbose log)
    would block, and its peers with it in their next collective, while the first is waited on.
    """
    port = _free_port()
    procs, logs = [], []
    for index in range(processes):
        dist = [] if processes == 1 else [
            "--config.training.distributed=True", f"--config.training.coordinator_address=127.0.0.1:{port}",
            f"--config.training.num_processes={processes}", f"--config.training.process_id={index}",
            "--config.training.coordinator_timeout=120"]
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        logs.append((out, err))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / script), *args, *dist, *(extra or [])], cwd=ROOT,
                                      env=_env(1 if processes > 1 else 2), stdout=out, stderr=err, text=True))
    results = []
    try:
        for proc, (out, err) in zip(procs, logs):
            proc.wait(timeout=timeout)
            out.seek(0)
            err.seek(0)
            results.append((proc.returncode, out.read(), err.read()))
    finally:
        for proc in procs:  # never leave a process behind, whatever failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in (f for pair in logs for f in pair):
            log.close()
    return results


def _check(results):
    for index, (rc, out, err) in enumerate(results):
        assert rc == 0, f"process {index} exited {rc}:\n{out[-2000:]}\n{err[-4000:]}"


def _params(workdir: Path, step: int) -> dict:
    """Flattened parameters of a checkpoint, read with orbax directly (not through jaxreg)."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir, "checkpoints", str(step), "default").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    # As host numpy arrays: the checkpoint was saved over 2 devices, this process has 1.
    metadata = checkpointer.metadata(path).item_metadata.tree
    tree = checkpointer.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                                                metadata))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree["params"])}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _train(config: Path, workdir: Path, steps: int, *, processes: int, extra=()):
    _check(_launch("train.py", [f"--config={config}", f"--workdir={workdir}", f"--config.training.num_steps={steps}",
                                *extra], processes=processes))


@pytest.mark.slow
def test_two_processes_stop_resume_and_match_one_process_with_two_devices(tmp_path):
    config = CONFIGS / "tiny.py"
    two, one = tmp_path / "two", tmp_path / "one"
    _train(config, two, 3, processes=2)  # stop at step 3 ...
    _train(config, two, 6, processes=2)  # ... and resume to 6 from the checkpoint
    _train(config, one, 6, processes=1)
    difference = _max_difference(_params(two, 6), _params(one, 6))
    assert difference < 1e-5, difference
    # The parameters did change (the comparison is not of two initialisations).
    assert _max_difference(_params(one, 6), _params(one, 3)) > 1e-4
    # Logs are written once (process 0): one line per logged step, train and val.
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["split"], r["step"]) for r in lines]
    assert len(steps) == len(set(steps)), steps
    assert ("val", 6) in steps and ("train", 6) in steps

    # eval.py under the same flags: process 0 writes the same metrics as a one-process evaluation.
    _check(_launch("eval.py", [f"--workdir={two}", "--config.eval.name=two"], processes=2))
    _check(_launch("eval.py", [f"--workdir={two}", "--config.eval.name=one"], processes=1))
    a, b = (json.loads((two / "eval" / name / "metrics.json").read_text())["metrics"] for name in ("two", "one"))
    assert abs(a["dice"] - b["dice"]) < 1e-6 and abs(a["folding"] - b["folding"]) < 1e-9


@pytest.mark.slow
def test_deqreg_shards_like_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _train(CONFIGS / "tiny_deq.py", two, 2, processes=2)
    _train(CONFIGS / "tiny_deq.py", one, 2, processes=1)
    difference = _max_difference(_params(two, 2), _params(one, 2))
    assert difference < 1e-5, difference


@pytest.mark.parametrize("options, message", [
    (["--config.training.num_processes=2"], "needs `training.coordinator_address`"),
    (["--config.training.coordinator_address=127.0.0.1:1", "--config.training.num_processes=2",
      "--config.training.process_id=2"], "`training.process_id` must be in [0, 2)"),
    (["--config.training.coordinator_address=localhost", "--config.training.num_processes=2",
      "--config.training.process_id=0"], "must be 'host:port'"),
])
def test_bad_multiprocess_options_are_one_line_errors(tmp_path, options, message):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={CONFIGS / 'tiny.py'}",
                           f"--workdir={tmp_path / 'W'}", "--config.training.distributed=True", *options],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().startswith("error:") and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "W" / "checkpoints").exists()


def test_a_coordinator_that_never_answers_times_out_with_a_clear_error(tmp_path):
    port = _free_port()  # nobody listens here: process 1 waits for a process 0 that never comes
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={CONFIGS / 'tiny.py'}",
                           f"--workdir={tmp_path / 'W'}", "--config.training.distributed=True",
                           f"--config.training.coordinator_address=127.0.0.1:{port}",
                           "--config.training.num_processes=2", "--config.training.process_id=1",
                           "--config.training.coordinator_timeout=5"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not join the multi-process job") and "within 5 s" in last, last
