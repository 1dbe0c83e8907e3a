"""Tests of jaxreg.runs.writers: metrics.jsonl, TensorBoard events, resume, summary line.

The TensorBoard event file is read here independently of the writer: the TFRecord framing
(``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)``,
little endian) with `struct` and a CRC-32C written out below, the records with the
``Event`` protobuf. metrics.jsonl is read with the standard `json` module, refusing the
non-standard ``NaN``/``Infinity`` constants.
"""

import glob
import json
import math
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxreg.runs.writers import MetricWriter, read_metrics, summary_line

# --- independent readers -------------------------------------------------------------


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_reference():
    assert _crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


def _read_records(path) -> list[bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    records, pos = [], 0
    while pos < len(raw):
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert length_crc == _masked_crc(header)
        data = raw[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert len(data) == length and data_crc == _masked_crc(data)
        records.append(data)
        pos += 16 + length
    return records


def _scalars(workdir) -> list[tuple[str, int, float]]:
    """(tag, step, simple_value) of every scalar in the run's event files."""
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
    assert files
    out = []
    for path in files:
        for data in _read_records(path):
            event = event_pb2.Event.FromString(data)
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def _strict_json_lines(path) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


# --- tests -----------------------------------------------------------------------------


def test_jsonl_and_tensorboard_hold_what_was_written(tmp_path):
    t0 = time.time()
    with MetricWriter(tmp_path) as w:
        w.write(10, {"loss": np.float32(0.25), "lr": 1e-4, "pairs": 3})
        w.write(20, {"loss": jnp.asarray(0.125), "grad_norm": np.array(7.5, np.float64)})
        # flushed at every call: both files are complete before close()
        assert len(_strict_json_lines(tmp_path / "metrics.jsonl")) == 2
        assert len(_scalars(tmp_path)) == 5
        w.write(20, {"dice": jnp.float32(0.75), "bad": float("nan"), "big": np.inf}, split="val")
    t1 = time.time()

    lines = _strict_json_lines(tmp_path / "metrics.jsonl")
    for line in lines:
        assert t0 <= line.pop("time") <= t1
    assert lines == [
        {"step": 10, "split": "train", "loss": 0.25, "lr": 1e-4, "pairs": 3},
        {"step": 20, "split": "train", "loss": 0.125, "grad_norm": 7.5},
        {"step": 20, "split": "val", "dice": 0.75, "bad": None, "big": None},
    ]
    assert isinstance(lines[0]["pairs"], int)

    scalars = _scalars(tmp_path)
    expected = [("train/loss", 10, 0.25), ("train/lr", 10, 1e-4), ("train/pairs", 10, 3.0),
                ("train/loss", 20, 0.125), ("train/grad_norm", 20, 7.5), ("val/dice", 20, 0.75)]
    assert [s[:2] for s in scalars[:6]] == [e[:2] for e in expected]
    for (_, _, got), (_, _, want) in zip(scalars, expected):
        assert got == np.float32(want)  # simple_value is a float32
    assert scalars[6][:2] == ("val/bad", 20) and math.isnan(scalars[6][2])
    assert scalars[7][:2] == ("val/big", 20) and scalars[7][2] == math.inf
    assert len(scalars) == 8


def test_resume_drops_lines_after_the_checkpoint(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 6):
            w.write(step, {"loss": 1.0 / step})
    path = tmp_path / "metrics.jsonl"
    before = path.read_text().splitlines(keepends=True)
    with open(path, "a") as f:
        f.write('{"step": 6, "split": "tr')  # the crashed run died mid-line
    with MetricWriter(tmp_path, tensorboard=False, start_step=3) as w:
        assert path.read_text() == "".join(before[:3])  # earlier lines kept byte for byte
        w.write(4, {"loss": 0.3})
    lines = _strict_json_lines(path)
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.3)]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


def test_reopen_without_start_step_keeps_lines_and_drops_a_partial_one(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write(1, {"a": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "a"')
    with MetricWriter(tmp_path) as w:  # a second event file in the same second must not clobber the first
        w.write(2, {"a": 2.0})
    assert [(r["step"], r["a"]) for r in _strict_json_lines(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 2.0)]
    assert sorted(_scalars(tmp_path)) == [("train/a", 1, 1.0), ("train/a", 2, 2.0)]


def test_read_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path)
    rows = [{"step": 1, "split": "train", "time": 1.5, "loss": 2.0},
            {"step": 1, "split": "val", "time": 1.6, "dice": None},
            {"step": 2, "split": "train", "time": 1.7, "loss": 1.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "spl')  # truncated last line
    assert read_metrics(tmp_path) == rows
    assert read_metrics(tmp_path, split="train") == [rows[0], rows[2]]
    assert read_metrics(tmp_path, split="val") == [rows[1]]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "spl\n' + text)  # corrupt line in the middle
    with pytest.raises(ValueError, match="line 1"):
        read_metrics(tmp_path)


def test_bad_values_raise_and_write_nothing(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write(1, {"ok": 1.0})
        for bad in [np.zeros(2), jnp.ones((1,)), "0.5", 1 + 2j, None]:
            with pytest.raises(ValueError, match="'dice'"):
                w.write(2, {"loss": 0.5, "dice": bad})
        for name in ["step", "time", "", 3]:
            with pytest.raises(ValueError, match="metric names"):
                w.write(2, {name: 0.5})
        with pytest.raises(ValueError, match="`step`"):
            w.write(-1, {"loss": 0.5})
        with pytest.raises(ValueError, match="`split`"):
            w.write(2, {"loss": 0.5}, split="")
    assert [r["step"] for r in _strict_json_lines(tmp_path / "metrics.jsonl")] == [1]
    assert _scalars(tmp_path) == [("train/ok", 1, 1.0)]
    with pytest.raises(ValueError, match="closed"):
        w.write(3, {"loss": 0.5})
    w.close()  # twice is fine
    with pytest.raises(ValueError, match="start_step"):
        MetricWriter(tmp_path, start_step=-2)


def test_summary_line():
    metrics = {"dice": 0.81234, "dice_std": np.float32(0.03125), "hd95": jnp.asarray(2.41), "folding": 5e-4,
               "loss": 0.12344, "pairs": 30, "tre_std": 1.0}
    assert summary_line(1200, metrics) == (
        "step 1200 val: dice 0.8123 ± 0.03125 | hd95 2.41 | folding 0.0005 | loss 0.1234 | pairs 30 | tre_std 1"
    )
    assert summary_line(7, {"loss": 123456.0}, split="train") == "step 7 train: loss 1.235e+05"
    with pytest.raises(ValueError, match="'hd95'"):
        summary_line(1, {"hd95": np.ones(3)})
