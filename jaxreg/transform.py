"""A registration transform as data: compose, invert, apply, save, load, export to ITK/ANTs.

A :class:`Transform` maps the **fixed grid** to the **moving grid** (pull, as everywhere in
jaxreg). For a fixed voxel ``x`` (array axis order)::

    moving_voxel(x) = matrix @ [x + deformation(x), 1]

the deformation first, then the affine ``matrix`` — like ANTs' ``-t Warp.nii.gz -t Affine.mat``.
``deformation`` is ``u = exp(v)`` of the stationary velocity ``velocity`` on the diffeomorphic
(svf) path, whose exact inverse is ``x = φ⁻¹(matrix⁻¹ y)`` with ``φ⁻¹ = id + exp(−v)``.

World coordinates: with ``F`` and ``M`` the voxel-to-world (RAS, nibabel) affines of the fixed
and moving grids, the affine in world units is ``M @ matrix @ F⁻¹`` and the deformation in mm
is ``F[:3, :3] @ u``. ITK and ANTs work in LPS: ``diag(-1, -1, 1)`` on both sides.

On disk (:func:`save_transform`): a folder with ``transform.json`` (shapes, affines, matrix,
file names) and ``deformation.nii.gz`` / ``velocity.nii.gz`` (``(*S, ndim)`` float32 voxels
on the fixed grid, fixed affine). :func:`export_itk` writes what ITK, ANTs and 3D Slicer read:
``warp.nii.gz`` (as ANTs writes it: ``(X, Y, Z, 1, 3)`` float32, intent "vector", mm in LPS, on
the fixed grid), ``affine.mat`` / ``affine.txt`` (``AffineTransform_double_3_3``) and, on the
svf path, ``inverse_warp.nii.gz``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import io, spatial

__all__ = [
    "FORMAT",
    "Transform",
    "apply",
    "checked",
    "export_itk",
    "from_registration",
    "inverse_ddf",
    "inverse_deformation",
    "load_transform",
    "ras_to_lps",
    "save_transform",
    "total_ddf",
    "world_displacement",
    "world_matrix",
]

#: ``transform.json``'s ``format`` value.
FORMAT = "jaxreg-transform"
_VERSION = 1
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_STEPS = 32  # scaling-and-squaring steps: 2**32 is far beyond any velocity's need


class Transform(NamedTuple):
    """A fixed-to-moving (pull) transform.

    Attributes:
      matrix: ``(ndim+1, ndim+1)`` float64 homogeneous matrix, fixed voxel (after the
        deformation) → moving voxel.
      deformation: ``(*fixed_shape, ndim)`` float32 displacement ``u`` in fixed voxels, or
        ``None`` (affine only).
      velocity: ``(*fixed_shape, ndim)`` stationary velocity ``v`` with ``u = exp(v)`` (svf
        path), or ``None``.
      fixed_shape, moving_shape: spatial shapes of the two grids.
      fixed_affine, moving_affine: ``(4, 4)`` voxel-to-world (RAS) matrices of the grids.
      steps: scaling-and-squaring steps of ``exp``.
    """

    matrix: np.ndarray
    deformation: np.ndarray | None
    velocity: np.ndarray | None
    fixed_shape: tuple[int, ...]
    fixed_affine: np.ndarray
    moving_shape: tuple[int, ...]
    moving_affine: np.ndarray
    steps: int = 7


def _checked_matrix(matrix, ndim: int, name: str = "matrix") -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    bottom = np.eye(ndim + 1)[-1]
    if m.shape != (ndim + 1, ndim + 1) or not np.isfinite(m).all() or not np.allclose(m[-1], bottom):
        raise ValueError(f"`{name}` must be a finite ({ndim + 1}, {ndim + 1}) homogeneous matrix (last row "
                         f"{bottom.tolist()}); got shape {m.shape}.")
    if abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"`{name}` must be invertible; got determinant {np.linalg.det(m):.3g}.")
    return m


def _checked_field(field, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if field is None:
        return None
    f = np.asarray(field, np.float32)
    if f.shape != (*shape, len(shape)):
        raise ValueError(f"`{name}` must have shape {(*shape, len(shape))} (the fixed grid and ndim components); "
                         f"got {f.shape}.")
    if not np.isfinite(f).all():
        raise ValueError(f"`{name}` must be finite; got {np.count_nonzero(~np.isfinite(f))} NaN/inf values.")
    return f


def _checked_affine(affine, name: str) -> np.ndarray:
    a = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a)) < 1e-12:
        raise ValueError(f"`{name}` must be a finite invertible (4, 4) voxel-to-world matrix; got shape {a.shape}.")
    return a


def _checked_steps(steps) -> int:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 0 <= steps <= _MAX_STEPS:
        raise ValueError(f"`steps` must be an integer in [0, {_MAX_STEPS}]; got {steps!r}.")
    return int(steps)


def checked(transform) -> Transform:
    """``transform`` (a :class:`Transform` or a path :func:`load_transform` reads) checked: grids,
    fields, a finite invertible matrix that is no reflection in world space.

    Raises:
      ValueError: what is wrong, named.
    """
    return _checked(transform if isinstance(transform, Transform) else load_transform(transform))


def _checked(t: Transform) -> Transform:
    fixed_shape = tuple(int(s) for s in t.fixed_shape)
    moving_shape = tuple(int(s) for s in t.moving_shape)
    ndim = len(fixed_shape)
    if ndim not in (2, 3) or len(moving_shape) != ndim or min(fixed_shape + moving_shape) < 1:
        raise ValueError(f"`fixed_shape` and `moving_shape` must be 2 or 3 positive integers each, of equal length; "
                         f"got {fixed_shape} and {moving_shape}.")
    for shape in (fixed_shape, moving_shape):  # a file claiming absurd grids must not allocate them
        if int(np.prod(shape, dtype=np.int64)) * ndim > io.MAX_ELEMENTS:
            raise ValueError(f"grid {shape} is larger than io.MAX_ELEMENTS allows ({io.MAX_ELEMENTS} field elements).")
    steps = _checked_steps(t.steps)
    velocity = _checked_field(t.velocity, fixed_shape, "velocity")
    deformation = _checked_field(t.deformation, fixed_shape, "deformation")
    if deformation is None and velocity is not None:
        deformation = np.asarray(_exp(velocity, steps=steps), np.float32)
    matrix = _checked_matrix(t.matrix, ndim)
    fixed_affine = _checked_affine(t.fixed_affine, "fixed_affine")
    moving_affine = _checked_affine(t.moving_affine, "moving_affine")
    # A voxel matrix may flip axes (two headers of opposite handedness); the map between the two
    # bodies in world space never should: a registration that mirrors anatomy is wrong.
    det = np.linalg.det(world_matrix(matrix, fixed_affine, moving_affine)[:3, :3])
    if det <= 0:
        raise ValueError(f"`matrix` is a reflection in world space (determinant {det:.3g} of the fixed-to-moving "
                         "map in mm, through the two grids' affines); a registration never mirrors anatomy.")
    return Transform(matrix, deformation, velocity, fixed_shape, fixed_affine, moving_shape, moving_affine, steps)


def from_registration(result, *, fixed_affine=None, moving_affine=None, moving_shape=None, premultiply=None,
                      steps: int | None = None) -> Transform:
    """The :class:`Transform` of a :class:`jaxreg.Registration`.

    Args:
      result: ``jaxreg.register``'s result (``matrix``, ``deformation`` and ``velocity`` when it
        has them; else the identity matrix and ``ddf`` as the deformation).
      fixed_affine: ``(4, 4)`` voxel-to-world matrix of the fixed grid (identity if None).
      moving_affine, moving_shape: the moving grid (default: the fixed grid).
      premultiply: optional ``(ndim+1, ndim+1)`` voxel matrix applied after ``result.matrix``,
        e.g. ``inv(M) @ F`` when the moving image was resampled onto the fixed grid before
        registering (the transform then points into the original moving grid).
      steps: ``exp`` steps (default ``result.info["integration_steps"]`` or 7).
    """
    ddf = np.asarray(result.ddf)
    shape = ddf.shape[:-1]
    ndim = len(shape)
    matrix = getattr(result, "matrix", None)
    matrix = np.eye(ndim + 1) if matrix is None else np.asarray(matrix, np.float64)
    deformation = getattr(result, "deformation", None)
    deformation = ddf if deformation is None and not hasattr(result, "matrix") else deformation
    if premultiply is not None:
        matrix = _checked_matrix(premultiply, ndim, "premultiply") @ matrix
    info = getattr(result, "info", None) or {}
    if steps is None:
        steps = int(info.get("integration_steps") or (info.get("options") or {}).get("integration_steps") or 7)
    return _checked(Transform(matrix, deformation, getattr(result, "velocity", None), shape, fixed_affine,
                              shape if moving_shape is None else moving_shape,
                              fixed_affine if moving_affine is None else moving_affine, steps))


def total_ddf(matrix, deformation=None, *, shape=None) -> jnp.ndarray:
    """The dense pull displacement of ``x ↦ matrix @ [x + u(x), 1]``.

    Args:
      matrix: ``(ndim+1, ndim+1)`` homogeneous voxel matrix.
      deformation: ``(*S, ndim)`` ``u`` in voxels, or ``None`` (then ``shape`` gives ``S``).
      shape: the grid when ``deformation`` is None.

    Returns:
      ``(*S, ndim)`` float32 ``matrix·(x + u(x)) − x`` in voxels (of the grid ``matrix`` points
      into): ``jaxreg.warp(moving, total_ddf(...))`` applies the whole transform.
    """
    shape = tuple(np.shape(deformation)[:-1]) if deformation is not None else tuple(int(s) for s in shape)
    m = _checked_matrix(matrix, len(shape))
    # L − I in float64 before rounding: near the identity it keeps the digits float32 would lose.
    linear = jnp.asarray(m[:-1, :-1] - np.eye(len(shape)), jnp.float32)
    u = None if deformation is None else jnp.asarray(deformation, jnp.float32)
    return _total(linear, jnp.asarray(m[:-1, -1], jnp.float32), u, shape=shape)


@functools.partial(jax.jit, static_argnames="shape")
def _total(linear, offset, u, *, shape):
    """``(L − I)·p + t + u`` with ``p = x + u`` (``u`` may be None): :func:`total_ddf`, compiled."""
    points = spatial.identity_grid(shape) if u is None else spatial.identity_grid(shape) + u
    ddf = points @ linear.T + offset
    return ddf if u is None else ddf + u


def inverse_deformation(velocity, *, steps: int = 7) -> jnp.ndarray:
    """``exp(−v)``: the inverse of the deformation ``u = exp(v)``, on the fixed grid (compiled).

    What :func:`inverse_ddf` and :func:`export_itk`'s ``inverse_warp.nii.gz`` are built from;
    compute it once and pass it to both as ``inverse_deformation=``.

    Args:
      velocity: ``(*S, ndim)`` stationary velocity ``v`` in voxels.
      steps: scaling-and-squaring steps (as used for the forward ``exp(v)``).

    Returns:
      ``(*S, ndim)`` float32 displacement in voxels: ``x ↦ x + exp(−v)(x)`` undoes ``x ↦ x + u(x)``.
    """
    return _exp(jnp.asarray(velocity, jnp.float32), steps=_checked_steps(steps), inverse=True)


@functools.partial(jax.jit, static_argnames=("steps", "inverse"))
def _exp(velocity, *, steps, inverse=False):
    """``exp(v)``, or ``exp(−v)`` with ``inverse``: scaling and squaring, compiled."""
    return spatial.integrate_velocity(-velocity if inverse else velocity, steps=steps)


INVERSION_ITERATIONS = 30  # fixed-point steps of a deformation without a velocity (spatial.invert_displacement)


def invert_deformation(deformation) -> tuple[jnp.ndarray, float]:
    """The inverse of a deformation without a velocity (the ddf path, trained models), on the fixed grid.

    :func:`jaxreg.spatial.invert_displacement` (fixed-point iteration, compiled), with its
    residual: the largest ``|w(x) + u(x + w(x))|`` in voxels (0 for an exact inverse; it stays
    large where ``u`` folds).

    Returns:
      ``((*S, ndim) float32 inverse displacement in voxels, residual in voxels)``.
    """
    inverse, residual = _invert(jnp.asarray(deformation, jnp.float32))
    return inverse, float(residual)


@jax.jit
def _invert(u):
    w = spatial.invert_displacement(u, iterations=INVERSION_ITERATIONS)
    return w, jnp.max(jnp.abs(spatial.compose(u, w)))


def inverse_ddf(matrix, velocity=None, *, shape, steps: int = 7, deformation=None,
                inverse_deformation=None) -> jnp.ndarray:
    """The inverse of :func:`total_ddf`, as a pull field on the moving grid.

    ``y ↦ φ⁻¹(matrix⁻¹ y)`` with ``φ⁻¹ = id + exp(−v)`` (without a velocity, the fixed-point
    inverse of the deformation, :func:`invert_deformation`): ``warp(fixed_image, inverse)`` brings a
    fixed-grid image onto the moving grid, and ``compose(total, inverse) ≈ 0``. Where
    ``matrix⁻¹ y`` falls more than half a voxel outside the fixed grid, ``exp(−v)`` counts 0 (the
    affine part's inverse alone, not the edge's deformation carried outward), as ITK and ANTs
    read a displacement field.

    Args:
      matrix: ``(ndim+1, ndim+1)`` fixed → moving voxel matrix.
      velocity: ``(*S_fixed, ndim)`` stationary velocity (svf path), or ``None`` for an affine
        transform.
      shape: the moving grid's spatial shape.
      steps: scaling-and-squaring steps (as used for the forward ``exp(v)``).
      deformation: the forward deformation when there is no velocity (the ddf path, a trained
        model): inverted by fixed-point iteration.
      inverse_deformation: ``exp(−velocity)`` (:func:`inverse_deformation`) or the inverted
        deformation (:func:`invert_deformation`) when already computed; computed here otherwise.

    Returns:
      ``(*shape, ndim)`` float32 displacement: fixed voxel − moving voxel.

    Raises:
      ValueError: bad shapes.
    """
    shape = tuple(int(s) for s in shape)
    m = _checked_matrix(matrix, len(shape))
    to_fixed = total_ddf(np.linalg.inv(m), shape=shape)  # y ↦ matrix⁻¹y − y
    if velocity is None and inverse_deformation is None:
        if deformation is None or not np.any(np.asarray(deformation) != 0):
            return to_fixed
        if np.ndim(deformation) != len(shape) + 1:
            raise ValueError(f"`deformation` must be a {len(shape)}-D field like `shape` {shape}; "
                             f"got {np.shape(deformation)}.")
        inverse_deformation, _ = invert_deformation(deformation)
    if inverse_deformation is not None:
        return _compose_inside(jnp.asarray(inverse_deformation, jnp.float32), to_fixed)
    if np.ndim(velocity) != len(shape) + 1:
        raise ValueError(f"`velocity` must be a {len(shape)}-D field like `shape` {shape}; got {np.shape(velocity)}.")
    if inverse_deformation is None:
        inverse_deformation = _exp(jnp.asarray(velocity, jnp.float32), steps=_checked_steps(steps), inverse=True)
    return _compose_inside(jnp.asarray(inverse_deformation, jnp.float32), to_fixed)


@jax.jit
def _compose_inside(u, v):
    """``v + u(x + v)`` where ``x + v`` lies within half a voxel of ``u``'s grid (linear, edges
    repeated up to there), ``v`` beyond: as ITK reads a displacement field, 0 outside its grid."""
    shape = u.shape[:-1]
    points = spatial.identity_grid(v.shape[:-1]) + v
    inside = jnp.all((points >= -0.5) & (points <= jnp.asarray(shape, v.dtype) - 0.5), axis=-1)
    return v + jnp.where(inside[..., None], spatial.warp(u, v, mode="nearest"), 0.0)


def _embed(matrix: np.ndarray) -> np.ndarray:
    """A 2-D ``(3, 3)`` voxel matrix as ``(4, 4)`` (third axis unchanged); ``(4, 4)`` as is."""
    if matrix.shape == (4, 4):
        return matrix
    out = np.eye(4)
    out[np.ix_([0, 1, 3], [0, 1, 3])] = matrix
    return out


def world_matrix(matrix, fixed_affine, moving_affine) -> np.ndarray:
    """The affine part in world units: ``M @ matrix @ F⁻¹``, ``(4, 4)``, RAS mm → RAS mm."""
    m = np.asarray(matrix, np.float64)
    return _checked_affine(moving_affine, "moving_affine") @ _embed(m) @ np.linalg.inv(
        _checked_affine(fixed_affine, "fixed_affine"))


def world_displacement(deformation, fixed_affine) -> np.ndarray:
    """A voxel displacement ``(*S, ndim)`` of the fixed grid in world units: ``(*S, 3)`` RAS mm."""
    u = np.asarray(deformation, np.float64)
    ndim = u.shape[-1]
    linear = _checked_affine(fixed_affine, "fixed_affine")[:3, :ndim]
    return u @ linear.T


def ras_to_lps(matrix) -> np.ndarray:
    """A ``(4, 4)`` world matrix in RAS (nibabel) as ITK's LPS: ``P @ A @ P``, ``P = diag(-1, -1, 1, 1)``."""
    return _LPS @ np.asarray(matrix, np.float64) @ _LPS


