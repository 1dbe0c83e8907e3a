"""Per-pair host transforms of the input pipeline: normalisation, augmentation and a lower resolution.

Every function takes a pair record (``jaxreg.data.pairs``; numpy arrays, spatial shape
``S`` with 2 or 3 axes, no channel axis) and returns a new one; random ones also take a
``numpy.random.Generator`` (the pipeline passes one seeded per element, so runs are
reproducible). Augmentations move everything consistently: images (linear), label maps and
masks (nearest), keypoints, a ground-truth ``ddf`` (pull, voxels) when the record has one,
and the fixed ``affine``/``spacing``, which keep mapping voxels to the world.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxreg.data.preprocess import rescale_intensity

__all__ = ["NORMALIZATIONS", "downsample", "flip_transpose", "normalize", "random_affine"]

NORMALIZATIONS = ("minmax", "percentile", "zscore")
_SIDES = ("fixed", "moving")


def normalize(pair: dict, *, method: str = "minmax") -> dict:
    """Normalises the intensities of ``fixed`` and ``moving``, each on its own.

    Args:
      pair: pair record.
      method: ``"minmax"`` → [0, 1]; ``"percentile"`` → [0, 1] between the 0.5th and
        99.5th percentiles, clipped (robust to a few bright voxels, e.g. CT metal);
        ``"zscore"`` → zero mean, unit standard deviation.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"`method` must be one of {NORMALIZATIONS}; got {method!r}.")
    out = dict(pair)
    for side in _SIDES:
        image = np.asarray(pair[side], np.float32)
        if method == "zscore":
            out[side] = (image - image.mean()) / max(float(image.std()), 1e-6)
        else:
            percentiles = (0.5, 99.5) if method == "percentile" else None
            out[side] = rescale_intensity(image, out_range=(0.0, 1.0), percentiles=percentiles)
    return out


def _volume_keys(pair: dict) -> list[tuple[str, int]]:
    """(key, interpolation order) of the spatial volumes in a record."""
    keys = [(side, 1) for side in _SIDES]
    keys += [(f"{side}_{what}", 0) for side in _SIDES for what in ("labels", "mask") if f"{side}_{what}" in pair]
    return keys


def _with_index_map(pair: dict, index_map: np.ndarray) -> dict:
    """Updates the fixed affine and spacing for ``old_index = index_map @ [new_index, 1]``."""
    out = dict(pair)
    if "affine" in pair:
        ndim = index_map.shape[0] - 1
        step = np.eye(4)
        step[:ndim, :ndim], step[:ndim, 3] = index_map[:ndim, :ndim], index_map[:ndim, ndim]
        out["affine"] = np.asarray(pair["affine"], np.float64) @ step
    return out


