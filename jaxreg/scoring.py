"""Registration quality of predicted fields: the metrics of validation and evaluation.

``pair_metrics`` scores one registered pair from its record (labels, keypoints, spacing)
and the predicted field; ``summarize`` turns per-pair rows into means and standard
deviations. Training's periodic validation and ``jaxreg.evaluation`` both use them, so the
numbers in ``metrics.jsonl`` and in ``W/eval`` are the same quantities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxreg import metrics, spatial

__all__ = ["pair_metrics", "summarize"]


def pair_metrics(record: Mapping, ddf, *, labels: Sequence[int] | None = None, with_hd95: bool = True) -> dict[str, float]:
    """Metrics of one registered pair; each name says its direction.

    Args:
      record: a pair record (``jaxreg.data.pairs``): uses ``fixed_labels``/``moving_labels``,
        ``fixed_points``/``moving_points`` and ``spacing`` (mm) when present.
      ddf: ``(*S, ndim)`` predicted displacement (voxels, pull).
      labels: labels to score; default every nonzero label of the fixed and moving maps.
      with_hd95: also compute HD95 (a distance transform per label; slower).

    Returns:
      ``dice`` (mean over labels, higher better) and ``dice_<label>``, ``dice_before`` and
      ``dice_before_<label>`` (the unregistered pair), ``hd95`` (mm, lower better), ``tre``/``tre_before`` (mm, lower
      better, with keypoints), ``folding`` (% of voxels with |J| <= 0, lower better) and
      ``sdlogj`` (std of log|J|, lower better).
    """
    ddf = jnp.asarray(ddf, jnp.float32)
    ndim = ddf.shape[-1]
    spacing = np.asarray(record.get("spacing", np.ones(ndim)), np.float64).reshape(-1)[:ndim]
    out = {}
    if "fixed_labels" in record and "moving_labels" in record:
        fixed_labels = np.asarray(record["fixed_labels"])
        moving_labels = np.asarray(record["moving_labels"])
        if labels is None:
            labels = sorted(int(v) for v in np.union1d(np.unique(fixed_labels), np.unique(moving_labels)) if v)
        labels = [int(v) for v in labels]
        warped = np.asarray(spatial.warp(jnp.asarray(moving_labels), ddf, order=0, mode="nearest"))
        after = np.asarray(metrics.dice(fixed_labels, warped, labels=labels))
        before = np.asarray(metrics.dice(fixed_labels, moving_labels, labels=labels))
        out["dice"] = float(np.nanmean(after))
        out["dice_before"] = float(np.nanmean(before))
        out.update({f"dice_{label}": float(value) for label, value in zip(labels, after)})
        out.update({f"dice_before_{label}": float(value) for label, value in zip(labels, before)})
        if with_hd95:
            distances = metrics.hd95(fixed_labels, warped, spacing=spacing, labels=labels)
            out["hd95"] = float(np.nanmean(np.where(np.isfinite(distances), distances, np.nan)))
    if "fixed_points" in record and "moving_points" in record:
        fixed_points, moving_points = np.asarray(record["fixed_points"]), np.asarray(record["moving_points"])
        out["tre"] = float(jnp.mean(metrics.tre(fixed_points, moving_points, ddf, spacing=spacing)))
        out["tre_before"] = float(np.mean(np.linalg.norm((fixed_points - moving_points) * spacing, axis=-1)))
    out["folding"] = 100.0 * float(metrics.folding_fraction(ddf))
    out["sdlogj"] = float(metrics.sdlogj(ddf))
    return out


def summarize(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and standard deviation (``<name>_std``) of every numeric metric over pairs.

    NaNs (a label absent from a pair) are left out of that metric's statistics.
    """
    names = list(dict.fromkeys(k for row in rows for k in row if isinstance(row[k], (int, float))))
    out = {}
    for name in names:
        values = np.asarray([row.get(name, np.nan) for row in rows], np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(np.mean(finite)) if finite.size else float("nan")
        out[f"{name}_std"] = float(np.std(finite)) if finite.size else float("nan")
    return out
