"""PNG figures of diffusion registration (DiffuseReg): how a sample forms, how sure it is.

``sampling_figure`` follows one run of a diffusion sampler (DiffuseReg's Fig. 3): for each
observed step ``t`` the noisy field φ_t, the predicted clean field x̂₀ drawn as a deformed
grid over the image it warps, and the difference that remains to the fixed image.
``uncertainty_figure`` shows the per-voxel spread of an ensemble of sampled fields next to
the fixed and the mean-warped image.

Both take one sample, channels-last arrays and displacement fields ``(*S, ndim)`` in
voxels with the pull convention ``warped(x) = moving(x + ddf(x))``. 3-D volumes are shown
by one slice across array axis 0 (the middle one unless ``slice_index`` is given), with the
field's two in-plane components (axes 1 and 2). Like :mod:`jaxreg.evaluation.figures`
(whose helpers they use), they draw on ``matplotlib.figure.Figure`` directly (no pyplot)
and write the PNG atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from jaxreg._checks import check_ddf
from jaxreg.evaluation.figures import (
    _as_image,
    _check_int,
    _draw_labels,
    _save,
    deformed_grid_lines,
)

__all__ = ["sampling_figure", "uncertainty_figure"]

_PANEL = 2.3  # inches per panel side


def _image(a, name: str, spatial: tuple[int, ...], ref: str) -> np.ndarray:
    """``a`` as a finite float ``spatial`` array (a trailing channel of 1 is dropped)."""
    try:
        arr = _as_image(a, name, spatial)
    except ValueError:
        raise ValueError(
            f"`{name}` must have shape {spatial} or {spatial + (1,)} to match `{ref}`; got shape {np.shape(a)}."
        ) from None
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got NaN or inf values.")
    return arr


def _field(a, name: str, shape: tuple[int, ...] | None, ref: str | None) -> np.ndarray:
    """``a`` as a finite float field of ``shape`` (any valid ``(*S, ndim)`` if ``shape`` is None)."""
    arr = np.asarray(a)
    check_ddf(arr, name)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape} to match `{ref}`; got shape {arr.shape}.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got NaN or inf values.")
    return arr


def _step(t, name: str) -> int:
    a = np.asarray(t)
    if a.ndim != 0 or a.dtype.kind not in "iu" or int(a) < 0:
        raise ValueError(f"`{name}` must be a non-negative integer sampling step; got {t!r}.")
    return int(a)


def _slicer(spatial: tuple[int, ...], slice_index):
    """Returns ``(cut, where)``: ``cut`` maps a ``(*S, ...)`` array to the shown 2-D plane
    (and a field to its two in-plane components); ``where`` names the slice ("" for 2-D)."""
    if len(spatial) == 2:
        if slice_index is not None:
            raise ValueError(f"`slice_index` must be None for 2-D inputs; got {slice_index!r}.")
        return (lambda a, field=False: a), ""
    k = spatial[0] // 2 if slice_index is None else slice_index
    _check_int(k, "slice_index", 0, spatial[0])
    k = int(k)

    def cut(a, field=False):
        return a[k][..., 1:] if field else a[k]

    return cut, f" (axis 0, slice {k})"


def _frame_axes(axes, h: int, w: int) -> None:
    for ax in np.ravel(axes):
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])


def _grid(ax, u2: np.ndarray, step: int, color: str) -> None:
    segs = [line[:, ::-1] for line in deformed_grid_lines(u2, step=step)]  # (x, y) = (col, row)
    ax.add_collection(LineCollection(segs, colors=color, linewidths=0.7))


def sampling_figure(
    path: str | os.PathLike,
    fixed,
    moving,
    frames: Sequence[tuple],
    *,
    title: str | None = None,
    grid_step: int = 4,
    slice_index: int | None = None,
) -> None:
    """Writes a PNG of a diffusion sampler forming a registration (DiffuseReg's Fig. 3).

    Layout: three rows and one column per frame, after a first column with the fixed
    image, the moving image and ``|fixed − moving|``. Each frame's column is titled
    ``t = …`` and shows, top to bottom:

    1. the noisy field φ_t as its (in-plane) magnitude in voxels, one colour scale for
       all frames, with the grid mapped by ``x ↦ x + φ_t(x)`` (white) over it;
    2. the predicted clean field x̂₀ as the grid mapped by ``x ↦ x + x̂₀(x)`` (cyan) over
       the image it warps;
    3. ``|warped − fixed|``, on the same colour scale as ``|fixed − moving|`` (darker is
       better), with its mean below.

    Grid lines run every ``grid_step`` voxels. Images share one grey scale.

    Args:
      path: target ``.png`` file; its directory must exist. Replaced atomically.
      fixed, moving: ``(*S)`` or ``(*S, 1)`` images, ``S = (H, W)`` or ``(D, H, W)``.
      frames: the observed steps in the order they were sampled, at least one, each a
        tuple ``(t, ddf_t, ddf0, warped)``: ``t`` the sampling step (an integer >= 0);
        ``ddf_t`` the noisy field φ_t, ``(*S, ndim)`` in voxels; ``ddf0`` the predicted
        clean field x̂₀, ``(*S, ndim)`` in voxels, pull convention
        ``warped(x) = moving(x + ddf0(x))``; ``warped`` the moving image warped by
        ``ddf0``, ``(*S)`` or ``(*S, 1)``. ``S`` is taken from ``frames[0]``'s ``ddf0``.
      title: optional figure title (3-D adds the slice shown).
      grid_step: spacing of the drawn grid lines in voxels, a positive integer.
      slice_index: for 3-D, the slice shown across array axis 0 (default: the middle).
        Must be None for 2-D.

    Raises:
      ValueError: if ``frames`` is empty or a frame is not a 4-tuple; on a bad or
        non-finite field, an image or field whose shape does not match, a bad ``t``,
        ``grid_step`` or ``slice_index``. The message names the argument (e.g.
        ``frames[2].ddf_t``).
    """
    try:
        frames = list(frames)
    except TypeError:
        raise ValueError(
            f"`frames` must be a sequence of (t, ddf_t, ddf0, warped) tuples; got {type(frames).__name__}."
        ) from None
    if not frames:
        raise ValueError("`frames` must hold at least one (t, ddf_t, ddf0, warped) frame; got none.")
    for k, fr in enumerate(frames):
        if not isinstance(fr, Sequence) or isinstance(fr, str) or len(fr) != 4:
            got = f"length {len(fr)}" if isinstance(fr, Sequence) else type(fr).__name__
            raise ValueError(f"`frames[{k}]` must be a tuple (t, ddf_t, ddf0, warped); got {got}.")
    _check_int(grid_step, "grid_step", 1)
    ref = "frames[0].ddf0"
    ddf_shape = _field(frames[0][2], ref, None, None).shape
    spatial = ddf_shape[:-1]
    fix = _image(fixed, "fixed", spatial, ref)
    mov = _image(moving, "moving", spatial, ref)
    cut, where = _slicer(spatial, slice_index)
    cols = []
    for k, (t, ddf_t, ddf0, warped) in enumerate(frames):
        step = _step(t, f"frames[{k}].t")
        u_t = cut(_field(ddf_t, f"frames[{k}].ddf_t", ddf_shape, ref), field=True)
        u_0 = cut(_field(ddf0, f"frames[{k}].ddf0", ddf_shape, ref), field=True)
        wrp = cut(_image(warped, f"frames[{k}].warped", spatial, ref))
        cols.append((step, u_t, u_0, wrp))
    fix, mov = cut(fix), cut(mov)
    h, w = fix.shape
    gs = int(grid_step)

    lo = min(float(a.min()) for a in [fix, mov] + [c[3] for c in cols])
    hi = max(float(a.max()) for a in [fix, mov] + [c[3] for c in cols])
    before = np.abs(fix - mov)
    diffs = [np.abs(c[3] - fix) for c in cols]
    dmax = max([float(before.max()), 1e-12] + [float(d.max()) for d in diffs])
    mags = [np.linalg.norm(c[1], axis=-1) for c in cols]
    mmax = max([1e-12] + [float(m.max()) for m in mags])

    n = len(cols)
    fig = Figure(figsize=(_PANEL * (n + 1) + 1.2, _PANEL * 3 * max(h / w, 0.4) + 1.0), layout="constrained")
    axes = fig.subplots(3, n + 1, squeeze=False)
    axes[0, 0].imshow(fix, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("fixed")
    axes[1, 0].imshow(mov, cmap="gray", vmin=lo, vmax=hi)
    axes[1, 0].set_title("moving")
    axes[2, 0].imshow(before, cmap="magma", vmin=0.0, vmax=dmax)
    axes[2, 0].set_title("|fixed − moving|")
    axes[2, 0].set_xlabel(f"mean {before.mean():.3g}")
    for j, ((step, u_t, u_0, wrp), mag, diff) in enumerate(zip(cols, mags, diffs), start=1):
        ax = axes[0, j]
        im_mag = ax.imshow(mag, cmap="viridis", vmin=0.0, vmax=mmax)
        _grid(ax, u_t, gs, "white")
        ax.set_title(f"t = {step}")
        ax = axes[1, j]
        ax.imshow(wrp, cmap="gray", vmin=lo, vmax=hi)
        _grid(ax, u_0, gs, "tab:cyan")
        ax = axes[2, j]
        im_diff = ax.imshow(diff, cmap="magma", vmin=0.0, vmax=dmax)
        ax.set_xlabel(f"mean {diff.mean():.3g}")
    inplane = " in-plane" if len(spatial) == 3 else ""
    axes[0, 1].set_ylabel(f"noisy φ_t\n(|φ_t|{inplane}, grid)")
    axes[1, 1].set_ylabel(f"x̂₀ grid (every {gs} vx)\nover warped")
    axes[2, 1].set_ylabel("|warped − fixed|")
    fig.colorbar(im_mag, ax=axes[0, 1:], fraction=0.046, pad=0.02, label=f"|φ_t|{inplane} (voxels)")
    fig.colorbar(im_diff, ax=axes[2, :], fraction=0.046, pad=0.02, label="|difference|")
    _frame_axes(axes, h, w)
    if title is not None or where:
        fig.suptitle(f"{title or ''}{where}".strip())
    _save(fig, path)


def uncertainty_figure(
    path: str | os.PathLike,
    fixed,
    warped,
    std,
    *,
    labels=None,
    label_names=None,
    title: str | None = None,
    slice_index: int | None = None,
) -> Figure:
    """Writes a one-row PNG of the uncertainty of an ensemble of sampled registrations.

    Panels: the fixed image, the warped image (the moving image warped by the ensemble's
    mean field), and the per-voxel uncertainty ``‖std(x)‖``, the Euclidean norm over all
    ``ndim`` components of the field's standard deviation (for 3-D including the
    out-of-plane one), in voxels, with a colourbar (0 = all samples agree; lower is more
    certain). Its title gives the mean and maximum over the whole field. Fixed label maps,
    if given, are drawn as contours (one colour per label value) over the fixed image and
    the uncertainty map, and a legend below the panels names each contour's colour (the
    fixed image's label, by ``label_names`` where given), so that the spread can be read
    against the anatomy.

    Args:
      path: target ``.png`` file; its directory must exist. Replaced atomically.
      fixed, warped: ``(*S)`` or ``(*S, 1)`` images, ``S = (H, W)`` or ``(D, H, W)``.
      std: ``(*S, ndim)`` per-voxel, per-component standard deviation of the sampled
        displacement fields, in voxels, finite and ``>= 0``.
      labels: optional ``(*S)`` or ``(*S, 1)`` integer label map of the fixed image
        (0 = background, not drawn).
      label_names: optional mapping label value → name for the legend (keys ints or
        strings, as in ``config.eval.label_names``); unnamed labels are shown as
        ``label k``.
      title: optional figure title (3-D adds the slice shown).
      slice_index: for 3-D, the slice shown across array axis 0 (default: the middle).
        Must be None for 2-D.

    Returns:
      The figure (already written), for inspection.

    Raises:
      ValueError: on a bad, non-finite or negative ``std``, an image or label map whose
        shape does not match ``std``, or a bad ``slice_index``.
    """
    sd = _field(std, "std", None, None)
    if np.any(sd < 0):
        raise ValueError(f"`std` must be >= 0 (a standard deviation); got minimum {sd.min():.3g}.")
    spatial = sd.shape[:-1]
    fix = _image(fixed, "fixed", spatial, "std")
    wrp = _image(warped, "warped", spatial, "std")
    lab = None if labels is None else np.rint(_image(labels, "labels", spatial, "std")).astype(np.int64)
    cut, where = _slicer(spatial, slice_index)
    unc = np.linalg.norm(sd, axis=-1)
    fix2, wrp2, unc2 = cut(fix), cut(wrp), cut(unc)
    lab2 = None if lab is None else cut(lab)
    h, w = fix2.shape

    fig = Figure(figsize=(3 * _PANEL + 1.0, _PANEL * max(h / w, 0.4) + 0.9), layout="constrained")
    axes = fig.subplots(1, 3)
    lo, hi = min(float(fix2.min()), float(wrp2.min())), max(float(fix2.max()), float(wrp2.max()))
    axes[0].imshow(fix2, cmap="gray", vmin=lo, vmax=hi)
    _draw_labels(axes[0], lab2)
    axes[0].set_title("fixed")
    axes[1].imshow(wrp2, cmap="gray", vmin=lo, vmax=hi)
    axes[1].set_title("warped (mean field)")
    im = axes[2].imshow(unc2, cmap="viridis", vmin=0.0, vmax=max(float(unc.max()), 1e-12))
    _draw_labels(axes[2], lab2)
    axes[2].set_title(f"uncertainty ‖std‖\nmean {unc.mean():.3g}, max {unc.max():.3g} vx")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02, label="‖std‖ (voxels)")
    _frame_axes(axes, h, w)
    if lab2 is not None:
        _label_legend(fig, lab2, label_names)
    if title is not None or where:
        fig.suptitle(f"{title or ''}{where}".strip())
    _save(fig, path)
    return fig


def _label_legend(fig: Figure, labels: np.ndarray, names) -> None:
    """A legend below the panels naming the colour of each contour drawn by ``_draw_labels``."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    names = {str(k): str(v) for k, v in (names or {}).items()}
    cmap = colormaps["tab10"]  # as _draw_labels
    handles = [Line2D([], [], color=cmap(int(v) % 10), linewidth=1.5, label=names.get(str(int(v)), f"label {int(v)}"))
               for v in np.unique(labels) if v != 0 and not (labels == v).all()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False,
                   title="contours: the fixed image's labels", title_fontsize=8)