def flip_transpose(
    pair: dict, rng: np.random.Generator, *, flip_axes: Sequence[int] = (), transpose_axes: Sequence[int] = ()
) -> dict:
    """Random axis permutation and flips, as DiffuseReg augments ACDC.

    Args:
      pair: pair record.
      rng: random generator.
      flip_axes: spatial axes each flipped with probability 1/2.
      transpose_axes: spatial axes randomly permuted among themselves (they must have
        equal sizes), e.g. ``(1, 2)`` swaps the two in-plane axes of a 32×128×128 volume
        half of the time.
    """
    shape = pair["fixed"].shape
    ndim = len(shape)
    transpose_axes = list(transpose_axes)
    if any(a not in range(ndim) for a in [*flip_axes, *transpose_axes]):
        raise ValueError(f"axes must be in range({ndim}); got flip_axes={flip_axes}, transpose_axes={transpose_axes}.")
    if len({shape[a] for a in transpose_axes}) > 1:
        raise ValueError(f"`transpose_axes` {tuple(transpose_axes)} must have equal sizes; shape is {shape}.")
    perm = list(range(ndim))  # new axis k is old axis perm[k]
    for k, a in zip(transpose_axes, rng.permutation(transpose_axes)):
        perm[k] = int(a)
    flips = [a for a in flip_axes if rng.random() < 0.5]
    sizes = np.asarray(shape)[perm]
    # old = P @ (F(new)) with F flipping: new'[a] = n - 1 - new[a].
    flip_map = np.eye(ndim + 1)
    for a in flips:
        flip_map[a, a], flip_map[a, ndim] = -1.0, sizes[a] - 1
    permute = np.zeros((ndim + 1, ndim + 1))
    permute[perm, range(ndim)] = 1.0
    permute[ndim, ndim] = 1.0
    index_map = permute @ flip_map

    def volume(x):
        x = np.transpose(x, perm + list(range(ndim, x.ndim)))
        return np.flip(x, flips) if flips else x

    out = _with_index_map(pair, index_map)
    for key, _ in _volume_keys(pair):
        out[key] = np.ascontiguousarray(volume(pair[key]))
    if "ddf" in pair:  # vectors follow the axes: permuted components, flipped ones negated
        ddf = volume(pair["ddf"])[..., perm].copy()
        ddf[..., flips] *= -1.0
        out["ddf"] = ddf
    for side in _SIDES:
        if f"{side}_points" in pair:
            points = np.asarray(pair[f"{side}_points"], np.float64)[:, perm].copy()
            points[:, flips] = sizes[flips] - 1 - points[:, flips]
            out[f"{side}_points"] = points
    for key in ("spacing", "moving_spacing"):
        if key in pair:
            out[key] = np.asarray(pair[key])[perm]
    return out


def _random_map(rng, shape, rotation, scale, translation, shear):
    """Homogeneous index map ``old = A @ (new - c) + c + t`` with random A, t."""
    ndim = len(shape)
    angles = np.deg2rad(rng.uniform(-rotation, rotation, size=3 if ndim == 3 else 1))
    rot = np.eye(ndim)
    planes = [(0, 1), (0, 2), (1, 2)] if ndim == 3 else [(0, 1)]
    for (i, j), angle in zip(planes, angles):
        r = np.eye(ndim)
        r[i, i] = r[j, j] = np.cos(angle)
        r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
        rot = rot @ r
    shear_matrix = np.eye(ndim) + np.triu(rng.uniform(-shear, shear, (ndim, ndim)), 1)
    matrix = rot @ shear_matrix @ np.diag(1.0 + rng.uniform(-scale, scale, ndim))
    centre = (np.asarray(shape) - 1) / 2
    shift = rng.uniform(-translation, translation, ndim) * np.asarray(shape)
    index_map = np.eye(ndim + 1)
    index_map[:ndim, :ndim] = matrix
    index_map[:ndim, ndim] = centre + shift - matrix @ centre
    return index_map


def _resample(x, index_map, order):
    ndim = index_map.shape[0] - 1
    matrix, offset = index_map[:ndim, :ndim], index_map[:ndim, ndim]
    if x.ndim == ndim:
        return ndimage.affine_transform(x, matrix, offset, order=order, mode="nearest")
    return np.stack([_resample(x[..., c], index_map, order) for c in range(x.shape[-1])], axis=-1)


