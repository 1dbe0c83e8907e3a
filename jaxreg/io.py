"""NIfTI input/output and Learn2Reg displacement files.

Files from users are untrusted: headers are checked (rank, dims, dtype, size) before
any voxel is read, and nothing is ever unpickled. Writes are atomic: the file is
written under a temporary name in the target directory and moved into place with
``os.replace``, so a crash never leaves a half-written result (and an existing file
stays as it was).

Learn2Reg conventions (official evaluation, repository ``MDL-UzL/L2R``):

* a displacement file ``disp_FFFF_MMMM.nii.gz`` holds a float ``(D, H, W, 3)`` array,
  the displacement in voxels along the array axes of the fixed image, pull convention
  (the moving image is sampled at ``x + disp(x)``); its affine and header are ignored
  by the evaluator, which reads it with ``get_fdata()`` (float64);
* keypoint files ``*.csv`` hold one point per line, ``x0,x1,x2`` in voxel
  coordinates (array axis order), comma separated, no header.

Geometry (voxel size, orientation, origin) is read from a NIfTI header as ITK (and so
ANTs, 3D Slicer, SimpleITK) reads it, not as nibabel's ``img.affine`` does: see
:func:`nifti_geometry`.

``.nii.gz`` files are written with ISA-L's gzip (the ``isal`` package) when it is installed:
a standard gzip stream holding the bytes ``nib.save`` writes, level 1 as nibabel's, ~10x faster
than nibabel's zlib on a 240 x 240 x 155 x 3 float field (``benchmarks/outputs.py``); without
``isal``, with the stdlib's ``gzip``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
import zlib
from io import BytesIO
from typing import NamedTuple

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike

from jaxreg._nifti_geometry import NiftiGeometry, NiftiGeometryWarning, nifti_geometry

try:  # ISA-L: the same gzip format, written ~10x faster than with zlib (on up to 4 threads)
    from isal import igzip_threaded as _igzip_threaded
except ImportError:  # the stdlib's gzip writes the same files, slower
    _igzip_threaded = None

__all__ = [
    "GZIP_LEVEL",
    "MAX_ELEMENTS",
    "NiftiGeometry",
    "NiftiGeometryWarning",
    "NiftiVolume",
    "atomic_path",
    "disp_filename",
    "load_disp",
    "load_keypoints",
    "load_nifti",
    "nifti_geometry",
    "save_disp",
    "save_image",
    "save_keypoints",
    "save_nifti",
]

#: gzip level of written ``.nii.gz`` files: 1, as nibabel writes them. ISA-L's level 1 gives files as
#: small as zlib's level 1 and is its fastest (its level 0 writes 1.3x larger field files, and slower).
GZIP_LEVEL = 1
_GZIP_THREADS = min(4, os.cpu_count() or 1)

#: Largest number of array elements a loader accepts by default (a 224 x 192 x 224 x 3
#: Learn2Reg field has 29 M); guards against headers that claim absurd sizes.
MAX_ELEMENTS = 2**29


class NiftiVolume(NamedTuple):
    """A loaded NIfTI image.

    Attributes:
      array: the voxel data, array axis order as stored.
      affine: ``(4, 4)`` float64 voxel-to-world matrix (nibabel's RAS+ world, mm), read
        as ITK reads it (:func:`nifti_geometry`); its first columns have the lengths
        ``spacing``.
      spacing: voxel size of the (up to 3) spatial axes: the header's ``pixdim``
        (float32 values, as ``header.get_zooms()`` gives them), usually mm.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]


