"""Evaluation metrics of a registration. Each docstring says which direction is better.

Device-side (jit/vmap/grad-able JAX): ``dice`` (with explicit ``labels``), ``tre``,
``jacobian_determinant``, ``folding_fraction``, ``sdlogj``. Host-side (numpy/scipy, call
outside jit): ``hd95``, which needs a Euclidean distance transform.

For the exact Learn2Reg challenge definitions (which differ in places) see
``jaxreg.evaluation.l2r`` and ``docs/metrics.md``.

A leaf module: it imports only ``jaxreg.spatial`` (another leaf) for interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import spatial
from jaxreg._checks import check_ddf, check_same_shape

__all__ = [
    "dice",
    "folding_fraction",
    "hd95",
    "jacobian_determinant",
    "sdlogj",
    "tre",
]


def _check_labels(x, name: str) -> None:
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(
            f"`{name}` must be an integer label map; got dtype {dtype}. Round and cast "
            f"(e.g. `labels.astype(np.int32)`) or warp labels with order=0."
        )


def _resolve_labels(a, b, labels) -> tuple[int, ...]:
    if labels is not None:
        return tuple(int(label) for label in labels)
    try:
        present = np.union1d(np.unique(np.asarray(a)), np.unique(np.asarray(b)))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as err:
        raise ValueError("`labels` must be given under jit/vmap (got None).") from err
    return tuple(int(label) for label in present if label != 0)


def dice(a, b, *, labels: Sequence[int] | None = None) -> jax.Array:
    """Dice overlap per label, higher is better.

    ``2|A∩B| / (|A| + |B|)`` for the voxel sets of each label.

    Args:
      a: ``(*S)`` integer label map (e.g. fixed labels).
      b: ``(*S)`` integer label map (e.g. warped moving labels).
      labels: the labels to score; ``None`` uses every nonzero label present in ``a`` or
        ``b`` (host-side only; give them explicitly under jit).

    Returns:
      ``(L,)`` float32 in ``[0, 1]``, NaN where a label is absent from both maps
      (average with ``jnp.nanmean``).
    """
    _check_labels(a, "a")
    _check_labels(b, "b")
    check_same_shape(a, b, "a", "b")
    labels = _resolve_labels(a, b, labels)
    a, b = jnp.asarray(a), jnp.asarray(b)

    def one(label):
        in_a, in_b = a == label, b == label
        total = jnp.sum(in_a) + jnp.sum(in_b)
        overlap = jnp.sum(in_a & in_b)
        return jnp.where(total > 0, 2.0 * overlap / jnp.maximum(total, 1), jnp.nan)

    if not labels:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([one(label) for label in labels]).astype(jnp.float32)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (or at the border)."""
    from scipy import ndimage as ndi  # here, not at the top: scipy.ndimage takes ~0.2 s to import

    eroded = ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(mask.ndim, 1),
                                border_value=0)
    return mask & ~eroded


