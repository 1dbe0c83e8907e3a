"""NIfTI geometry read as ITK reads it; public through :mod:`jaxreg.io`.

A leaf: imports nibabel and numpy only.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import nibabel as nib
import numpy as np

__all__ = ["NiftiGeometry", "NiftiGeometryWarning", "nifti_geometry"]


class NiftiGeometry(NamedTuple):
    """Where a NIfTI image's voxels lie (see :func:`nifti_geometry`).

    Attributes:
      affine: ``(4, 4)`` float64 voxel-to-world matrix, nibabel's RAS+ world (mm).
      spacing: voxel size of the (up to 3) spatial axes from ``pixdim`` (float32 values).
      source: what gave the orientation and origin: ``"sform"``, ``"qform"`` or
        ``"pixdim"`` (neither form set: ITK's identity direction, origin 0).
    """

    affine: np.ndarray
    spacing: tuple[float, ...]
    source: str


class NiftiGeometryWarning(UserWarning):
    """A NIfTI header whose sform disagrees with its qform or ``pixdim``."""


_GEOMETRY_TOL = 1e-4  # ITK's tolerance for "orthonormal" and "the same transform"
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        if len(_warned) >= 100_000:  # bounded memory for huge collections of files
            _warned.clear()
        _warned.add(message)
        warnings.warn(message, NiftiGeometryWarning, stacklevel=3)


def _directions(matrix: np.ndarray) -> np.ndarray | None:
    """The unit columns of ``matrix[:3, :3]`` if they are orthonormal (rotation x scaling), else None."""
    m = matrix[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if not (np.isfinite(m).all() and (norms > 0).all()):
        return None
    r = m / norms
    return r if np.allclose(r.T @ r, np.eye(3), rtol=0, atol=_GEOMETRY_TOL) else None


def _same_transform(a: np.ndarray, b: np.ndarray) -> bool:
    """Same voxel sizes, directions and origin within ITK's tolerance (1e-4)."""
    da, db = _directions(a), _directions(b)
    return (da is not None and db is not None
            and np.allclose(da, db, rtol=0, atol=_GEOMETRY_TOL)
            and np.allclose(np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0),
                            rtol=0, atol=_GEOMETRY_TOL)
            and np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=_GEOMETRY_TOL))


def _mm(values) -> str:
    return " x ".join(f"{float(v):.6g}" for v in values) + " mm"