def _nifti_ext(path: str, func: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if path.endswith(ext):
            return ext
    raise ValueError(f"{func}: `path` must end in .nii or .nii.gz; got {path!r}")


def _open_checked(path: str | os.PathLike, func: str, max_elements: int) -> nib.Nifti1Image:
    path = os.fspath(path)
    _nifti_ext(path, func)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{func}: no such file: {path!r}")
    try:
        img = nib.load(path, mmap=False)  # reads the header only
    except Exception as e:  # nibabel raises several types for a bad header
        raise ValueError(f"{func}: {path!r} is not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise ValueError(f"{func}: {path!r} is not a NIfTI image; got {type(img).__name__}")
    shape = img.header.get_data_shape()
    dtype = img.header.get_data_dtype()
    if not 1 <= len(shape) <= 7 or any(int(n) < 1 for n in shape):
        raise ValueError(f"{func}: {path!r} has invalid dimensions {shape}")
    if dtype.fields is not None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{func}: {path!r} must hold real numbers; its header says dtype {dtype}")
    n = int(np.prod([int(v) for v in shape], dtype=object))
    if n > max_elements:
        raise ValueError(
            f"{func}: {path!r} header claims {n} elements {shape}, more than max_elements={max_elements}"
        )
    return img


def _in_memory(img: nib.Nifti1Image, path) -> nib.Nifti1Image:
    """The image decompressed in one zlib call (bounded by the header's size).

    nibabel streams ``.nii.gz`` through ``gzip.GzipFile`` in small chunks, holding the GIL
    between them; one ``zlib`` call runs without it, so reader threads of the input
    pipeline decompress in parallel (and it is a little faster alone). Falls back to
    nibabel for anything unusual (e.g. multi-member gzip files).
    """
    header = img.header  # (its vox_offset is reset by nibabel; the proxy keeps the file's)
    expected = int(img.dataobj.offset) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = zlib.decompressobj(wbits=31).decompress(raw, expected)
    except zlib.error:
        return img  # nibabel reports the corruption with its own message
    if len(data) < expected:
        return img
    return nib.Nifti1Image.from_bytes(data)


def _read(img: nib.Nifti1Image, path, func: str, dtype) -> np.ndarray:
    try:
        if dtype is None:
            return np.asarray(img.dataobj)
        return img.get_fdata(dtype=dtype)
    except Exception as e:  # truncated or corrupt data
        raise ValueError(f"{func}: could not read the data of {os.fspath(path)!r} ({type(e).__name__}: {e})") from e


def load_nifti(
    path: str | os.PathLike, *, dtype: type | np.dtype | None = None, max_elements: int = MAX_ELEMENTS
) -> NiftiVolume:
    """Loads a NIfTI image after checking its header.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file.
      dtype: ``None`` for the stored type (with the header's scaling applied by
        nibabel), or a float type for ``get_fdata(dtype=...)``; ``np.float64`` gives
        exactly what the Learn2Reg evaluator reads.
      max_elements: refuse headers that claim more elements than this.

    Returns:
      A `NiftiVolume` ``(array, affine, spacing)``; ``affine`` and ``spacing`` follow
      :func:`nifti_geometry` (ITK's reading of the header), and a
      :class:`NiftiGeometryWarning` is issued when the sform disagrees with ``pixdim`` or
      the qform.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: wrong extension, unreadable or corrupt file, non-numeric dtype,
        invalid or too large dimensions.
    """
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"load_nifti: `dtype` must be None or a float type; got {dtype!r}")
    img = _open_checked(path, "load_nifti", max_elements)
    if os.fspath(path).endswith(".gz"):
        img = _in_memory(img, path)
    array = _read(img, path, "load_nifti", dtype)
    geometry = nifti_geometry(img, path=path)
    return NiftiVolume(array, geometry.affine, geometry.spacing)


def _writable(array: ArrayLike, func: str) -> np.ndarray:
    a = np.asarray(array)
    if not 1 <= a.ndim <= 7 or a.size == 0:
        raise ValueError(f"{func}: `array` must have 1 to 7 non-empty dimensions; got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{func}: `array` must be real numeric; got dtype {a.dtype}")
    if a.dtype == np.float16:
        return a.astype(np.float32)  # NIfTI has no float16
    if a.dtype in (np.int64, np.uint64):  # nibabel refuses 64-bit ints without an explicit header
        info = np.iinfo(np.int32)
        if a.min() < info.min or a.max() > info.max:
            raise ValueError(f"{func}: `array` is {a.dtype} with values outside the int32 range")
        return a.astype(np.int32)
    return a


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ""):
    """Yields a temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Write the file to the yielded path; it is flushed to disk and moved onto ``path`` with
    ``os.replace`` (atomic), so readers see the old file or the complete new one, never a
    half-written one. If the block raises, the temporary file is removed and ``path`` is
    untouched.

    Args:
      path: the final file; its directory must exist.
      suffix: ending the temporary name must keep (e.g. ``".nii.gz"``, for writers that
        pick the format from the name).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory of {path!r} does not exist: {directory!r}")
    name = os.path.basename(path)
    stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    tmp = os.path.join(directory, f".{stem}.tmp-{secrets.token_hex(6)}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yields a temporary folder beside ``path`` that becomes ``path`` when the block succeeds.

    The folder appears complete or not at all: it is renamed into place (``os.replace``)
    only after the block; if the block raises, it is removed and ``path`` is untouched.
    ``path`` must not exist or be an empty folder (check it before doing any work).

    Args:
      path: the final folder; its parent is created if missing.

    Yields:
      The temporary folder, as a ``pathlib.Path``.
    """
    import pathlib
    import shutil
    import tempfile

    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty (the caller checked); a non-empty folder raises and stays as it was
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_nifti(path: str | os.PathLike, array: ArrayLike, affine: ArrayLike | None = None) -> None:
    """Writes an array as a NIfTI-1 image, atomically.

    Args:
      path: target ``.nii`` or ``.nii.gz`` file; its directory must exist. An existing
        file is replaced only once the new one is complete.
      array: 1- to 7-D real array. bool is stored as uint8, float16 as float32, and
        64-bit integers as int32 (ValueError if they do not fit).
      affine: ``(4, 4)`` voxel-to-world matrix; identity (1 mm voxels) if None.

    Raises:
      FileNotFoundError: the directory does not exist.
      ValueError: bad extension, array or affine.
    """
    path = os.fspath(path)
    _nifti_ext(path, "save_nifti")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save_nifti: directory of `path` does not exist: {directory!r}")
    data = _writable(array, "save_nifti")
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"save_nifti: `affine` must be a finite (4, 4) matrix; got shape {aff.shape}")
    save_image(path, nib.Nifti1Image(data, aff))