def hd95(a, b, *, spacing: Sequence[float] | None = None, labels: Sequence[int] | None = None) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance per label in mm, lower is better.

    Surfaces are the label's voxels with a face neighbour outside the label (the image
    border counts as outside). For each surface voxel of one map the distance to the nearest
    surface voxel of the other is taken (Euclidean, in mm); the result is the larger of the
    two directed 95th percentiles (``np.percentile``, linear interpolation). Host-side.

    Args:
      a: ``(*S)`` integer label map.
      b: ``(*S)`` integer label map.
      spacing: voxel size in mm per axis (default 1).
      labels: labels to score; ``None`` uses every nonzero label present in ``a`` or ``b``.

    Returns:
      ``(L,)`` float64 array: NaN where a label is absent from both maps, ``inf`` where it is
      absent from exactly one.
    """
    _check_labels(a, "a")
    _check_labels(b, "b")
    check_same_shape(a, b, "a", "b")
    a, b = np.asarray(a), np.asarray(b)
    spacing = np.ones(a.ndim) if spacing is None else np.asarray(spacing, np.float64)
    if spacing.shape != (a.ndim,) or np.any(spacing <= 0):
        raise ValueError(f"`spacing` must be {a.ndim} positive numbers (mm); got {spacing.tolist()}.")
    from scipy import ndimage as ndi  # here, not at the top, as in _surface

    labels = _resolve_labels(a, b, labels)
    out = np.empty(len(labels))
    for i, label in enumerate(labels):
        in_a, in_b = a == label, b == label
        if not in_a.any() and not in_b.any():
            out[i] = np.nan
        elif not in_a.any() or not in_b.any():
            out[i] = np.inf
        else:
            sa, sb = _surface(in_a), _surface(in_b)
            # Distance from every voxel to the nearest surface voxel of the other map.
            to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
            to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
            out[i] = max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95))
    return out


def tre(fixed_points, moving_points, ddf, *, spacing: Sequence[float] | None = None) -> jax.Array:
    """Target registration error per landmark in mm, lower is better.

    The fixed points are moved by the field (``p + ddf(p)``, linear interpolation; pull
    convention) and compared with their moving counterparts.

    Args:
      fixed_points: ``(N, ndim)`` voxel coordinates in the fixed image (array axis order).
      moving_points: ``(N, ndim)`` corresponding voxel coordinates in the moving image.
      ddf: ``(*S, ndim)`` displacement in voxels on the fixed grid.
      spacing: voxel size in mm per axis (default 1, i.e. TRE in voxels).

    Returns:
      ``(N,)`` Euclidean distances in mm.
    """
    ndim = check_ddf(ddf)
    check_same_shape(fixed_points, moving_points, "fixed_points", "moving_points")
    spacing = jnp.ones(ndim) if spacing is None else jnp.asarray(spacing, jnp.float32)
    if spacing.shape != (ndim,):
        raise ValueError(f"`spacing` must have {ndim} entries (mm per axis); got shape {spacing.shape}.")
    moved = spatial.warp_points(fixed_points, ddf)
    return jnp.linalg.norm((moved - jnp.asarray(moving_points, moved.dtype)) * spacing, axis=-1)


def jacobian_determinant(ddf) -> jax.Array:
    """Determinant of the Jacobian of ``x ↦ x + ddf(x)``; 1 means volume preserved.

    Derivatives are central differences inside and one-sided at the border
    (``np.gradient`` with ``edge_order=1``), so the determinant of an affine field is exact
    everywhere. Values ``<= 0`` mark folding.

    Args:
      ddf: ``(*S, ndim)`` displacement in voxels.

    Returns:
      ``(*S)`` determinant (unitless).
    """
    ndim = check_ddf(ddf)
    ddf = jnp.asarray(ddf)
    if min(ddf.shape[:-1]) < 2:
        raise ValueError(f"every spatial side of `ddf` must be >= 2 for derivatives; got shape {tuple(ddf.shape)}.")
    # jac[..., c, a] = ∂(x_c + u_c)/∂x_a
    grads = jnp.stack(jnp.gradient(ddf, axis=tuple(range(ndim))), axis=-1)
    jac = grads + jnp.eye(ndim, dtype=ddf.dtype)
    if ndim == 2:
        return jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    return (
        jac[..., 0, 0] * (jac[..., 1, 1] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 1])
        - jac[..., 0, 1] * (jac[..., 1, 0] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 0])
        + jac[..., 0, 2] * (jac[..., 1, 0] * jac[..., 2, 1] - jac[..., 1, 1] * jac[..., 2, 0])
    )


def folding_fraction(ddf, *, mask=None) -> jax.Array:
    """Share of voxels whose Jacobian determinant is ``<= 0`` (folding), lower is better.

    Args:
      ddf: ``(*S, ndim)`` displacement in voxels.
      mask: optional ``(*S)`` array, nonzero where voxels count.

    Returns:
      Scalar fraction in ``[0, 1]`` (multiply by 100 for %).
    """
    det = jacobian_determinant(ddf)
    folded = (det <= 0).astype(jnp.float32)
    if mask is None:
        return jnp.mean(folded)
    check_same_shape(mask, det, "mask", "ddf[..., 0]")
    m = (jnp.asarray(mask) != 0).astype(jnp.float32)
    return jnp.sum(folded * m) / jnp.maximum(jnp.sum(m), 1.0)


def sdlogj(ddf, *, clip: float = 1e-9) -> jax.Array:
    """Standard deviation of the log Jacobian determinant, lower is smoother.

    ``std(log(max(det, clip)))`` over all voxels, with ``det`` from
    :func:`jacobian_determinant`. Folded voxels (det ``<= 0``) have no logarithm and are
    clipped to ``clip``, which makes them count heavily; report :func:`folding_fraction`
    beside it. (The Learn2Reg variant adds 3 before the log and crops the border; see
    ``jaxreg.evaluation.l2r``.)

    Args:
      ddf: ``(*S, ndim)`` displacement in voxels.
      clip: lower clip of the determinant before the log.

    Returns:
      Scalar ``>= 0``; 0 for any affine field.
    """
    det = jacobian_determinant(ddf)
    return jnp.std(jnp.log(jnp.maximum(det, clip)))