def _point(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ") mm"


def _difference(sform: np.ndarray, qform: np.ndarray, ndim: int) -> str:
    """What differs between two transforms, e.g. ``"origin (0, 0, 0) mm vs (1, 2, 3) mm"``."""
    parts = []
    s_sizes, q_sizes = (np.linalg.norm(m[:3, :ndim], axis=0) for m in (sform, qform))
    if not np.allclose(s_sizes, q_sizes, rtol=0, atol=_GEOMETRY_TOL):
        parts.append(f"voxels {_mm(s_sizes)} vs {_mm(q_sizes)}")
    s_dirs, q_dirs = _directions(sform), _directions(qform)
    if s_dirs is not None and q_dirs is not None and not np.allclose(s_dirs, q_dirs, rtol=0, atol=_GEOMETRY_TOL):
        cosines = np.clip(np.sum(s_dirs * q_dirs, axis=0), -1.0, 1.0)
        parts.append(f"axes up to {np.degrees(np.arccos(cosines.min())):.3g} degrees apart")
    if not np.allclose(sform[:3, 3], qform[:3, 3], rtol=0, atol=_GEOMETRY_TOL):
        parts.append(f"origin {_point(sform[:3, 3])} vs {_point(qform[:3, 3])}")
    return "sform vs qform: " + "; ".join(parts)


def nifti_geometry(
    image: nib.Nifti1Image | nib.Nifti1Header, *, path: str | os.PathLike | None = None
) -> NiftiGeometry:
    """Voxel size, orientation and origin of a NIfTI image, read as ITK reads them.

    nibabel's ``img.affine`` is the sform whenever ``sform_code > 0``, scaling included,
    while ITK (ANTs, 3D Slicer, SimpleITK, the Learn2Reg tools) takes the voxel size from
    ``pixdim`` and only a rotation and an origin from the sform or the qform. The two
    disagree for files whose sform has no voxel size in it, e.g. the public ACDC frames
    (``sform_code = 2`` with ``diag(-1, -1, 1)``, ``qform_code = 0``, ``pixdim`` 1.40625 x
    1.40625 x 10 mm), which nibabel reads as 1 mm voxels. The rule here is ITK's
    (``itk::NiftiImageIO`` of ITK 5.4):

    * **spacing** is ``pixdim[1:4]`` (values that are 0 or not finite count as 1, as in
      ``nifti1_io``), whatever the forms say;
    * **orientation and origin** come from the sform (its columns normalised, its
      translation) when it is set (``sform_code > 0``), its 3 x 3 part is a rotation times
      a scaling (the unit columns are orthonormal, to 1e-4), and either ``qform_code = 0``,
      or ``sform_code = 1`` (scanner), or the qform describes the same transform (voxel
      sizes, directions, origin equal to 1e-4); otherwise from the qform when
      ``qform_code > 0``;
    * neither form set: no rotation and origin 0 (ITK's identity direction in its LPS
      world, which is ``diag(-dx, -dy, dz)`` in nibabel's RAS world);
    * an sform with shear and no qform (ITK refuses such a file): the sform as stored.

    The affine is ``direction @ diag(spacing)`` plus the origin, in nibabel's RAS+ world
    (ITK's LPS world with x and y negated). When the sform is used and its column lengths
    equal ``pixdim`` (to 1e-4 relative), the affine is the sform exactly, i.e. nibabel's
    ``img.affine``; likewise the qform when it is used and no sform is set.

    When the sform disagrees with ``pixdim`` or with the qform, a
    :class:`NiftiGeometryWarning` names the file, what each says and which is used
    (once per file and message).

    Args:
      image: a ``nib.Nifti1Image`` (or ``Nifti2Image``) or its header.
      path: the file, named in the warning.

    Returns:
      ``NiftiGeometry(affine, spacing, source)``; ``spacing`` has one value per spatial
      axis of the data (at most 3).

    Raises:
      ValueError: ``image`` is not a NIfTI image or header.
    """
    header = getattr(image, "header", image)
    if not isinstance(header, nib.Nifti1Header):  # Nifti2Header subclasses it
        raise ValueError(f"nifti_geometry: `image` must be a NIfTI image or header; got {type(image).__name__}")
    name = repr(os.fspath(path)) if path is not None else "a NIfTI header"
    ndim = min(3, len(header.get_data_shape()))
    raw = np.asarray(header["pixdim"][1:4], np.float32)
    pixdim = np.where(np.isfinite(raw) & (raw != 0), np.abs(raw), np.float32(1.0))
    spacing = tuple(pixdim[:ndim])
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    sform = np.asarray(header.get_sform(), np.float64) if scode > 0 else None
    qform = np.asarray(header.get_qform(), np.float64) if qcode > 0 else None
    s_dirs = None if sform is None else _directions(sform)

    if sform is None and qform is None:
        affine = np.diag([-float(pixdim[0]), -float(pixdim[1]), float(pixdim[2]), 1.0])
        return NiftiGeometry(affine, spacing, "pixdim")
    if s_dirs is not None and (qform is None or scode == 1 or _same_transform(sform, qform)):
        s_sizes = np.linalg.norm(sform[:3, :3], axis=0)
        affine = sform
        if not np.allclose(s_sizes[:ndim], pixdim[:ndim], rtol=_GEOMETRY_TOL, atol=0):
            affine = sform.copy()
            affine[:3, :ndim] = s_dirs[:, :ndim] * pixdim[:ndim].astype(np.float64)
            _warn_once(f"{name}: its sform (sform_code {scode}) gives voxels of {_mm(s_sizes[:ndim])} but pixdim "
                       f"gives {_mm(pixdim[:ndim])}; using pixdim for the spacing and the sform's orientation and "
                       "origin, as ITK does (nibabel's img.affine would use the sform's voxel size)")
        if qform is not None and not _same_transform(affine, qform):  # only with sform_code 1 (scanner)
            _warn_once(f"{name}: its sform (sform_code {scode}) and qform (qform_code {qcode}) disagree "
                       f"({_difference(affine, qform, ndim)}); using the sform's orientation and origin, as ITK does "
                       "for a scanner sform, and pixdim for the spacing")
        return NiftiGeometry(affine, spacing, "sform")
    if qform is not None:
        if sform is not None:
            why = ("has shear (ITK accepts only a rotation times a scaling)" if s_dirs is None else
                   f"disagrees with its qform (qform_code {qcode}; {_difference(sform, qform, ndim)})")
            _warn_once(f"{name}: its sform (sform_code {scode}) {why}; using the qform and pixdim "
                       f"({_mm(pixdim[:ndim])}, origin {_point(qform[:3, 3])}), as ITK does (nibabel's "
                       "img.affine would use the sform)")
        return NiftiGeometry(qform, spacing, "qform")
    return NiftiGeometry(sform, spacing, "sform")  # sheared sform, no qform: as stored
