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

import os
from collections.abc import Mapping

import numpy as np

from jaxreg import io

__all__ = ["OPTIONAL_KEYS", "make_pair", "read_image"]

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


def read_image(
    path: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    points: str | os.PathLike | None = None,
    ndim: int | None = None,
    missing: str = "image not found",
) -> dict:
    """Reads an image record from its files (the optional ones only where given).

    Args:
      path: the image NIfTI.
      labels, mask: NIfTI label map (rounded to int32) and mask (``> 0`` as uint8), which
        must have the image's shape.
      points: a keypoint CSV (``jaxreg.io.load_keypoints``).
      ndim: the number of image axes required, if any.
      missing: the message of the ``FileNotFoundError`` when ``path`` does not exist (the
        path is appended).

    Returns:
      ``image`` float32, ``affine`` ``(4, 4)``, ``spacing`` (the header's ``pixdim``, mm)
      as :func:`jaxreg.io.load_nifti` reads them (ITK's reading of the header, so the two
      agree), and the optional entries asked for.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{missing}: {path}")
    volume = io.load_nifti(path, dtype=np.float32)
    if ndim is not None and volume.array.ndim != ndim:
        raise ValueError(f"{path} must hold a {ndim}-D volume; got shape {volume.array.shape}.")
    out = {"image": volume.array, "affine": volume.affine, "spacing": np.asarray(volume.spacing, np.float64)}
    if labels is not None:
        out["labels"] = np.rint(io.load_nifti(labels).array).astype(np.int32)
    if mask is not None:
        out["mask"] = (io.load_nifti(mask).array > 0).astype(np.uint8)
    for key, source in (("labels", labels), ("mask", mask)):
        if key in out and out[key].shape != out["image"].shape:
            raise ValueError(f"{key} {source} must have the image's shape {out['image'].shape}; got {out[key].shape}.")
    if points is not None:
        out["points"] = io.load_keypoints(points)
    return out
