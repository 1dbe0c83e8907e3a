"""Host-side volume preprocessing that keeps the NIfTI affine true.

Every function takes a numpy volume ``(*S)`` or ``(*S, C)`` (channels last) with its
``(4, 4)`` voxel-to-world ``affine`` and returns the new volume with the affine that maps
its voxels to the same world positions, so a displacement field predicted on the result
can be mapped back to the original file's space. Resampling aligns voxel *extents*
(the first and last voxel edges stay where they were), the convention of image resizing
in medical imaging; voxel ``j`` of the output lies at ``(j + 0.5) * scale - 0.5`` of the
input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["crop_or_pad", "resample_to_shape", "resample_to_spacing", "rescale_intensity", "spacing_of"]


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size ``(3,)`` in mm: the lengths of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)


def _spatial(array: np.ndarray, shape: Sequence[int], func: str) -> int:
    ndim = len(shape)
    if array.ndim not in (ndim, ndim + 1):
        raise ValueError(f"{func}: `array` must have {ndim} spatial axes (and optionally channels); "
                         f"got shape {array.shape} for a target of {ndim} axes.")
    if any(int(s) < 1 for s in shape):
        raise ValueError(f"{func}: target shape must be positive; got {tuple(shape)}.")
    return ndim


def resample_to_shape(
    array: np.ndarray, affine: np.ndarray, shape: Sequence[int], *, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples a volume to a new grid size covering the same field of view.

    Args:
      array: ``(*S)`` or ``(*S, C)`` volume.
      affine: ``(4, 4)`` voxel-to-world matrix of ``array``.
      shape: the new spatial shape.
      order: spline order; 1 (linear) for images, 0 (nearest) for label maps.

    Returns:
      ``(resampled, new_affine)``; integer inputs keep their dtype.
    """
    array = np.asarray(array)
    ndim = _spatial(array, shape, "resample_to_shape")
    scale = np.asarray(array.shape[:ndim], np.float64) / np.asarray(shape, np.float64)
    zoom = 1.0 / scale
    if array.ndim > ndim:  # channels are not resampled
        zoom = np.append(zoom, 1.0)
    # grid_mode=True aligns voxel edges; "nearest" avoids darkening the border.
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
    step = np.eye(4)
    step[:ndim, :ndim] = np.diag(scale)
    step[:ndim, 3] = 0.5 * scale - 0.5
    return out, np.asarray(affine, np.float64) @ step


def resample_to_spacing(
    array: np.ndarray, affine: np.ndarray, spacing: Sequence[float], *, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples a volume to a voxel size (mm), keeping its field of view.

    The new shape is ``round(shape * old_spacing / spacing)``; the exact new spacing (in
    the returned affine) differs from ``spacing`` by less than half a voxel over the field
    of view. See :func:`resample_to_shape` for the arguments.
    """
    array = np.asarray(array)
    spacing = np.asarray(spacing, np.float64)
    if np.any(spacing <= 0):
        raise ValueError(f"resample_to_spacing: `spacing` must be positive; got {tuple(spacing)}.")
    ndim = _spatial(array, spacing, "resample_to_spacing")
    old = spacing_of(affine)[:ndim]
    shape = np.maximum(1, np.rint(np.asarray(array.shape[:ndim]) * old / spacing)).astype(int)
    return resample_to_shape(array, affine, tuple(shape), order=order)


def crop_or_pad(
    array: np.ndarray, affine: np.ndarray, shape: Sequence[int], *, cval: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crops and/or zero-pads (with ``cval``) each spatial axis to ``shape``.

    When the size difference is odd, the extra voxel is cropped from (or padded at) the
    end of the axis.

    Returns:
      ``(array, new_affine)`` with the affine translated so voxels keep their world position.
    """
    array = np.asarray(array)
    ndim = _spatial(array, shape, "crop_or_pad")
    out = np.full(tuple(int(s) for s in shape) + array.shape[ndim:], cval, dtype=array.dtype)
    src, dst, start = [], [], np.zeros(ndim)
    for axis, (old, new) in enumerate(zip(array.shape[:ndim], shape)):
        offset = (old - new) // 2  # > 0 crops, < 0 pads
        start[axis] = offset
        lo = max(offset, 0)
        hi = min(old, offset + new)
        src.append(slice(lo, hi))
        dst.append(slice(lo - offset, hi - offset))
    out[tuple(dst)] = array[tuple(src)]
    step = np.eye(4)
    step[:ndim, 3] = start
    return out, np.asarray(affine, np.float64) @ step


def rescale_intensity(
    array: np.ndarray, *, out_range: tuple[float, float] = (-1.0, 1.0), percentiles: tuple[float, float] | None = None
) -> np.ndarray:
    """Maps intensities linearly onto ``out_range`` (float32).

    Args:
      array: any volume.
      out_range: ``(low, high)`` of the output.
      percentiles: if given, e.g. ``(0.5, 99.5)``, these percentiles (not min and max) map
        to the range ends and values beyond are clipped, which keeps a few bright voxels
        from squashing the contrast.

    Returns:
      float32 volume; a constant volume maps to ``low``.
    """
    array = np.asarray(array, np.float32)
    if percentiles is None:
        lo, hi = float(array.min()), float(array.max())
    else:
        lo, hi = (float(v) for v in np.percentile(array, percentiles))
        array = np.clip(array, lo, hi)
    low, high = out_range
    if hi <= lo:
        return np.full_like(array, low)
    # Divide first: the maximum then maps to exactly 1 (then `high`), not 0.99999994.
    return ((array - lo) / np.float32(hi - lo) * np.float32(high - low) + np.float32(low)).astype(np.float32)
