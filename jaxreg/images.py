"""Images with their geometry for :func:`jaxreg.register`: NIfTI paths, :class:`jaxreg.io.NiftiVolume`, nibabel images.

``jaxreg.register(fixed, moving)`` with images instead of arrays reads each with its
voxel-to-world matrix (as ITK reads the header: :func:`jaxreg.io.nifti_geometry`), takes the
fixed image's voxel size as ``spacing`` and returns an :class:`ImageRegistration`: the arrays'
result plus the transform in world coordinates, which it can save for ANTs and Slicer, apply to
other images and apply to points in mm.

Each image stays in its own space, as in ANTs: when the two grids differ (shape, voxel size,
orientation or origin), the registration runs in world coordinates. Both stages read the moving
image on its own grid, at every level of its own pyramid, through the world identity and the
current transform, so moving content outside the fixed field of view still counts, and the
similarity is weighted by where the moving image exists (no zeros filled in where it has no data).
The moving labels stay on their grid too and are warped once, by the final transform.

Direction, as ANTs': the transform maps **fixed-space points to moving-space points** (it pulls
the moving image onto the fixed grid); :meth:`ImageRegistration.apply_to_points` maps fixed-space
points into moving space (ANTs' ``apply_transforms_to_points`` with the forward transforms), and
with ``inverse=True`` moving-space points into fixed space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxreg import io, spatial
from jaxreg import transform as transform_lib
from jaxreg._objective import Grid

__all__ = ["FRAMES", "Image", "ImageRegistration", "apply_to_points", "is_image", "read_image", "resample_to"]

FRAMES = ("RAS", "LPS")  # nibabel's world axes, ITK's (x and y negated)
_LPS = np.array([-1.0, -1.0, 1.0])


class Image(NamedTuple):
    """An image and its grid."""

    array: np.ndarray  # (*S) or (X, Y, Z, C), float32
    affine: np.ndarray  # (4, 4) voxel-to-world, RAS mm
    spacing: tuple[float, ...]  # of the spatial axes, mm
    shape: tuple[int, ...]  # spatial


def is_image(value) -> bool:
    """Whether ``value`` is an image with a grid (a path, a :class:`jaxreg.io.NiftiVolume`, a nibabel
    image) rather than an array."""
    import nibabel as nib

    return isinstance(value, (str, os.PathLike, io.NiftiVolume, Image, nib.spatialimages.SpatialImage))


def read_image(value, name: str, *, channels: bool = False) -> Image:
    """A 2-D or 3-D image (``channels``: also ``(X, Y, Z, C)`` or ITK's ``(X, Y, Z, 1, C)``) with its grid.

    Args:
      value: a ``.nii``/``.nii.gz`` path, a :class:`jaxreg.io.NiftiVolume`, a nibabel image or an
        :class:`Image` (returned as it is).
      name: how error messages name it (e.g. ``"`fixed`"`` or ``"--fixed"``).

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: another rank, or a file :func:`jaxreg.io.load_nifti` refuses.
    """
    import nibabel as nib

    if isinstance(value, Image):  # already read (the CLI reads its files with their own messages)
        return value
    if isinstance(value, (str, os.PathLike)):
        if not os.path.exists(value):
            raise FileNotFoundError(f"{name}: no such file {os.fspath(value)!r}.")
        volume = io.load_nifti(value, dtype=np.float32)
    elif isinstance(value, nib.spatialimages.SpatialImage):
        geometry = io.nifti_geometry(value)
        volume = io.NiftiVolume(np.asarray(value.get_fdata(dtype=np.float32)), geometry.affine, geometry.spacing)
    elif isinstance(value, io.NiftiVolume):
        volume = value
    else:
        raise ValueError(f"{name} must be a NIfTI path, a jaxreg.io.NiftiVolume or a nibabel image; got "
                         f"{type(value).__name__}.")
    array = np.asarray(volume.array, np.float32)
    if array.ndim == 5 and array.shape[3] == 1:  # an ITK vector image
        array = array[:, :, :, 0]
    while array.ndim > 2 and array.shape[-1] == 1:  # 2-D images stored as (H, W, 1)
        array = array[..., 0]
    if channels and array.ndim == 4 and array.shape[2] > 1:
        shape = array.shape[:3]
    elif array.ndim in (2, 3):
        shape = array.shape
    else:
        expected = "a 2-D or 3-D image, or a 3-D image with channels (X, Y, Z, C)" if channels else \
            "a 2-D or 3-D image"
        where = f": {os.fspath(value)!r}" if isinstance(value, (str, os.PathLike)) else ""
        raise ValueError(f"{name}{where} must hold {expected}; got shape {np.shape(volume.array)}.")
    return Image(array, np.asarray(volume.affine, np.float64), tuple(float(s) for s in volume.spacing[: len(shape)]),
                 tuple(int(s) for s in shape))


def voxel_matrix(source_affine, target_affine, ndim: int) -> np.ndarray:
    """``(ndim+1, ndim+1)``: target voxel → source voxel through world coordinates (in-plane part in 2-D)."""
    keep = list(range(ndim)) + [3]
    a = np.asarray(source_affine, np.float64)[np.ix_(keep, keep)]
    b = np.asarray(target_affine, np.float64)[np.ix_(keep, keep)]
    return np.linalg.solve(a, b)


def same_space(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-4)


def resample_to(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray, *,
                order: int = 1) -> np.ndarray:
    """``array`` (with voxel-to-world ``affine``) sampled on the grid of ``shape`` and ``target_affine``.

    Linear (``order=1``) or nearest-neighbour (``order=0``, labels) interpolation; zero
    outside ``array``. 2-D images use the in-plane part of the affines.
    """
    from scipy import ndimage

    ndim = len(shape)
    to_source = voxel_matrix(affine, target_affine, ndim)  # target voxel -> world -> source voxel
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0).reshape(ndim, -1)
    coords = to_source[:ndim, :ndim] @ grid + to_source[:ndim, ndim:]
    out = ndimage.map_coordinates(np.asarray(array, np.float32), coords, order=order, mode="constant", cval=0.0)
    return out.reshape(shape)


def on_grid(moving: Image, fixed: Image, *, order: int = 1) -> np.ndarray:
    """``moving``'s array on ``fixed``'s grid (each channel alone), or as it is when the grids agree."""
    if same_space(fixed.shape, fixed.affine, moving.shape, moving.affine):
        return moving.array
    if moving.array.ndim == len(moving.shape):
        return resample_to(moving.array, moving.affine, fixed.shape, fixed.affine, order=order)
    return np.stack([resample_to(moving.array[..., c], moving.affine, fixed.shape, fixed.affine, order=order)
                     for c in range(moving.array.shape[-1])], -1)


def apply_to_points(transform, points, *, frame: str = "RAS", inverse: bool = False) -> np.ndarray:
    """Maps points in world mm through a 3-D transform.

    Args:
      transform: a :class:`jaxreg.transform.Transform` or a path it loads from.
      points: ``(N, 3)`` points in mm, in ``frame``.
      frame: ``"RAS"`` (nibabel's, 3D Slicer's) or ``"LPS"`` (ITK's, ANTs'); the result is in the same frame.
      inverse: ``False``: fixed-space points → the moving-space points the registration matched
        them with (the transform's own direction, as ANTs' ``apply_transforms_to_points`` with the
        forward transforms); ``True``: moving-space points → fixed space (through the inverse,
        :func:`jaxreg.transform.inverse_ddf`).

    Returns:
      ``(N, 3)`` float64 points in mm, in ``frame``.

    Raises:
      ValueError: points not ``(N, 3)`` or not finite, another ``frame``, a 2-D transform, a
        transform :func:`jaxreg.transform.checked` refuses (e.g. a reflection).
    """
    t = transform_lib.checked(transform)
    if len(t.fixed_shape) != 3:
        raise ValueError(f"apply_to_points: world points need a 3-D transform; got a {len(t.fixed_shape)}-D one.")
    if frame not in FRAMES:
        raise ValueError(f"`frame` must be one of {FRAMES}; got {frame!r}.")
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
        raise ValueError(f"`points` must be a finite (N, 3) array of mm; got shape {pts.shape}.")
    ras = pts * _LPS if frame == "LPS" else pts
    homogeneous = np.c_[ras, np.ones(len(ras))]
    if not inverse:
        voxels = (np.linalg.inv(t.fixed_affine) @ homogeneous.T).T[:, :3]
        if t.deformation is not None:
            voxels = np.asarray(spatial.warp_points(voxels.astype(np.float32), np.asarray(t.deformation)), np.float64)
        out = (t.moving_affine @ t.matrix @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
    else:
        voxels = (np.linalg.inv(t.moving_affine) @ homogeneous.T).T[:, :3]
        field = transform_lib.inverse_ddf(t.matrix, t.velocity, shape=t.moving_shape, steps=t.steps,
                                          deformation=t.deformation)
        voxels = np.asarray(spatial.warp_points(voxels.astype(np.float32), field), np.float64)
        out = (t.fixed_affine @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
    return out * _LPS if frame == "LPS" else out


class ImageRegistration:
    """What :func:`jaxreg.register` returns for images with a grid: the arrays' result and the world transform.

    Attributes:
      registration: the :class:`jaxreg.Registration` of the arrays (on the fixed grid).
      transform: the :class:`jaxreg.transform.Transform`, fixed grid → the moving image's own grid.
      fixed: the fixed :class:`Image`.
      two_grids: whether the two images lay on different grids (registered in world coordinates).

    ``warped``, ``warped_labels``, ``ddf`` and ``info`` are the registration's (on the fixed grid).
    """

    def __init__(self, registration, transform: transform_lib.Transform, fixed: Image, two_grids: bool):
        self.registration = registration
        self.transform = transform
        self.fixed = fixed
        self.two_grids = two_grids

    def __getattr__(self, name: str) -> Any:  # warped, warped_labels, ddf, info, matrix, ...
        if name.startswith("_") or name in ("registration",):
            raise AttributeError(name)
        return getattr(self.registration, name)

    def save(self, directory) -> dict[str, Any]:
        """Writes the transform for jaxreg, ANTs and Slicer into ``directory`` (a new or empty folder,
        written atomically): ``transform/`` (:func:`jaxreg.transform.save_transform`), ``itk/`` (3-D:
        ``warp.nii.gz``, ``inverse_warp.nii.gz``, ``affine.mat``, ``affine.txt``) and ``warped.nii.gz``.

        Returns:
          ``{"transform": ..., "fwdtransforms": [...], "invtransforms": [...], "whichtoinvert": [...]}``:
          paths as ANTsPy's ``registration`` lists them: ``ants.apply_transforms(fixed, moving,
          fwdtransforms)`` warps the moving image like ``warped.nii.gz``;
          ``ants.apply_transforms(moving, fixed, invtransforms, whichtoinvert=whichtoinvert)`` the
          fixed image back.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(f"`directory` {os.fspath(directory)!r} exists and is not empty; give a new folder.")
        with io.atomic_folder(directory) as staging:
            transform_lib.save_transform(staging / "transform", self.transform)
            io.save_nifti(staging / "warped.nii.gz", np.asarray(self.registration.warped), self.fixed.affine)
            files = {}
            if len(self.fixed.shape) == 3:
                files = transform_lib.export_itk(staging / "itk", self.transform)
        out = {"transform": str(directory / "transform")}
        if files:
            itk = directory / "itk"
            out.update(fwdtransforms=[str(itk / files["warp"]), str(itk / files["affine_mat"])],
                       invtransforms=[str(itk / files["affine_mat"]), str(itk / files["inverse_warp"])],
                       whichtoinvert=[True, False])
        return out

    def apply(self, image, *, labels: str | None = None, inverse: bool = False, outside: str | None = None):
        """Resamples another image of the moving scan onto the fixed grid (``inverse``: of the fixed
        scan onto the moving grid).

        Args:
          image: a path, :class:`jaxreg.io.NiftiVolume` or nibabel image on the moving image's grid
            (the fixed one with ``inverse``), or an array on that grid.
          labels: a label map: ``"nearest"`` or ``"linear"`` (:func:`jaxreg.spatial.warp_labels`).
          inverse: the other direction.
          outside: ``"edge"`` or ``"zero"`` (default: edge values for images, 0 for labels).

        Returns:
          The resampled array; its grid is ``self.transform.fixed_affine`` (``moving_affine`` with ``inverse``).
        """
        affine = None
        if is_image(image):
            read = read_image(image, "`image`", channels=labels is None)
            image, affine = read.array, read.affine
            if labels is not None:
                image = np.rint(image).astype(np.int32)
        if outside not in (None, "edge", "zero"):
            raise ValueError(f"`outside` must be 'edge', 'zero' or None; got {outside!r}.")
        mode = None if outside is None else ("nearest" if outside == "edge" else "constant")
        return np.asarray(transform_lib.apply(self.transform, image, affine=affine, mode=mode, inverse=inverse,
                                              labels=labels))

    def apply_to_points(self, points, *, frame: str = "RAS", inverse: bool = False) -> np.ndarray:
        """:func:`apply_to_points` with this registration's transform."""
        return apply_to_points(self.transform, points, frame=frame, inverse=inverse)