def save_image(path: str | os.PathLike, image: nib.Nifti1Image) -> None:
    """Writes a nibabel NIfTI image (any header) atomically: the bytes ``nib.save`` writes.

    A ``.nii.gz`` is one standard gzip stream of the ``.nii`` bytes at level :data:`GZIP_LEVEL`
    (ISA-L's gzip on up to 4 threads when the ``isal`` package is installed, else the stdlib's),
    read by nibabel, ITK and ANTs.

    Args:
      path: target ``.nii`` or ``.nii.gz`` file; its directory must exist.
      image: the image; its header is updated as ``nib.save`` updates it.

    Raises:
      FileNotFoundError: the directory does not exist.
      ValueError: bad extension.
    """
    path = os.fspath(path)
    with atomic_path(path, suffix=_nifti_ext(path, "save_image")) as tmp:
        _write_nifti(image, tmp)


def _write_nifti(image: nib.Nifti1Image, path: str) -> None:
    """``image`` into the file ``path`` (not atomically: :func:`save_image` is)."""
    if path.endswith(".nii"):
        nib.save(image, path)
        return
    raw = BytesIO()  # the .nii bytes in memory: ISA-L's threaded writer cannot seek, as nibabel does
    image.to_file_map(image.make_file_map({"image": raw, "header": raw}))
    with _gzip_writer(path) as f:
        f.write(raw.getbuffer())


def _gzip_writer(path: str):
    """A gzip file open for writing: ISA-L's on up to 4 threads, or the stdlib's without ``isal``."""
    if _igzip_threaded is None:
        return gzip.open(path, "wb", compresslevel=GZIP_LEVEL)
    return _igzip_threaded.open(path, "wb", compresslevel=GZIP_LEVEL, threads=_GZIP_THREADS)


def save_disp(path: str | os.PathLike, ddf: ArrayLike, *, affine: ArrayLike | None = None, dtype=np.float32) -> None:
    """Writes a Learn2Reg displacement file, atomically.

    Args:
      path: target ``.nii.gz`` (or ``.nii``) file, e.g. ``disp_filename(1, 2)``.
      ddf: ``(D, H, W, 3)`` finite displacement in voxels, array axis order, pull
        convention, on the fixed image grid.
      affine: optional affine to store (the fixed image's); the evaluator ignores it.
      dtype: ``np.float32`` (default) or ``np.float64``.

    Raises:
      FileNotFoundError: the directory does not exist.
      ValueError: ``ddf`` is not a finite (D, H, W, 3) real array, bad dtype or path.
    """
    a = np.asarray(ddf)
    if a.ndim != 4 or a.shape[-1] != 3 or min(a.shape) < 1:
        raise ValueError(f"save_disp: `ddf` must have shape (D, H, W, 3); got {a.shape}")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"save_disp: `ddf` must be real numeric; got dtype {a.dtype}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"save_disp: `dtype` must be float32 or float64; got {dtype!r}")
    a = a.astype(dtype, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"save_disp: `ddf` must be finite; got {np.count_nonzero(~np.isfinite(a))} NaN/inf values")
    save_nifti(path, a, affine)


