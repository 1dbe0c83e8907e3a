"""PNG figures of registration results (host-side, matplotlib object-oriented API).

``pair_figure`` draws one registered pair (images, differences, deformed grid, Jacobian
determinant); ``dice_boxplot`` draws per-label Dice distributions. Both use
``matplotlib.figure.Figure`` directly (no pyplot, no backend switching) and write the PNG
atomically with ``jaxreg.io.atomic_path``. ``deformed_grid_lines`` is the pure geometry
behind the grid panel, ``jacobian_limits`` the colour range of the Jacobian panel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import cbook, colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from jaxreg._checks import check_ddf
from jaxreg.io import atomic_path
from jaxreg.metrics import jacobian_determinant

__all__ = ["deformed_grid_lines", "dice_boxplot", "jacobian_limits", "pair_figure", "view_order"]

_DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)


def deformed_grid_lines(ddf2d, *, step: int) -> list[np.ndarray]:
    """Polylines of the regular grid mapped by ``x ↦ x + ddf(x)``.

    Grid lines run along every ``step``-th row (``i = 0, step, 2 step, ...``) and then
    every ``step``-th column of the ``(H, W)`` grid; each vertex ``x`` moves to
    ``x + ddf2d[x]``.

    Args:
      ddf2d: ``(H, W, 2)`` in-plane displacement in voxels, components (row, col).
      step: spacing of the grid lines in voxels, a positive integer.

    Returns:
      Row lines then column lines, each an ``(N, 2)`` float array of (row, col) voxel
      coordinates (``N = W`` for row lines, ``H`` for column lines).
    """
    u = np.asarray(ddf2d, dtype=np.float64)
    if u.ndim != 3 or u.shape[-1] != 2:
        raise ValueError(f"`ddf2d` must have shape (H, W, 2); got shape {u.shape}.")
    _check_int(step, "step", 1)
    pts = np.stack(np.meshgrid(np.arange(u.shape[0]), np.arange(u.shape[1]), indexing="ij"), -1) + u
    return [pts[i] for i in range(0, u.shape[0], step)] + [pts[:, j] for j in range(0, u.shape[1], step)]


def _check_int(value, name: str, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None and value >= hi):
        want = f"an integer in [{lo}, {hi})" if hi is not None else "a positive integer"
        raise ValueError(f"`{name}` must be {want}; got {value!r}.")


def _as_image(a, name: str, spatial: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape == spatial + (1,):
        arr = arr[..., 0]
    if arr.shape != spatial:
        raise ValueError(f"`{name}` must have shape {spatial} or {spatial + (1,)} to match `ddf`; got shape {arr.shape}.")
    return arr


_LABEL_COLORS = colormaps["tab10"]  # saturated: visible over grey images; label v is drawn in colour v % 10


def _draw_labels(ax, labels: np.ndarray | None, *, linestyles: str = "solid") -> set[int]:
    """Contours of every non-background label of a slice; returns the label values drawn."""
    drawn: set[int] = set()
    if labels is None:
        return drawn
    for value in np.unique(labels):
        mask = labels == value
        if value == 0 or mask.all():
            continue
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[_LABEL_COLORS(int(value) % 10)], linewidths=0.7,
                   linestyles=linestyles)
        drawn.add(int(value))
    return drawn


def _label_legend(fig: Figure, values: set[int], *, dashed: bool) -> None:
    """A legend below the panels naming the label value(s) of each contour colour."""
    if not values:
        return
    by_color: dict[int, list[int]] = {}
    for value in sorted(values):
        by_color.setdefault(value % 10, []).append(value)
    handles = [Line2D([], [], color=_LABEL_COLORS(k), linewidth=1.5,
                      label=("label " if len(vs) == 1 else "labels ") + ", ".join(map(str, vs)))
               for k, vs in sorted(by_color.items(), key=lambda item: item[1][0])]
    if dashed:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.0, label="dashed: fixed labels over warped"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=10,
               title="label contours", title_fontsize=10)


def view_order(spacing: Sequence[float]) -> list[tuple[int, int, int]]:
    """The three orthogonal views of a 3-D volume, as ``(across, rows, cols)`` array axes, in drawing order.

    The view across the thickest axis comes first (it lies in the plane of the finest
    voxels: the in-plane view of a thick-slice stack), ties in axis order. Within a view the
    coarser of its two axes runs down the rows (ties: the lower axis), so a thick-slice
    stack's through-plane views are wide strips with the slices stacked vertically.

    Args:
      spacing: voxel size per array axis (3 positive numbers).
    """
    spacing = [float(s) for s in spacing]
    order = sorted(range(3), key=lambda a: -spacing[a])  # stable: ties keep axis order
    views = []
    for across in order:
        first, second = (a for a in range(3) if a != across)
        rows, cols = (second, first) if spacing[second] > spacing[first] else (first, second)
        views.append((across, rows, cols))
    return views


def jacobian_limits(jac, *, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """Colour limits for a Jacobian-determinant map: robust, and centred so that 1 is neutral.

    With ``p_lo, p_hi`` the ``percentiles`` of ``jac`` (``np.percentile``, linear), the limits
    are ``1 ∓ h`` with ``h = max(1 - p_lo, p_hi - 1, 0.01)``: a few extreme voxels do not
    wash out the map, and ``J = 1`` (volume kept) sits in the middle of a diverging map.

    Args:
      jac: ``(*S)`` Jacobian determinants (finite).
      percentiles: the lower and upper percentile, ``0 <= lo < hi <= 100``.

    Returns:
      ``(vmin, vmax)``, ``vmin < 1 < vmax``.
    """
    lo_q, hi_q = (float(q) for q in percentiles)
    if not 0.0 <= lo_q < hi_q <= 100.0:
        raise ValueError(f"`percentiles` must be (lo, hi) with 0 <= lo < hi <= 100; got {percentiles!r}.")
    lo, hi = np.percentile(np.asarray(jac, dtype=np.float64), [lo_q, hi_q])
    half = max(1.0 - float(lo), float(hi) - 1.0, 0.01)
    return 1.0 - half, 1.0 + half


def pair_figure(
    path: str | os.PathLike,
    fixed,
    moving,
    warped,
    ddf,
    *,
    fixed_labels=None,
    warped_labels=None,
    moving_labels=None,
    title: str | None = None,
    axis: int | None = None,
    index: int | None = None,
    grid_step: int = 4,
    spacing: Sequence[float] | None = None,
    jacobian=None,
) -> Figure:
    """Writes a PNG summarising one registered pair; one row of panels per slice.

    Panels: fixed, moving, warped, ``|fixed - moving|`` (before), ``|fixed - warped|``
    (after; both differences share one colour scale and colour bar), the deformed grid over
    the warped image (the fixed grid mapped by ``x ↦ x + ddf(x)`` every ``grid_step``
    voxels, in-plane components only), and the Jacobian determinant of ``x ↦ x + ddf(x)``
    (diverging colours centred at 1, limits from ``jacobian_limits`` of the whole field,
    i.e. its 1st-99th percentiles; voxels with ``J <= 0`` (folding) in solid yellow; the
    title gives the folding percentage of the whole field). Label maps, if given, are drawn
    as contours (one colour per label value) over the matching panels; ``fixed_labels`` are
    also drawn dashed over the warped panel, so that alignment shows directly.

    2-D input gives one row. 3-D input gives three rows, the orthogonal slices through the
    centre, unless ``axis`` picks a single slice. The rows are ordered by :func:`view_order`:
    the view across the thickest voxel axis first (the in-plane view of a thick-slice
    stack), and in each view the coarser axis runs down the rows; with isotropic voxels,
    across axis 0, 1 and 2 with axes in array order. Pixels are drawn with the voxel
    ``spacing``'s aspect ratio, so anisotropic voxels keep their shape, and each row's height
    follows its slice's physical height/width (clipped to [0.25, 4]). A legend below the
    panels names the label value(s) of each contour colour.

    Args:
      path: target ``.png`` file; its directory must exist. Replaced atomically.
      fixed, moving, warped: ``(*S)`` or ``(*S, 1)`` images, ``S = (H, W)`` or ``(D, H, W)``.
      ddf: ``(*S, ndim)`` displacement in voxels, pull convention
        ``warped(x) = moving(x + ddf(x))``, ``ndim = len(S)``.
      fixed_labels, warped_labels, moving_labels: optional ``(*S)`` or ``(*S, 1)``
        integer label maps (0 = background, not drawn).
      title: optional figure title.
      axis: for 3-D, draw one slice across this array axis (0, 1 or 2) instead of three;
        must be None for 2-D.
      index: for 3-D with ``axis``, the slice index along ``axis`` (default: the middle).
        Must be None for 2-D and when ``axis`` is None. The Jacobian is computed on the
        full volume, then sliced.
      grid_step: spacing of the drawn grid lines in voxels.
      spacing: voxel size per array axis (``ndim`` positive numbers, e.g. mm); the
        default is isotropic.
      jacobian: ``(*S)`` the Jacobian determinant of ``ddf`` when already computed
        (``jaxreg.metrics.jacobian_determinant(ddf)``); computed here otherwise.

    Returns:
      The drawn ``matplotlib.figure.Figure`` (already written to ``path``): one row of
      seven image axes per slice (``fig.axes`` also holds the two colour bars).

    Raises:
      ValueError: on shapes that do not match, a bad ``ddf``, ``axis``, ``index``,
        ``grid_step`` or ``spacing``, or a non-finite ``ddf``.
    """
    ddf = np.asarray(ddf)
    ndim = check_ddf(ddf)
    spatial = ddf.shape[:-1]
    if not np.all(np.isfinite(ddf)):
        raise ValueError("`ddf` must be finite; got NaN or inf values.")
    _check_int(grid_step, "grid_step", 1)
    if spacing is None:
        spacing = (1.0,) * ndim
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"`spacing` must be {ndim} positive numbers (one per array axis); got {spacing!r}.") from None
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"`spacing` must be {ndim} positive numbers (one per array axis); got {spacing!r}.")
    imgs = {n: _as_image(a, n, spatial) for n, a in (("fixed", fixed), ("moving", moving), ("warped", warped))}
    labs = {n: None if a is None else _as_image(a, n, spatial)  # rounded per slice below, not whole volumes
            for n, a in (("fixed_labels", fixed_labels), ("moving_labels", moving_labels),
                         ("warped_labels", warped_labels))}
    if jacobian is None:
        jacobian = jacobian_determinant(ddf)
    elif np.shape(jacobian) != spatial:
        raise ValueError(f"`jacobian` must have the field's spatial shape {spatial}; got {np.shape(jacobian)}.")
    jac = np.asarray(jacobian, dtype=np.float64)
    folding = 100.0 * np.count_nonzero(jac <= 0) / jac.size
    if ndim == 2:
        if axis is not None:
            raise ValueError(f"`axis` must be None for 2-D inputs; got {axis!r}.")
        if index is not None:
            raise ValueError(f"`index` must be None for 2-D inputs; got {index!r}.")
        cuts = [(None, None, 0, 1)]
    elif axis is None:
        if index is not None:
            raise ValueError(f"`index` needs `axis` (three centre slices are drawn when `axis` is None); got {index!r}.")
        cuts = [(a, spatial[a] // 2, r, c) for a, r, c in view_order(spacing)]
    else:
        if isinstance(axis, bool) or axis not in (0, 1, 2):
            raise ValueError(f"`axis` must be None, 0, 1 or 2 for 3-D inputs; got {axis!r}.")
        index = spatial[axis] // 2 if index is None else index
        _check_int(index, "index", 0, spatial[axis])
        cuts = [next((axis, int(index), r, c) for a, r, c in view_order(spacing) if a == axis)]

    def cut(a, ax_, i, r_ax, c_ax):
        """The slice of ``a`` across ``ax_`` at ``i``, its first axes (rows, cols) = array axes (r_ax, c_ax)."""
        if a is None or ax_ is None:
            return a
        sl = np.take(a, i, axis=ax_)
        return np.swapaxes(sl, 0, 1) if r_ax > c_ax else sl

    rows = []  # one dict per slice
    for ax_, i, r_ax, c_ax in cuts:
        cut_ = lambda a: cut(a, ax_, i, r_ax, c_ax)  # noqa: E731
        sl = {n: cut_(a).astype(np.float64) for n, a in imgs.items()}
        rows.append(dict(axis=ax_, index=i, rows_axis=r_ax, cols_axis=c_ax, img=sl,
                         labs={n: None if a is None else np.rint(cut_(a)).astype(np.int64)
                               for n, a in labs.items()},
                         u2=cut_(ddf)[..., [r_ax, c_ax]], jac=cut_(jac),
                         aspect=spacing[r_ax] / spacing[c_ax]))
    lo = min(float(v.min()) for r in rows for v in r["img"].values())
    hi = max(float(v.max()) for r in rows for v in r["img"].values())
    diffs = [(np.abs(r["img"]["fixed"] - r["img"]["moving"]), np.abs(r["img"]["fixed"] - r["img"]["warped"]))
             for r in rows]
    dmax = max(max(float(b.max()), float(a.max())) for b, a in diffs)
    dmax = max(dmax, 1e-12)
    jmin, jmax = jacobian_limits(jac)
    jnorm = Normalize(vmin=jmin, vmax=jmax)

    # Row heights follow the displayed (aspect-corrected) height/width of each slice.
    ratios = [float(np.clip(r["jac"].shape[0] * r["aspect"] / r["jac"].shape[1], 0.25, 4.0)) for r in rows]
    panel = 2.6
    fig = Figure(figsize=(7 * panel + 1.6, panel * sum(ratios) + 1.1 + 0.45 * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), 7, squeeze=False, gridspec_kw={"height_ratios": ratios}))
    drawn: set[int] = set()  # label values with a contour somewhere
    for r, row, (before, after) in zip(rows, axes, diffs):
        h, w = r["jac"].shape
        show = dict(aspect=r["aspect"], interpolation="nearest")
        for ax, n in zip(row[:3], ("fixed", "moving", "warped")):
            ax.imshow(r["img"][n], cmap="gray", vmin=lo, vmax=hi, **show)
            drawn |= _draw_labels(ax, r["labs"][f"{n}_labels"])
        drawn |= _draw_labels(row[2], r["labs"]["fixed_labels"], linestyles="--")
        row[0].set_title("fixed")
        row[1].set_title("moving")
        row[2].set_title("warped" + ("\n(dashed: fixed labels)" if r["labs"]["fixed_labels"] is not None else ""))
        for ax, d, name in ((row[3], before, "|fixed − moving|"), (row[4], after, "|fixed − warped|")):
            dim = ax.imshow(d, cmap="magma", vmin=0.0, vmax=dmax, **show)
            ax.set_title(f"{name}\nmean {d.mean():.3g}")
        ax = row[5]
        ax.imshow(r["img"]["warped"], cmap="gray", vmin=lo, vmax=hi, **show)
        segs = [line[:, ::-1] for line in deformed_grid_lines(r["u2"], step=int(grid_step))]  # (x, y) = (col, row)
        ax.add_collection(LineCollection(segs, colors="tab:cyan", linewidths=0.7))
        ax.set_title(f"deformed grid\n(every {int(grid_step)} vx)")
        ax = row[6]
        jim = ax.imshow(r["jac"], cmap="RdBu_r", norm=jnorm, **show)
        ax.imshow(np.ma.masked_where(r["jac"] > 0, np.ones_like(r["jac"])), cmap=ListedColormap(["yellow"]),
                  vmin=0, vmax=1, **show)
        ax.set_title(f"Jacobian det. (yellow: J ≤ 0)\nfolding {folding:.2f}% of field")
        for ax in row:
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        where = "" if r["axis"] is None else f"slice {r['index']} of axis {r['axis']}\n"
        row[0].set_ylabel(f"{where}axis {r['rows_axis']}")
        row[0].set_xlabel(f"axis {r['cols_axis']}")
    fig.colorbar(dim, ax=axes[:, 4], fraction=0.05, pad=0.02, label="|difference| (intensity)")
    fig.colorbar(jim, ax=axes[:, 6], fraction=0.05, pad=0.02, extend="both",
                 label="Jacobian determinant (1 = volume kept)\nrange: 1st–99th percentile, centred on 1")
    _label_legend(fig, drawn, dashed=fixed_labels is not None)
    spacing_note = "" if len(set(spacing)) == 1 else f", voxel {' × '.join(f'{s:g}' for s in spacing)}"
    if title or spacing_note:
        fig.suptitle(f"{title or ''}{spacing_note}".strip(", "))
    _save(fig, path)
    return fig


def _boxes(ax, data: list[np.ndarray], positions, width: float, color) -> None:
    """Tukey boxes (1.5 IQR whiskers). ``Axes.boxplot`` is avoided: it reads every rcParam,
    which imports pyplot and resolves the global backend."""
    for p, st in zip(positions, cbook.boxplot_stats(data)):
        if not np.isfinite(st["med"]):  # no values left (all NaN)
            continue
        ax.add_patch(Rectangle((p - width / 2, st["q1"]), width, st["q3"] - st["q1"],
                               facecolor=color, alpha=0.6, edgecolor="black", linewidth=0.8))
        ax.plot([p - width / 2, p + width / 2], [st["med"]] * 2, color="black", linewidth=1.2)
        for end, lo_hi in (("whislo", "q1"), ("whishi", "q3")):
            ax.plot([p, p], [st[end], st[lo_hi]], color="black", linewidth=0.8)
            ax.plot([p - width / 4, p + width / 4], [st[end]] * 2, color="black", linewidth=0.8)
        ax.plot(np.full(len(st["fliers"]), p), st["fliers"], "o", color="black", markersize=3, mfc="none")


def dice_boxplot(
    path: str | os.PathLike,
    dice: Mapping[str, Sequence[float]],
    *,
    before: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> None:
    """Writes a PNG with one box of per-pair Dice values per label (higher is better).

    Labels are plotted in the mapping's order, exactly as given (include an
    ``"overall"`` key for an overall box). NaN values (label absent in both maps) are
    dropped.

    Args:
      path: target ``.png`` file; its directory must exist. Replaced atomically.
      dice: label name -> sequence of per-pair Dice values in ``[0, 1]`` after
        registration.
      before: optional mapping with the same keys: Dice before registration, drawn as
        grey boxes beside each label's box, with a legend.
      title: optional figure title.

    Raises:
      ValueError: if ``dice`` (or a sequence in it) is empty, a value lies outside
        ``[0, 1]``, or ``before`` has different keys.
    """

    def clean(m: Mapping, name: str) -> dict[str, np.ndarray]:
        out = {}
        for k, v in m.items():
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            if arr.size == 0:
                raise ValueError(f"`{name}[{k!r}]` must be a non-empty sequence of Dice values; got none.")
            arr = arr[~np.isnan(arr)]
            if np.any((arr < 0) | (arr > 1)):
                raise ValueError(f"`{name}[{k!r}]` must hold Dice values in [0, 1]; got min {arr.min()}, max {arr.max()}.")
            out[k] = arr
        return out

    if not dice:
        raise ValueError("`dice` must map at least one label name to Dice values; got an empty mapping.")
    after = clean(dice, "dice")
    keys = list(after)
    twin = before is not None
    if twin and set(before) != set(keys):
        raise ValueError(
            f"`before` must have the same keys as `dice`; missing {sorted(map(str, set(keys) - set(before)))}, "
            f"extra {sorted(map(str, set(before) - set(keys)))}."
        )
    pos = np.arange(len(keys), dtype=np.float64)
    groups = [(clean(before, "before"), pos - 0.2, "tab:gray", "before")] if twin else []
    groups.append((after, pos + 0.2 * twin, "tab:blue", "after"))
    fig = Figure(figsize=(max(4.0, (0.9 if twin else 0.6) * len(keys) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    for data, p, color, _ in groups:
        _boxes(ax, [data[k] for k in keys], p, 0.35 if twin else 0.6, color)
    if twin:
        ax.legend(handles=[Patch(facecolor=c, alpha=0.6, label=n) for _, _, c, n in groups], loc="lower right")
    tilt = len(keys) > 6
    ax.set_xticks(pos, [str(k) for k in keys], rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    if title is not None:
        ax.set_title(title)
    _save(fig, path)