def _grid_text(shape, affine) -> str:
    rows = np.array2string(np.asarray(affine, np.float64), precision=3, separator=",").replace("\n", "")
    return f"shape {tuple(int(s) for s in shape)}, affine {rows}"


def apply(transform, image, *, affine=None, order: int = 1, mode: str | None = None, inverse: bool = False,
          ddf=None, labels: str | None = None):
    """Warps ``image`` (on the moving grid) onto the fixed grid — or back with ``inverse=True``.

    Args:
      transform: a :class:`Transform`, or a path :func:`load_transform` accepts.
      image: ``(*S)`` or ``(*S, C)`` array on the moving grid (the fixed grid if ``inverse``).
      affine: the image's ``(4, 4)`` voxel-to-world matrix, checked against the grid's (optional).
      order: 1 for linear, 0 for nearest neighbour (keeps the dtype).
      mode: outside the image: ``"nearest"`` (edge values, as ``jaxreg.warp``) or ``"constant"`` (zero);
        ``None``: edge values for images, zero for ``labels``.
      inverse: apply the inverse (:func:`inverse_ddf`: ``exp(−v)`` on the svf path, fixed-point
        inversion otherwise): fixed grid → moving grid.
      ddf: the transform's field when already computed (:func:`total_ddf`, or :func:`inverse_ddf`
        with ``inverse``), to warp several images with one field; computed here otherwise.
      labels: ``image`` is an integer label map, warped by :func:`jaxreg.spatial.warp_labels` with
        this interpolation, ``"nearest"`` or ``"linear"`` (ANTs' ``genericLabel``); ``order`` is
        then unused.

    Returns:
      The warped image on the fixed grid (moving grid if ``inverse``), shaped ``(*S_out)`` or ``(*S_out, C)``.

    Raises:
      ValueError: an image on another grid (both grids are named).
    """
    t = transform if isinstance(transform, Transform) else load_transform(transform)
    t = _checked(t)
    source = (t.fixed_shape, t.fixed_affine, "fixed") if inverse else (t.moving_shape, t.moving_affine, "moving")
    image = jnp.asarray(image)
    ndim = len(source[0])
    same_affine = affine is None or np.allclose(np.asarray(affine, np.float64), source[1], atol=1e-4)
    if image.ndim not in (ndim, ndim + 1) or tuple(image.shape[:ndim]) != source[0] or not same_affine:
        given = _grid_text(image.shape[:ndim] if image.ndim >= ndim else image.shape,
                           source[1] if affine is None else affine)
        raise ValueError(f"`image` must lie on the transform's {source[2]} grid ({_grid_text(source[0], source[1])}, "
                         f"optionally with channels); got {given}. Resample it onto that grid first.")
    target = t.moving_shape if inverse else t.fixed_shape
    if ddf is None and inverse:
        ddf = inverse_ddf(t.matrix, t.velocity, shape=target, steps=t.steps, deformation=t.deformation)
    elif ddf is None:
        ddf = total_ddf(t.matrix, t.deformation, shape=target)
    elif np.shape(ddf) != (*target, ndim):
        raise ValueError(f"`ddf` must have shape {(*target, ndim)} (the {'moving' if inverse else 'fixed'} grid); "
                         f"got {np.shape(ddf)}.")
    ddf = jnp.asarray(ddf, jnp.float32)
    if labels is None:
        return _warp(image, ddf, order=order, mode=mode or "nearest")
    if image.ndim != ndim:
        raise ValueError(f"a label map must be {ndim}-D without channels; got shape {tuple(image.shape)}.")
    values = spatial.label_values(image) if labels == "linear" else None
    return _warp_labels(image, ddf, interpolation=labels, mode=mode or "constant", values=values)