def register_images(register, fixed, moving, *, moving_labels=None, fixed_mask=None, spacing=None, **options):
    """:func:`jaxreg.register` on images with a grid (module docstring); ``register`` is the array function."""
    if options.get("batch"):
        raise ValueError("`batch` takes stacks of arrays; register images one pair at a time.")
    if not (is_image(fixed) and is_image(moving)):
        raise ValueError("`fixed` and `moving` must both be images with a grid (paths, NiftiVolume or nibabel images) "
                         "or both arrays.")
    f = read_image(fixed, "`fixed`", channels=True)
    m = read_image(moving, "`moving`", channels=True)
    if len(f.shape) != len(m.shape):
        raise ValueError(f"`fixed` and `moving` must both be 2-D or both 3-D; got shapes {f.shape} and {m.shape}.")
    labels = None
    if moving_labels is not None:
        labels = read_image(moving_labels, "`moving_labels`") if is_image(moving_labels) else \
            Image(np.asarray(moving_labels), m.affine, m.spacing, m.shape)
        if not same_space(labels.shape, labels.affine, m.shape, m.affine):
            raise ValueError(f"`moving_labels` must lie on the moving image's grid {m.shape}; got {labels.shape}.")
        labels = np.rint(labels.array).astype(np.int32)
    if fixed_mask is not None and is_image(fixed_mask):
        mask = read_image(fixed_mask, "`fixed_mask`")
        if not same_space(mask.shape, mask.affine, f.shape, f.affine):
            raise ValueError(f"`fixed_mask` must lie on the fixed image's grid {f.shape}; got {mask.shape}.")
        fixed_mask = mask.array
    ndim = len(f.shape)
    two_grids = not same_space(f.shape, f.affine, m.shape, m.affine)
    grid = Grid(voxel_matrix(m.affine, f.affine, ndim), m.spacing) if two_grids else None
    spacing = f.spacing if spacing is None else spacing
    result = register(f.array, m.array, moving_labels=labels, fixed_mask=fixed_mask, spacing=spacing, grid=grid,
                      **options)
    transform = transform_lib.from_registration(
        result, fixed_affine=f.affine, moving_affine=m.affine, moving_shape=m.shape,
        steps=options.get("integration_steps"))
    return ImageRegistration(result, transform, f, two_grids)
