"""Learn2Reg challenge metrics, computed exactly as the official evaluation does.

Reference: the Learn2Reg evaluation script (repository ``MDL-UzL/L2R``, files
``evaluation/evaluation.py`` and ``evaluation/utils.py``) and the DeepMind
``surface-distance`` package it calls for HD95. This is an independent NumPy/SciPy
implementation of the same definitions; ``docs/metrics.md`` lists every place
where they differ from the textbook ones. In short:

* Fields are ``(D, H, W, 3)`` displacements in voxels, array axis order, pull
  convention (``warped(x) = moving(x + disp(x))``), as in a Learn2Reg ``disp_*.nii.gz``
  file; they are converted to float64, which is what ``nibabel``'s ``get_fdata`` hands
  the official script.
* Labels are warped with nearest-neighbour ``map_coordinates(order=0)``, zero outside.
* DSC and HD95 are NaN for a label absent from the fixed or the moving labels and
  averaged with ``nanmean``. HD95 uses unit spacing whatever the voxel size, and is
  ``inf`` when the warped label is empty.
* TRE samples the field at the fixed keypoints with cubic splines (``order=3``) and
  scales the residual by the *moving* image spacing.
* SDlogJ is ``std(log(clip(det J + 3, 1e-9, 1e9)))`` over the field less a 2-voxel
  border; the official folding count is taken after that offset and clip, so it is
  always 0.

Everything runs on the host (NumPy); these are evaluations of files, not training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from jaxreg.evaluation import _surface
from jaxreg.evaluation._l2r_checks import _real_array, _disp, _label_volume, _label_list, _points
from jaxreg.evaluation._surface import surfel_area_table

__all__ = [
    "aggregate",
    "dice",
    "evaluate_pair",
    "hd95",
    "jacobian_determinant",
    "log_jac_det_std",
    "num_foldings",
    "surfel_area_table",
    "tre",
    "upsample_disp",
    "warp_labels",
]

HD_PERCENT = 95.0  # robust Hausdorff percentile
JAC_OFFSET = 3.0  # added to det J before the log
JAC_CLIP = (1e-9, 1e9)  # clip of det J + JAC_OFFSET
JAC_CROP = 2  # voxels dropped on every side of the Jacobian map


# ------------------------------------------------------------------- warp, DSC, HD95


def warp_labels(moving_labels: ArrayLike, disp: ArrayLike) -> np.ndarray:
    """Warps a label volume with a Learn2Reg displacement field, as the official script does.

    ``scipy.ndimage.map_coordinates(moving, identity + disp, order=0)`` with its
    defaults: nearest neighbour, zero (background) outside the moving volume.

    Args:
      moving_labels: ``(D', H', W')`` integer labels of the moving image.
      disp: ``(D, H, W, 3)`` displacement in voxels, array axis order, on the fixed grid.

    Returns:
      ``(D, H, W)`` warped labels, dtype of ``moving_labels`` (bool becomes uint8).
    """
    moving = _label_volume(moving_labels, "moving_labels", "warp_labels")
    u = _disp(disp, "warp_labels")
    coords = np.indices(u.shape[:3]) + np.moveaxis(u, -1, 0)
    return ndimage.map_coordinates(moving, coords, order=0)


def _presence_checked(fixed_labels, moving_labels, warped_labels, labels, func):
    fixed = _label_volume(fixed_labels, "fixed_labels", func)
    moving = _label_volume(moving_labels, "moving_labels", func)
    warped = _label_volume(warped_labels, "warped_labels", func)
    if warped.shape != fixed.shape:
        raise ValueError(
            f"{func}: `warped_labels` must have the shape of `fixed_labels` {fixed.shape}; got {warped.shape}"
        )
    labels = _label_list(labels, func)
    present = [bool((fixed == i).any() and (moving == i).any()) for i in labels]
    return fixed, warped, labels, present


def _nanmean(values: list[float]) -> float:
    if all(np.isnan(v) for v in values):
        return float("nan")  # the official np.nanmean gives NaN too (plus a RuntimeWarning)
    return float(np.nanmean(values))


def dice(
    fixed_labels: ArrayLike, moving_labels: ArrayLike, warped_labels: ArrayLike, labels: Sequence[int]
) -> tuple[float, list[float]]:
    """Learn2Reg Dice similarity coefficient (``DSC``). Higher is better, in [0, 1].

    Per label ``i``: ``2 |F_i & W_i| / (|F_i| + |W_i|)`` with ``F = fixed_labels``,
    ``W = warped_labels``; NaN when label ``i`` is absent from ``fixed_labels`` or from
    ``moving_labels`` (the *unwarped* moving labels). The mean skips NaNs.

    Args:
      fixed_labels: ``(D, H, W)`` integer labels of the fixed image.
      moving_labels: ``(D', H', W')`` integer labels of the moving image, before warping.
      warped_labels: ``(D, H, W)`` moving labels warped to the fixed grid
        (see `warp_labels`).
      labels: the label values to score, e.g. ``range(1, 36)`` for OASIS.

    Returns:
      ``(mean, per_label)``: the NaN-skipping mean and the list of per-label values.
    """
    fixed, warped, labels, present = _presence_checked(fixed_labels, moving_labels, warped_labels, labels, "dice")
    out = []
    for i, ok in zip(labels, present):
        if not ok:
            out.append(float("nan"))
            continue
        f, w = fixed == i, warped == i
        out.append(float(2 * np.count_nonzero(f & w) / (np.count_nonzero(f) + np.count_nonzero(w))))
    return _nanmean(out), out


def hd95(
    fixed_labels: ArrayLike, moving_labels: ArrayLike, warped_labels: ArrayLike, labels: Sequence[int]
) -> tuple[float, list[float]]:
    """Learn2Reg 95th-percentile Hausdorff distance (``HD95``). Lower is better.

    Per label: surfels (surface elements) of the fixed and warped label are the
    voxel corners whose 2x2x2 neighbourhood is neither empty nor full, each weighted
    by its marching-cubes area (`surfel_area_table`). Each surfel's distance to the
    nearest surfel of the other surface is measured with **unit spacing** (voxels, not
    mm, whatever the image spacing). For each direction the distances are sorted, the
    areas accumulated and normalised, and the first distance whose cumulative area
    reaches 95 % is taken (``searchsorted``); the result is the larger of the two
    directions. NaN when the label is absent from ``fixed_labels`` or
    ``moving_labels``; ``inf`` when the warped label is empty. The mean skips NaNs
    (so one ``inf`` makes it ``inf``).

    Args:
      fixed_labels: ``(D, H, W)`` integer labels of the fixed image.
      moving_labels: ``(D', H', W')`` integer labels of the moving image, before warping.
      warped_labels: ``(D, H, W)`` moving labels warped to the fixed grid.
      labels: the label values to score.

    Returns:
      ``(mean, per_label)`` in voxels.
    """
    fixed, warped, labels, present = _presence_checked(fixed_labels, moving_labels, warped_labels, labels, "hd95")
    out = [
        float(_surface.directed_percentile_hd(fixed == i, warped == i, HD_PERCENT)) if ok else float("nan")
        for i, ok in zip(labels, present)
    ]
    return _nanmean(out), out


# ------------------------------------------------------------------------------- TRE


def tre(
    fixed_points: ArrayLike, moving_points: ArrayLike, disp: ArrayLike, *, moving_spacing: Sequence[float]
) -> tuple[float, np.ndarray]:
    """Learn2Reg target registration error (``TRE``). Lower is better, in mm.

    ``|| (p_f + disp(p_f) - p_m) * moving_spacing ||`` per keypoint pair, where
    ``disp(p_f)`` is a cubic-spline interpolation (``map_coordinates`` defaults:
    ``order=3``, ``mode="constant"``) of each displacement component at the fixed
    point. The fixed spacing is not used. ``moving_spacing`` is cast to float32, as
    NIfTI stores it (``header.get_zooms()``), so values such as 0.7 match bit for bit.

    Args:
      fixed_points: ``(N, 3)`` keypoints in fixed-image voxel coordinates, array axis order.
      moving_points: ``(N, 3)`` corresponding keypoints in moving-image voxel coordinates.
      disp: ``(D, H, W, 3)`` displacement in voxels on the fixed grid.
      moving_spacing: voxel size of the moving image in mm, 3 values in array axis order.

    Returns:
      ``(mean, per_point)``: the case value the official script reports (mean over
      points) and the ``(N,)`` per-point errors in mm.
    """
    fp = _points(fixed_points, "fixed_points", "tre")
    mp = _points(moving_points, "moving_points", "tre")
    if mp.shape != fp.shape:
        raise ValueError(f"tre: `moving_points` must have the shape of `fixed_points` {fp.shape}; got {mp.shape}")
    u = _disp(disp, "tre")
    spacing = np.asarray(moving_spacing, dtype=np.float32)
    if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"tre: `moving_spacing` must be 3 positive numbers (mm); got {moving_spacing!r}")
    at_points = np.stack([ndimage.map_coordinates(u[..., k], fp.T) for k in range(3)], axis=1)
    per_point = np.linalg.norm((fp + at_points - mp) * spacing, axis=1)
    return float(per_point.mean()), per_point


# ------------------------------------------------------------------------ Jacobians


def jacobian_determinant(disp: ArrayLike) -> np.ndarray:
    """Jacobian determinant of ``x + disp(x)`` as the Learn2Reg script computes it.

    Central differences ``(u[i+1] - u[i-1]) / 2`` along each axis (the script's
    ``[-0.5, 0, 0.5]`` correlation), determinant by cofactor expansion, and a border of
    2 voxels dropped on every side (which also removes every value touched by the
    script's zero padding).

    Args:
      disp: ``(D, H, W, 3)`` displacement in voxels, D, H, W >= 5.

    Returns:
      ``(D - 4, H - 4, W - 4)`` float64 determinants (no offset, no clipping).
    """
    u = _disp(disp, "jacobian_determinant", min_size=2 * JAC_CROP + 1)
    c = JAC_CROP
    inner = tuple(slice(c, n - c) for n in u.shape[:3])

    def d(axis: int, comp: int) -> np.ndarray:  # d u_comp / d x_axis on the inner region
        hi, lo = list(inner), list(inner)
        hi[axis] = slice(c + 1, u.shape[axis] - c + 1)
        lo[axis] = slice(c - 1, u.shape[axis] - c - 1)
        return (u[(*hi, comp)] - u[(*lo, comp)]) * 0.5

    # j[a][b] = delta_ab + d u_b / d x_a (the transpose of the usual Jacobian; same det)
    j = [[d(a, b) + (1.0 if a == b else 0.0) for b in range(3)] for a in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
        + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1])
    )


def _offset_jacobian(disp: ArrayLike) -> np.ndarray:
    return np.clip(jacobian_determinant(disp) + JAC_OFFSET, *JAC_CLIP)


def log_jac_det_std(disp: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Learn2Reg ``LogJacDetStd`` (SDlogJ). Lower is better (smoother field).

    ``std(log(clip(det J + 3, 1e-9, 1e9)))`` over the 2-voxel-cropped map of
    `jacobian_determinant` (population std, ddof 0). Note the ``+ 3``: an identity
    field gives ``std(log 4) = 0``, and the value is *not* the std of ``log det J``.

    Args:
      disp: ``(D, H, W, 3)`` displacement in voxels, D, H, W >= 5.
      mask: optional ``(D, H, W)`` fixed-image mask (Learn2Reg ``masksTr``); as in the
        official ``np.ma.MaskedArray(log_j, 1 - mask)``, only voxels where
        ``mask == 1`` count.

    Returns:
      The standard deviation; NaN if the mask keeps no voxel of the cropped region.
    """
    log_j = np.log(_offset_jacobian(disp))
    if mask is None:
        return float(log_j.std())
    m = np.asarray(mask)
    m = _real_array(m.astype(np.float64) if m.dtype == bool else m, "mask", "log_jac_det_std")
    shape = np.asarray(disp).shape[:3]
    if m.shape != shape:
        raise ValueError(f"log_jac_det_std: `mask` must have the field's spatial shape {shape}; got {m.shape}")
    c = JAC_CROP
    m = m.astype(np.float64)[c:-c, c:-c, c:-c]
    if not (m == 1).any():
        return float("nan")
    return float(np.ma.MaskedArray(log_j, 1 - m).std())


def num_foldings(disp: ArrayLike) -> float:
    """The official ``num_foldings``: count of ``clip(det J + 3, 1e-9, 1e9) <= 0``.

    Because the count is taken after the offset and clip, it is 0 for every field;
    it is reproduced as the script reports it. The conventional folding count is
    ``(jacobian_determinant(disp) <= 0).sum()``.

    Args:
      disp: ``(D, H, W, 3)`` displacement in voxels, D, H, W >= 5.

    Returns:
      The count, as a float (0.0).
    """
    return float(np.count_nonzero(_offset_jacobian(disp) <= 0))


# ------------------------------------------------------------------------ utilities


def upsample_disp(disp: ArrayLike, *, factor: int = 2) -> np.ndarray:
    """Upsamples a half-resolution field as the Learn2Reg 2021 evaluation did.

    2021 submissions were ``(3, D/2, H/2, W/2)`` float16 ``.npz`` fields; the evaluator
    cast them to float32 and ran ``scipy.ndimage.zoom(c, 2, order=2)`` on each
    component ``c`` (defaults otherwise), *without* rescaling the vectors: they must
    already be in full-resolution voxels. The current evaluator takes full-resolution
    fields and upsamples nothing. Pass ``np.moveaxis(arr_0, 0, -1)`` for a 2021 file.

    Args:
      disp: ``(d, h, w, 3)`` low-resolution displacement, in full-resolution voxels.
      factor: zoom factor (2 in the challenge).

    Returns:
      ``(factor*d, factor*h, factor*w, 3)`` float32 field.
    """
    u = _real_array(disp, "disp", "upsample_disp")
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"upsample_disp: `disp` must have shape (d, h, w, 3); got {u.shape}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"upsample_disp: `factor` must be a positive integer; got {factor!r}")
    u = u.astype(np.float32)
    return np.stack([ndimage.zoom(u[..., k], factor, order=2) for k in range(3)], axis=-1)


def evaluate_pair(
    disp: ArrayLike,
    *,
    fixed_labels: ArrayLike | None = None,
    moving_labels: ArrayLike | None = None,
    labels: Sequence[int] | None = None,
    fixed_points: ArrayLike | None = None,
    moving_points: ArrayLike | None = None,
    moving_spacing: Sequence[float] | None = None,
    mask: ArrayLike | None = None,
    with_hd95: bool = True,
) -> dict[str, dict[str, Any]]:
    """All Learn2Reg metrics for one pair, in the official ``case_results`` layout.

    Always ``LogJacDetStd`` and ``num_foldings``; ``DSC`` and ``HD95`` (labels warped
    with `warp_labels`) when labels are given; ``TRE`` when keypoints are given (the
    official configs name it ``TRE_kp`` or ``TRE_lm``).

    Args:
      disp: ``(D, H, W, 3)`` displacement in voxels on the fixed grid.
      fixed_labels, moving_labels, labels: segmentations and label values for DSC/HD95.
      fixed_points, moving_points, moving_spacing: keypoints (voxels) and moving
        spacing (mm) for TRE.
      mask: fixed-image mask for a masked SDlogJ (Learn2Reg ``masked_evaluation``).
      with_hd95: set False to skip the slower HD95.

    Returns:
      ``{name: {"mean": float, "detailed": float | list}}`` like the official JSON.
    """
    out: dict[str, dict[str, Any]] = {}
    sd = log_jac_det_std(disp, mask=mask)
    folds = num_foldings(disp)
    out["LogJacDetStd"] = {"mean": sd, "detailed": sd}
    out["num_foldings"] = {"mean": folds, "detailed": folds}
    given = [v is not None for v in (fixed_labels, moving_labels, labels)]
    if any(given):
        if not all(given):
            raise ValueError("evaluate_pair: `fixed_labels`, `moving_labels` and `labels` must be given together")
        warped = warp_labels(moving_labels, disp)
        mean, per = dice(fixed_labels, moving_labels, warped, labels)
        out["DSC"] = {"mean": mean, "detailed": per}
        if with_hd95:
            mean, per = hd95(fixed_labels, moving_labels, warped, labels)
            out["HD95"] = {"mean": mean, "detailed": per}
    given = [v is not None for v in (fixed_points, moving_points, moving_spacing)]
    if any(given):
        if not all(given):
            raise ValueError(
                "evaluate_pair: `fixed_points`, `moving_points` and `moving_spacing` must be given together"
            )
        mean, per = tre(fixed_points, moving_points, disp, moving_spacing=moving_spacing)
        out["TRE"] = {"mean": mean, "detailed": per.tolist()}
    return out


def aggregate(case_values: ArrayLike, *, metric: str) -> dict[str, float]:
    """Aggregates per-case values as the current official script does.

    ``mean``, ``std`` (ddof 0) and the key ``"30"``, which holds the 30th percentile
    for ``dice``/``hd95`` and the 70th for ``sdlogj``/``tre`` (``np.quantile``, linear).

    Args:
      case_values: ``(n_cases,)`` per-case ``mean`` values of one metric.
      metric: one of ``"dice"``, ``"hd95"``, ``"sdlogj"``, ``"tre"``.

    Returns:
      ``{"mean": ..., "std": ..., "30": ...}``.
    """
    quantiles = {"dice": 0.3, "hd95": 0.3, "sdlogj": 0.7, "tre": 0.7}
    if metric not in quantiles:
        raise ValueError(f"aggregate: `metric` must be one of {sorted(quantiles)}; got {metric!r}")
    v = _real_array(case_values, "case_values", "aggregate").astype(np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"aggregate: `case_values` must be a non-empty 1-D array; got shape {v.shape}")
    return {"mean": float(v.mean()), "std": float(v.std()), "30": float(np.quantile(v, quantiles[metric]))}