_warp = jax.jit(spatial.warp, static_argnames=("order", "mode"))
_warp_labels = jax.jit(spatial.warp_labels, static_argnames=("interpolation", "mode", "values"))


# --- the folder format -------------------------------------------------------------------------------------

def save_transform(directory, transform: Transform) -> Path:
    """Writes ``transform`` into ``directory`` (created): ``transform.json`` + NIfTI fields.

    Each file is written atomically; ``transform.json`` last, so a reader never sees a
    description of fields that are not there yet. Returns the folder.
    """
    t = _checked(transform)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("deformation", "velocity"):
        field = getattr(t, name)
        if field is not None:
            files[name] = f"{name}.nii.gz"
            io.save_nifti(directory / files[name], field, t.fixed_affine)  # float32 (checked)
    description = {
        "format": FORMAT, "version": _VERSION, "ndim": len(t.fixed_shape),
        "convention": "moving_voxel = matrix @ [x + deformation(x), 1] for each fixed voxel x (array axis order); "
                      "deformation = exp(velocity) by scaling and squaring with `steps` steps",
        "matrix": t.matrix.tolist(), "steps": t.steps,
        "fixed": {"shape": list(t.fixed_shape), "affine": t.fixed_affine.tolist()},
        "moving": {"shape": list(t.moving_shape), "affine": t.moving_affine.tolist()},
        "deformation": files.get("deformation"), "velocity": files.get("velocity"),
    }
    with io.atomic_path(directory / "transform.json") as tmp:
        Path(tmp).write_text(json.dumps(description, indent=2))
    return directory


