"""Argument checks of :mod:`jaxreg.evaluation.l2r`: arrays of files, refused with a message that names
the argument, the function and what was given. Private.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _describe(x: np.ndarray) -> str:
    return f"{x.dtype} array of shape {x.shape}"


def _real_array(x: ArrayLike, name: str, func: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{func}: `{name}` must be a real numeric array; got {_describe(a)}")
    return a


def _disp(x: ArrayLike, func: str, name: str = "disp", min_size: int = 1) -> np.ndarray:
    a = _real_array(x, name, func)
    if a.ndim != 4 or a.shape[-1] != 3 or min(a.shape[:3]) < min_size:
        raise ValueError(
            f"{func}: `{name}` must be a displacement field of shape (D, H, W, 3) with "
            f"D, H, W >= {min_size}; got shape {a.shape}"
        )
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{func}: `{name}` must be finite; got {np.count_nonzero(~np.isfinite(a))} NaN/inf values")
    return a


def _label_volume(x: ArrayLike, name: str, func: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    a = _real_array(a, name, func)
    if a.ndim != 3:
        raise ValueError(f"{func}: `{name}` must be a 3-D label volume (D, H, W); got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise ValueError(
                f"{func}: `{name}` must hold integer label values; got {a.dtype} values such as {a[bad].flat[0]!r}"
            )
    return a


def _label_list(labels: Any, func: str) -> list[int]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{func}: `labels` must be a non-empty 1-D sequence of integers; got {labels!r}")
    return [int(v) for v in arr]


def _points(x: ArrayLike, name: str, func: str) -> np.ndarray:
    a = _real_array(x, name, func)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] == 0:
        raise ValueError(f"{func}: `{name}` must be an (N, 3) array of voxel coordinates, N >= 1; got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{func}: `{name}` must be finite")
    return a
