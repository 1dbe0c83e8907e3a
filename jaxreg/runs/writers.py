"""How training logs metrics: JSON lines (always) and TensorBoard (optional, no TF needed).

``workdir/metrics.jsonl`` holds one JSON object per `MetricWriter.write` call,
``{"step": ..., "split": ..., "time": <unix seconds>, name: value, ...}``, flushed line by
line; non-finite values are written as ``null`` (``NaN``/``Infinity`` are not JSON).
TensorBoard events (``simple_value``, tag ``"<split>/<name>"``, one event per call) go
to ``workdir/tensorboard`` through ``tensorboardX``, also flushed at every call.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxreg.io import atomic_path

__all__ = ["MetricWriter", "read_metrics", "summary_line"]

_RESERVED = ("step", "split", "time")


def _scalar(name: Any, value: Any, func: str) -> int | float:
    """A Python int (integers, bools) or float from a 0-d number; ValueError naming the key."""
    a = np.asarray(value)  # also pulls a jax scalar to the host
    if a.ndim != 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{func}: metric {name!r} must be a real scalar; got {type(value).__name__} "
                         f"of shape {a.shape} and dtype {a.dtype}")
    return int(a) if np.issubdtype(a.dtype, np.integer) or a.dtype == bool else float(a)


def _check_step(step: Any, func: str, arg: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{func}: `{arg}` must be a non-negative integer; got {step!r}")
    return int(step)


def _parse_lines(text: str, path: str) -> list[tuple[str, dict]]:
    """(line, record) pairs of a metrics.jsonl text; a broken last line (a crash mid-write) is dropped."""
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or type(record.get("step")) is not int:
                raise ValueError("no integer 'step'")
        except ValueError as e:
            if all(not rest.strip() for rest in lines[i + 1:]):
                break  # truncated last line
            raise ValueError(f"line {i + 1} of {path!r} is not a metrics record ({e})") from e
        records.append((line, record))
    return records


class MetricWriter:
    """Writes scalar metrics of a run to ``workdir/metrics.jsonl`` and TensorBoard.

    Args:
      workdir: the run directory (created if missing).
      tensorboard: also write TensorBoard events to ``workdir/tensorboard``.
      start_step: when resuming from a checkpoint at this step, lines of metrics.jsonl
        with a larger step (written after that checkpoint by the crashed run) are
        dropped first; the file is rewritten atomically. None keeps every line. Either
        way a truncated last line left by a crash is removed before appending.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, start_step: int | None = None):
        if start_step is not None:
            start_step = _check_step(start_step, "MetricWriter", "start_step")
        self.workdir = os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.path = os.path.join(self.workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            lines = _parse_lines(text, self.path)
            if start_step is not None:
                lines = [(line, r) for line, r in lines if r["step"] <= start_step]
            kept = "".join(line + "\n" for line, _ in lines)
            if kept != text:
                with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                    f.write(kept)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._tb = None
        if tensorboard:
            # Synchronous (SummaryWriter's thread writes queued events only every `flush_secs`,
            # whatever flush() says); its file name plus a random suffix, as it opens with "wb"
            # and a run restarted within the same second would overwrite the previous file.
            from tensorboardX.event_file_writer import EventsWriter

            logdir = os.path.join(self.workdir, "tensorboard")
            os.makedirs(logdir, exist_ok=True)
            self._tb = EventsWriter(os.path.join(logdir, "events"), f".{secrets.token_hex(4)}")

    def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
        """Appends one record of scalar metrics.

        Args:
          step: the training step (non-negative integer).
          metrics: name -> real scalar (Python number, 0-d NumPy or JAX array).
          split: e.g. ``"train"`` or ``"val"``; the TensorBoard tag is ``f"{split}/{name}"``.

        Raises:
          ValueError: naming the culprit: a value that is not a real scalar, a name that is
            empty, not a string or reserved (step, split, time), a bad step or split, or a closed writer.
        """
        if self._file is None:
            raise ValueError("MetricWriter.write: the writer is closed")
        step = _check_step(step, "MetricWriter.write")
        if not isinstance(split, str) or not split:
            raise ValueError(f"MetricWriter.write: `split` must be a non-empty string; got {split!r}")
        values = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name or name in _RESERVED:
                raise ValueError(f"MetricWriter.write: metric names must be non-empty strings other than "
                                 f"{_RESERVED}; got {name!r}")
            values[name] = _scalar(name, value, "MetricWriter.write")
        finite = {k: v if isinstance(v, int) or math.isfinite(v) else None for k, v in values.items()}
        record = {"step": step, "split": split, "time": time.time(), **finite}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            from tensorboardX.proto import event_pb2, summary_pb2

            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=v) for k, v in values.items()])
            self._tb.write_event(event_pb2.Event(wall_time=record["time"], step=step, summary=summary))
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both outputs; closing twice is harmless."""
        for out in (self._file, self._tb):
            if out is not None:
                out.close()
        self._file = self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike, *, split: str | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in file order.

    Args:
      workdir: the run directory.
      split: keep only records of this split (None: all).

    Returns:
      One dict per line, ``{"step", "split", "time", **metrics}``; non-finite values come
      back as None. A truncated last line (a crash while writing) is skipped.

    Raises:
      FileNotFoundError: there is no metrics.jsonl in ``workdir``.
      ValueError: a line other than the last is not a metrics record.
    """
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_metrics: no metrics file {path!r}; is `workdir` a training run directory?")
    with open(path, encoding="utf-8") as f:
        records = [r for _, r in _parse_lines(f.read(), path)]
    return [r for r in records if split is None or r.get("split") == split]


def summary_line(step: int, metrics: Mapping[str, Any], *, split: str = "val") -> str:
    """One human-readable line, e.g. ``"step 1200 val: dice 0.812 ± 0.031 | loss 0.123"``.

    Items ``"name value"`` in insertion order, joined by ``" | "``; floats with 4
    significant digits (``.4g``), integers exactly. A key ``"x_std"`` is shown as
    ``"x value ± std"`` in the item of ``"x"`` when ``"x"`` is present.

    Raises:
      ValueError: a value is not a real scalar.
    """
    values = {str(k): _scalar(k, v, "summary_line") for k, v in metrics.items()}
    fmt = {k: str(v) if isinstance(v, int) else f"{v:.4g}" for k, v in values.items()}
    items = [
        f"{k} {fmt[k]}" + (f" ± {fmt[k + '_std']}" if k + "_std" in fmt else "")
        for k in fmt
        if not (k.endswith("_std") and k[:-4] in fmt)
    ]
    return f"step {step} {split}: " + " | ".join(items)
