"""The pair record every reader returns, assembled from two image records.

An *image record* is a dict with ``image`` float32 ``(*S)``, ``affine`` ``(4, 4)``,
``spacing`` ``(3,)`` mm and, where the dataset has them, ``labels`` int32 ``(*S)``,
``mask`` uint8 ``(*S)`` and ``points`` ``(N, 3)`` voxel coordinates.

A *pair record* has ``fixed``, ``moving``, ``spacing`` (fixed), ``moving_spacing``,
``affine`` (fixed), ``ids`` (a string) and, where both images have them,
``fixed_labels``/``moving_labels``, ``fixed_mask``/``moving_mask`` and
``fixed_points``/``moving_points``. Readers, the TFDS sources and the input pipeline all
speak it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["OPTIONAL_KEYS", "make_pair"]

#: Per-image entries a dataset may provide; a pair carries them when both images do.
OPTIONAL_KEYS = ("labels", "mask", "points")


def make_pair(fixed: Mapping, moving: Mapping, *, ids: str, where: str = "pair") -> dict:
    """Builds a pair record from two image records (see the module docstring).

    Args:
      fixed, moving: image records.
      ids: the pair's identifier, e.g. ``"0395_0396"``.
      where: names the pair in error messages.

    Raises:
      ValueError: the images differ in shape, or their keypoints do not correspond row
        by row.
    """
    if fixed["image"].shape != moving["image"].shape:
        raise ValueError(f"{where}: fixed and moving must have the same shape; "
                         f"got {fixed['image'].shape} and {moving['image'].shape}.")
    out = {
        "fixed": fixed["image"],
        "moving": moving["image"],
        "spacing": np.asarray(fixed["spacing"], np.float64),
        "moving_spacing": np.asarray(moving["spacing"], np.float64),
        "affine": np.asarray(fixed["affine"], np.float64),
        "ids": str(ids),
    }
    for key in OPTIONAL_KEYS:
        if key in fixed and key in moving:
            out[f"fixed_{key}"], out[f"moving_{key}"] = fixed[key], moving[key]
    if "fixed_points" in out and out["fixed_points"].shape != out["moving_points"].shape:
        raise ValueError(f"{where}: fixed and moving keypoints must correspond row by row; got "
                         f"{out['fixed_points'].shape} and {out['moving_points'].shape}.")
    return out