def _json_path(path) -> Path:
    path = Path(path)
    for candidate in (path, path / "transform.json", path / "transform" / "transform.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no jaxreg transform at {str(path)!r}: expected a transform.json file, a folder holding "
                            "one, or a `jaxreg register` output folder (its transform/ subfolder).")


def load_transform(path) -> Transform:
    """Reads what :func:`save_transform` (or ``jaxreg register``'s ``transform/``) wrote.

    Args:
      path: ``transform.json``, its folder, or a ``jaxreg register`` output folder.

    Raises:
      FileNotFoundError: no ``transform.json``, or a field file it names is missing.
      ValueError: not a jaxreg transform, or shapes/values that do not fit (the file is named).
    """
    json_path = _json_path(path)
    try:
        d = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(json_path)!r} is not a jaxreg transform (not JSON: {e}).") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{str(json_path)!r} is not a jaxreg transform (its `format` must be {FORMAT!r}).")
    if d.get("version") != _VERSION:
        raise ValueError(f"{str(json_path)!r}: unsupported transform version {d.get('version')!r} (expected {_VERSION}).")
    try:
        fixed, moving = d["fixed"], d["moving"]
        fields = {}
        for name in ("deformation", "velocity"):
            file = d.get(name)
            if file is None:
                fields[name] = None
                continue
            if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
                raise ValueError(f"`{name}` must be a file name in the same folder; got {file!r}")
            array = io.load_nifti(json_path.parent / file, dtype=np.float32).array
            expected = (*fixed["shape"], len(fixed["shape"]))
            if array.shape != tuple(expected):
                raise ValueError(f"{file!r} must hold a {tuple(expected)} field (the fixed grid); got {array.shape}")
            fields[name] = array
        return _checked(Transform(d["matrix"], fields["deformation"], fields["velocity"], tuple(fixed["shape"]),
                                  fixed["affine"], tuple(moving["shape"]), moving["affine"], d.get("steps", 7)))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{str(json_path)!r} names a missing file: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing entry {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{str(json_path)!r} is not a valid jaxreg transform: {detail}") from e


# --- ITK / ANTs / Slicer -----------------------------------------------------------------------------------

def _save_itk_field(path: Path, field, affine: np.ndarray) -> None:
    """A voxel displacement of the fixed grid as ANTs writes warps.

    mm in LPS (``world_displacement`` with x, y negated), ``(X, Y, Z, 1, 3)`` float32, intent vector.
    """
    import nibabel as nib

    to_lps_mm = jnp.asarray(_LPS[:3, :3] @ affine[:3, :3], jnp.float32)  # world_displacement, then RAS → LPS
    img = nib.Nifti1Image(np.asarray(_itk_field(jnp.asarray(field, jnp.float32), to_lps_mm)), affine)
    img.header.set_intent("vector")
    img.set_qform(affine, code=1)  # ITK reads the qform first; both say the same
    img.set_sform(affine, code=1)
    io.save_image(path, img)


@jax.jit
def _itk_field(field, linear):
    return (field @ linear.T)[:, :, :, None, :]


def _affine_parameters(lps: np.ndarray) -> np.ndarray:
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])  # row-major matrix, then translation