def random_affine(
    pair: dict,
    rng: np.random.Generator,
    *,
    rotation: float = 10.0,
    scale: float = 0.1,
    translation: float = 0.05,
    shear: float = 0.0,
    independent: bool = False,
) -> dict:
    """Random affine resampling of the pair (host-side, scipy).

    Args:
      pair: pair record.
      rng: random generator.
      rotation: largest rotation per plane, degrees.
      scale: largest relative scale change per axis (0.1 → factors in [0.9, 1.1]).
      translation: largest shift per axis as a fraction of the side.
      shear: largest shear coefficient.
      independent: ``False`` moves fixed and moving together (the registration problem is
        unchanged, only seen in a new pose); ``True`` draws a second map for the moving
        image, which adds an affine misalignment for the model to undo.

    Returns:
      The resampled record; a ground-truth ``ddf`` becomes the field that maps the new
      pair, ``u'(x) = T_m⁻¹(T_f x + u(T_f x)) − x``.
    """
    shape = pair["fixed"].shape
    maps = {"fixed": _random_map(rng, shape, rotation, scale, translation, shear)}
    maps["moving"] = _random_map(rng, shape, rotation, scale, translation, shear) if independent else maps["fixed"]
    out = _with_index_map(pair, maps["fixed"])
    for key, order in _volume_keys(pair):
        out[key] = _resample(np.asarray(pair[key]), maps[key.split("_")[0]], order).astype(pair[key].dtype)
    inverse = {side: np.linalg.inv(m) for side, m in maps.items()}
    ndim = len(shape)
    for side in _SIDES:
        if f"{side}_points" in pair:
            points = np.asarray(pair[f"{side}_points"], np.float64)
            out[f"{side}_points"] = points @ inverse[side][:ndim, :ndim].T + inverse[side][:ndim, ndim]
    if "ddf" in pair:
        grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
        fixed_pos = grid @ maps["fixed"][:ndim, :ndim].T + maps["fixed"][:ndim, ndim]
        target = fixed_pos + _resample(np.asarray(pair["ddf"], np.float64), maps["fixed"], 1)
        moving_index = target @ inverse["moving"][:ndim, :ndim].T + inverse["moving"][:ndim, ndim]
        out["ddf"] = (moving_index - grid).astype(np.float32)
    return out


def downsample(pair: dict, factor: int) -> dict:
    """The pair at ``1/factor`` of its resolution, as a network trained at that size sees it.

    Each axis shrinks by ``factor`` (the sides must be multiples of it): images by the mean of
    each ``factor**ndim`` block (area averaging, no aliasing), label maps and masks by the voxel
    nearest each block's centre, keypoints to ``(p + 0.5) / factor − 0.5`` (voxel centres stay
    put), a ground-truth ``ddf`` by block means divided by ``factor``; ``spacing`` and
    ``moving_spacing`` grow by ``factor`` and ``affine`` maps the new voxels to the same world.

    Raises:
      ValueError: a side that is not a multiple of ``factor`` (the message names ``data.downsample``).
    """
    factor = int(factor)
    if factor == 1:
        return pair
    shape = np.shape(pair["fixed"])
    if any(s % factor for s in shape):
        raise ValueError(f"`data.downsample` {factor} must divide every side of the images; got shape {shape}.")
    ndim = len(shape)
    small = tuple(s // factor for s in shape)
    blocks = tuple(v for s in small for v in (s, factor))  # (s0, f, s1, f, ...)
    block_axes = tuple(range(1, 2 * ndim, 2))
    centre = tuple(slice(factor // 2, None, factor) for _ in shape)
    index_map = np.eye(ndim + 1)
    index_map[:ndim, :ndim] *= factor
    index_map[:ndim, ndim] = (factor - 1) / 2  # old index = factor · new + (factor − 1) / 2
    out = _with_index_map(pair, index_map)
    for key, order in _volume_keys(pair):
        volume = np.asarray(pair[key])
        out[key] = volume.reshape(blocks).mean(axis=block_axes, dtype=np.float64).astype(np.float32) \
            if order == 1 else volume[centre]
    if "ddf" in pair:
        ddf = np.asarray(pair["ddf"], np.float64)
        out["ddf"] = (ddf.reshape(blocks + ddf.shape[-1:]).mean(axis=block_axes) / factor).astype(np.float32)
    for side in _SIDES:
        if f"{side}_points" in pair:
            out[f"{side}_points"] = (np.asarray(pair[f"{side}_points"], np.float64) + 0.5) / factor - 0.5
    for key in ("spacing", "moving_spacing"):
        if key in pair:
            out[key] = np.asarray(pair[key], np.float64) * factor
    return out
