"""The files of an evaluation: ``metrics.json``, ``per_pair.csv`` and ``summary.md``.

All three are written atomically (a crash leaves the previous version or none).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxreg.io import atomic_path

__all__ = ["summary_table", "write_json", "write_per_pair_csv", "write_summary"]

#: Columns of the summary table: (metric, header, scale, decimals). Like the papers' Table 1.
_COLUMNS = (
    ("dice", "Dice (%) ↑", 100.0, 2),
    ("hd95", "HD95 (mm) ↓", 1.0, 2),
    ("tre", "TRE (mm) ↓", 1.0, 2),
    ("folding", "\\|J\\|≤0 (%) ↓", 1.0, 3),
    ("sdlogj", "SDlogJ ↓", 1.0, 3),
    ("time_s", "Time / pair (s)", 1.0, 3),
)


def _clean(value):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path, payload: Mapping) -> None:
    """``payload`` as indented JSON (NaN/inf → null), atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(_clean(dict(payload)), indent=2, allow_nan=False) + "\n")


def write_per_pair_csv(path, rows: Sequence[Mapping]) -> None:
    """One row per pair, one column per metric (the union over rows, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _cell(summary: Mapping, name: str, scale: float, decimals: int) -> str:
    mean = summary.get(name)
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return "–"
    std = summary.get(f"{name}_std")
    text = f"{mean * scale:.{decimals}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std * scale:.{decimals}f}"
    return text


def summary_table(rows: Sequence[tuple[str, Mapping]]) -> str:
    """A Markdown table, one line per ``(method name, summary)``; empty columns left out."""
    columns = [c for c in _COLUMNS if any(summary.get(c[0]) is not None for _, summary in rows)]
    lines = ["| Method | " + " | ".join(c[1] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, summary in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(summary, c[0], c[2], c[3]) for c in columns) + " |")
    return "\n".join(lines)


def write_summary(path, *, title: str, summary: Mapping, labels: Sequence[str], details: Mapping[str, str],
                  label_names: Mapping[str, str] | None = None) -> None:
    """``summary.md``: the headline table (before vs after), Dice per label (named by ``label_names``), run details."""
    before = {k[: -len("_before")] if k.endswith("_before") else k[: -len("_before_std")] + "_std": v
              for k, v in summary.items() if k.endswith(("_before", "_before_std"))}
    rows = [("Before registration", before), (title, summary)] if before else [(title, summary)]
    text = [f"# {title}", "", summary_table(rows), ""]
    if labels:
        names = {str(k): v for k, v in (label_names or {}).items()}
        text += ["## Dice per label (%)", "", "| Label | Dice (%) ↑ | Before (%) |", "|---|---|---|"]
        text += [f"| {label}{f' ({names[str(label)]})' if str(label) in names else ''} | "
                 f"{_cell(summary, f'dice_{label}', 100.0, 2)} | {_cell(summary, f'dice_before_{label}', 100.0, 2)} |"
                 for label in labels]
        text.append("")
    text += ["## Run", ""] + [f"- {k}: {v}" for k, v in details.items()] + [""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(text))