def export_itk(directory, transform: Transform, *, inverse_deformation=None) -> dict[str, str]:
    """Writes the transform as ITK/ANTs/Slicer files into ``directory`` (created).

    * ``warp.nii.gz``: the deformation ``W(p) = p + d(p)`` as ANTs writes warps ((X, Y, Z, 1, 3),
      intent vector, float32, mm in LPS, on the fixed grid with the fixed affine);
    * ``affine.mat`` (ITK MatlabTransformIO, as ANTs' ``*GenericAffine.mat``) and ``affine.txt``
      (Insight Transform File V1.0): ``AffineTransform_double_3_3``, centre 0, LPS;
    * ``inverse_warp.nii.gz``: ``W⁻¹`` (``exp(−v)``, or the fixed-point inverse of a deformation
      without a velocity), same layout.

    Fixed point ``p`` → moving point ``A(W(p))``, i.e.
    ``antsApplyTransforms -r fixed -i moving -t warp.nii.gz -t affine.mat`` and
    ``sitk.CompositeTransform([affine, warp])``; the inverse is
    ``-t [affine.mat,1] -t inverse_warp.nii.gz``.

    Args:
      directory: the folder to write (created).
      transform: a 3-D :class:`Transform`.
      inverse_deformation: ``exp(−velocity)`` (:func:`inverse_deformation`) or the inverted
        deformation (:func:`invert_deformation`) when already computed (e.g. for
        :func:`inverse_ddf` too); computed here otherwise.

    Returns:
      ``{"warp": ..., "affine_mat": ..., "affine_txt": ..., "inverse_warp": ...}`` file names.

    Raises:
      ValueError: a 2-D transform (the export is 3-D only).
    """
    import scipy.io

    t = _checked(transform)
    if len(t.fixed_shape) != 3:
        raise ValueError(f"export_itk: only 3-D transforms are exported; got a {len(t.fixed_shape)}-D one "
                         f"(fixed grid {t.fixed_shape}).")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lps = ras_to_lps(world_matrix(t.matrix, t.fixed_affine, t.moving_affine))
    files = {"warp": "warp.nii.gz", "affine_mat": "affine.mat", "affine_txt": "affine.txt"}
    deformation = np.zeros((*t.fixed_shape, 3), np.float32) if t.deformation is None else t.deformation
    _save_itk_field(directory / files["warp"], deformation, t.fixed_affine)
    if t.velocity is not None or t.deformation is not None:
        files["inverse_warp"] = "inverse_warp.nii.gz"
        if inverse_deformation is None and t.velocity is not None:
            inverse_deformation = _exp(jnp.asarray(t.velocity), steps=t.steps, inverse=True)
        elif inverse_deformation is None:
            inverse_deformation, _ = invert_deformation(t.deformation)
        elif np.shape(inverse_deformation) != np.shape(deformation):
            raise ValueError(f"`inverse_deformation` must have the deformation's shape {np.shape(deformation)}; "
                             f"got {np.shape(inverse_deformation)}.")
        _save_itk_field(directory / files["inverse_warp"], inverse_deformation, t.fixed_affine)
    params = _affine_parameters(lps)
    with io.atomic_path(directory / files["affine_mat"], suffix=".mat") as tmp:
        scipy.io.savemat(tmp, {"AffineTransform_double_3_3": params[:, None], "fixed": np.zeros((3, 1))},
                         format="4")
    text = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(repr(float(p)) for p in params)}\nFixedParameters: 0 0 0\n")
    with io.atomic_path(directory / files["affine_txt"]) as tmp:
        Path(tmp).write_text(text)
    return files