def load_disp(path: str | os.PathLike, *, max_elements: int = MAX_ELEMENTS) -> np.ndarray:
    """Loads a Learn2Reg displacement file as the evaluator does (``get_fdata``).

    Args:
      path: a ``.nii.gz`` / ``.nii`` displacement file.
      max_elements: refuse headers that claim more elements than this.

    Returns:
      ``(D, H, W, 3)`` float64 displacement in voxels.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the header is not a real ``(D, H, W, 3)`` array, or the file is corrupt.
    """
    img = _open_checked(path, "load_disp", max_elements)
    shape = tuple(int(v) for v in img.header.get_data_shape())
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"load_disp: {os.fspath(path)!r} must hold a (D, H, W, 3) field; its header says {shape}")
    return _read(img, path, "load_disp", np.float64)


def _four_digits(value: int | str, name: str) -> str:
    if isinstance(value, str) and len(value) == 4 and value.isdigit():
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 9999:
        return f"{int(value):04d}"
    raise ValueError(f"disp_filename: `{name}` must be an integer in 0..9999 or a 4-digit string; got {value!r}")


def disp_filename(
    fixed_id: int | str,
    moving_id: int | str,
    *,
    task_long: bool = False,
    fixed_modality: int | str = 0,
    moving_modality: int | str = 1,
) -> str:
    """Learn2Reg name of the displacement file for a pair.

    Learn2Reg images are named ``<TASK>_<SSSS>_<MMMM>.nii.gz``: 4-digit case (subject)
    id, then 4-digit modality / time-point id. The evaluator reads these as characters
    ``[-16:-12]`` and ``[-11:-7]`` of the image path and looks for

    * the short name ``disp_<fixed case>_<moving case>.nii.gz``, accepted by the current
      evaluator only when the fixed modality is ``0000`` and the moving one ``0001``
      (e.g. NLST, LungCT) -- earlier versions also accepted it (and only it) when the two
      modalities are equal (e.g. OASIS, AbdomenCTCT pairs ``0000``/``0000``);
    * the long name ``disp_<fixed case>_<fixed mod>_<moving case>_<moving mod>.nii.gz``,
      accepted by the current evaluator for every pair.

    Args:
      fixed_id, moving_id: case ids, e.g. ``395`` or ``"0395"``.
      task_long: give the long name.
      fixed_modality, moving_modality: modality / time-point ids of the long name.

    Returns:
      The file name (no directory).
    """
    f, m = _four_digits(fixed_id, "fixed_id"), _four_digits(moving_id, "moving_id")
    if not task_long:
        return f"disp_{f}_{m}.nii.gz"
    fm = _four_digits(fixed_modality, "fixed_modality")
    mm = _four_digits(moving_modality, "moving_modality")
    return f"disp_{f}_{fm}_{m}_{mm}.nii.gz"


def load_keypoints(path: str | os.PathLike, *, max_points: int = 10**6) -> np.ndarray:
    """Loads a Learn2Reg keypoint / landmark CSV file.

    Args:
      path: CSV with one point per line, ``x0,x1,x2`` voxel coordinates in array axis
        order, no header (the evaluator reads it with ``np.loadtxt(delimiter=",")``).
      max_points: refuse files with more lines than this.

    Returns:
      ``(N, 3)`` float64 coordinates (also for a single point).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: unparsable, not 3 columns, empty, too many points or non-finite.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_keypoints: no such file: {path!r}")
    with open(path, "rb") as fh:
        n_lines = sum(1 for line in fh if line.strip())
    if n_lines > max_points:
        raise ValueError(f"load_keypoints: {path!r} has {n_lines} lines, more than max_points={max_points}")
    if n_lines == 0:
        raise ValueError(f"load_keypoints: {path!r} holds no points")
    try:
        pts = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"load_keypoints: {path!r} is not a comma-separated table of numbers ({e})") from e
    if pts.shape[0] == 0 or pts.shape[1] != 3:
        raise ValueError(f"load_keypoints: {path!r} must hold N >= 1 rows of 3 coordinates; got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"load_keypoints: {path!r} has non-finite coordinates")
    return pts


def save_keypoints(path: str | os.PathLike, points: ArrayLike) -> None:
    """Writes ``(N, 3)`` voxel coordinates as a Learn2Reg keypoint CSV, atomically.

    Args:
      path: target ``.csv``; its directory must exist.
      points: ``(N, 3)`` finite coordinates in array axis order (read back by
        `load_keypoints`).
    """
    path = os.fspath(path)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0 or not np.isfinite(pts).all():
        raise ValueError(f"save_keypoints: `points` must be a finite (N, 3) array with N >= 1; got shape {pts.shape}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save_keypoints: directory of `path` does not exist: {directory!r}")
    with atomic_path(path) as tmp:
        np.savetxt(tmp, pts, delimiter=",", fmt="%.6f")
