"""Tests of jaxreg.evaluation.figures.

Grid lines are compared with closed forms (regular grid, shifted grid, affine image of the
grid); figures are checked by reading the PNG back (size, content, the colour that marks
folding) and by the atomic-write guarantees. The code is never compared with itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.image import imread

from jaxreg.evaluation import figures


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def pair(rng, shape):
    fixed = rng.random(shape).astype(np.float32)
    moving = rng.random(shape).astype(np.float32)
    warped = 0.5 * (fixed + moving)
    ddf = rng.normal(scale=0.3, size=shape + (len(shape),)).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 1
    labels[tuple(slice(0, s // 4) for s in shape)] = 3
    return fixed, moving, warped, ddf, labels


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def yellow_pixels(img):
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(np.count_nonzero((r > 0.95) & (g > 0.95) & (b < 0.1)))


# ============================================================================ grid lines
def regular_lines(h, w, step, shift=(0.0, 0.0)):
    rows = [np.array([(i + shift[0], j + shift[1]) for j in range(w)]) for i in range(0, h, step)]
    cols = [np.array([(i + shift[0], j + shift[1]) for i in range(h)]) for j in range(0, w, step)]
    return rows + cols


@pytest.mark.parametrize("h,w,step", [(8, 8, 2), (7, 11, 3), (5, 4, 1), (6, 6, 10)])
def test_grid_lines_zero_field_is_identity_grid(h, w, step):
    lines = figures.deformed_grid_lines(np.zeros((h, w, 2)), step=step)
    expected = regular_lines(h, w, step)
    assert len(lines) == len(expected) == -(-h // step) + -(-w // step)
    for got, want in zip(lines, expected):
        np.testing.assert_allclose(got, want, atol=0)


def test_grid_lines_constant_shift():
    h, w, step, shift = 9, 13, 4, (1.5, -2.25)
    ddf = np.broadcast_to(np.array(shift), (h, w, 2))
    lines = figures.deformed_grid_lines(ddf, step=step)
    expected = regular_lines(h, w, step, shift)
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_grid_lines_affine_field():
    # u(x) = A x + t maps a grid vertex x to (I + A) x + t.
    h, w, step = 6, 10, 3
    a, t = np.array([[0.1, -0.2], [0.3, 0.05]]), np.array([0.5, -1.0])
    x = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.float64)
    lines = figures.deformed_grid_lines(x @ a.T + t, step=step)
    m = np.eye(2) + a
    rows = [np.array([m @ (i, j) + t for j in range(w)]) for i in range(0, h, step)]
    cols = [np.array([m @ (i, j) + t for i in range(h)]) for j in range(0, w, step)]
    for got, want in zip(lines, rows + cols, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 3), (4, 4, 4, 2)])
def test_grid_lines_bad_shape(shape):
    with pytest.raises(ValueError, match=r"`ddf2d`.*\(H, W, 2\).*" + str(shape[-1])):
        figures.deformed_grid_lines(np.zeros(shape), step=2)


@pytest.mark.parametrize("step", [0, -1, 1.5, True])
def test_grid_lines_bad_step(step):
    with pytest.raises(ValueError, match="`step`"):
        figures.deformed_grid_lines(np.zeros((4, 4, 2)), step=step)


# ============================================================================ pair_figure
def test_pair_figure_2d(tmp_path, rng):
    fixed, moving, warped, ddf, labels = pair(rng, (16, 20))
    out = tmp_path / "pair.png"
    figures.pair_figure(out, fixed, moving[..., None], warped, ddf, fixed_labels=labels,
                        moving_labels=labels[..., None], warped_labels=labels, title="2-D pair")
    img = read_png(out)
    h, w = img.shape[:2]
    assert 150 <= h <= 800 and w >= 4 * h  # one row of seven panels
    assert img[..., :3].std() > 0.05
    assert sorted(os.listdir(tmp_path)) == ["pair.png"]  # no temporary left over


@pytest.mark.parametrize("axis,index", [(0, None), (1, 3), (2, 0)])
def test_pair_figure_3d(tmp_path, rng, axis, index):
    fixed, moving, warped, ddf, labels = pair(rng, (10, 12, 14))
    out = tmp_path / "pair3d.png"
    figures.pair_figure(out, fixed, moving, warped, ddf, warped_labels=labels, axis=axis, index=index,
                        grid_step=2)
    img = read_png(out)
    assert 150 <= img.shape[0] <= 800 and img.shape[1] >= 4 * img.shape[0]


def test_pair_figure_marks_folding_only_when_present(tmp_path):
    n = 16
    img = np.linspace(0, 1, n * n, dtype=np.float32).reshape(n, n)
    smooth = np.zeros((n, n, 2), np.float32)  # J = 1 everywhere
    figures.pair_figure(tmp_path / "a.png", img, img, img, smooth)
    # u_0 = -2 i in rows 4..11 gives d(i + u_0)/di = -1 there: J = -1 (folding).
    folded = smooth.copy()
    i = np.arange(n, dtype=np.float32)[:, None]
    folded[..., 0] = np.where((i >= 4) & (i < 12), -2.0 * (i - 4), np.where(i >= 12, -16.0, 0.0))
    figures.pair_figure(tmp_path / "b.png", img, img, img, folded)
    assert yellow_pixels(read_png(tmp_path / "a.png")) == 0
    assert yellow_pixels(read_png(tmp_path / "b.png")) > 100


@pytest.mark.parametrize("bad", ["fixed", "moving", "warped", "fixed_labels", "warped_labels", "moving_labels"])
def test_pair_figure_mismatched_shape(tmp_path, rng, bad):
    fixed, moving, warped, ddf, labels = pair(rng, (8, 9))
    args = {"fixed": fixed, "moving": moving, "warped": warped}
    kwargs = {"fixed_labels": labels, "warped_labels": labels, "moving_labels": labels}
    (args if bad in args else kwargs)[bad] = np.zeros((8, 10))
    with pytest.raises(ValueError, match=rf"`{bad}`.*\(8, 9\).*\(8, 10\)"):
        figures.pair_figure(tmp_path / "x.png", **args, ddf=ddf, **kwargs)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("shape", [(8, 8, 3), (8, 8, 8, 2), (8, 8, 1), (8, 8), (4, 4, 4, 4, 4)])
def test_pair_figure_bad_ddf(tmp_path, shape):
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match=r"`ddf`.*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
        figures.pair_figure(tmp_path / "x.png", img, img, img, np.zeros(shape))


def test_pair_figure_bad_options(tmp_path):
    img2, img3 = np.zeros((6, 6)), np.zeros((6, 6, 6))
    with pytest.raises(ValueError, match="`ddf` must be finite"):
        figures.pair_figure(tmp_path / "x.png", img2, img2, img2, np.full((6, 6, 2), np.nan))
    with pytest.raises(ValueError, match="`index`"):
        figures.pair_figure(tmp_path / "x.png", img2, img2, img2, np.zeros((6, 6, 2)), index=2)
    with pytest.raises(ValueError, match=r"`index`.*\[0, 6\).*6"):
        figures.pair_figure(tmp_path / "x.png", img3, img3, img3, np.zeros((6, 6, 6, 3)), axis=0, index=6)
    with pytest.raises(ValueError, match="`index` needs `axis`"):
        figures.pair_figure(tmp_path / "x.png", img3, img3, img3, np.zeros((6, 6, 6, 3)), index=2)
    with pytest.raises(ValueError, match="`axis` must be None for 2-D"):
        figures.pair_figure(tmp_path / "x.png", img2, img2, img2, np.zeros((6, 6, 2)), axis=0)
    for bad in ((1.0,), (1.0, 0.0), (1.0, float("nan")), "ab", (1.0, 1.0, 1.0)):
        with pytest.raises(ValueError, match=r"`spacing` must be 2 positive numbers"):
            figures.pair_figure(tmp_path / "x.png", img2, img2, img2, np.zeros((6, 6, 2)), spacing=bad)
    with pytest.raises(ValueError, match="`axis`"):
        figures.pair_figure(tmp_path / "x.png", img3, img3, img3, np.zeros((6, 6, 6, 3)), axis=3)
    with pytest.raises(ValueError, match="`grid_step`"):
        figures.pair_figure(tmp_path / "x.png", img2, img2, img2, np.zeros((6, 6, 2)), grid_step=0)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- pair_figure's decisions
def np_jacobian_det(ddf):
    """det(I + ∇u) with np.gradient (central inside, one-sided at the border), for 2-D or 3-D."""
    nd = ddf.shape[-1]
    grads = np.stack([np.stack(np.gradient(ddf[..., c], axis=tuple(range(nd))), -1) for c in range(nd)], -2)
    return np.linalg.det(grads + np.eye(nd))


def panels(fig):
    """The image panels of a pair figure (colour bars left out), as (rows, 7)."""
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) % 7 == 0
    return np.array(axes, dtype=object).reshape(-1, 7)


def smooth_field(rng, shape, scale):
    nd = len(shape)
    coarse = rng.normal(scale=scale, size=tuple(max(s // 4, 2) for s in shape) + (nd,))
    idx = np.meshgrid(*[np.linspace(0, c - 1, s).round().astype(int) for s, c in zip(shape, coarse.shape)],
                      indexing="ij")
    return coarse[tuple(idx)]


@pytest.mark.parametrize("shape", [(20, 24), (12, 14, 10)])
def test_pair_figure_jacobian_limits_are_centred_percentiles(tmp_path, rng, shape):
    fixed, moving, warped, _, _ = pair(rng, shape)
    ddf = smooth_field(rng, shape, 0.4)
    ddf[(3,) * len(shape)] += 6.0  # one wild voxel: the max must not set the colour range
    det = np_jacobian_det(ddf)
    p1, p99 = np.percentile(det, [1, 99])
    half = max(1 - p1, p99 - 1)
    assert det.max() > 1 + 1.5 * half or det.min() < 1 - 1.5 * half  # the outlier lies outside the range
    fig = figures.pair_figure(tmp_path / "j.png", fixed, moving, warped, ddf)
    jac_panels = panels(fig)[:, 6]
    for ax in jac_panels:
        norm = ax.images[0].norm
        np.testing.assert_allclose([norm.vmin, norm.vmax], [1 - half, 1 + half], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(figures.jacobian_limits(det), (1 - half, 1 + half), rtol=1e-12)
    labels = [ax.get_ylabel() for ax in fig.axes if not ax.images and "Jacobian" in ax.get_ylabel()]
    assert len(labels) == 1  # one labelled colour bar for the Jacobian


def test_pair_figure_draws_a_given_jacobian(tmp_path, rng):
    shape = (12, 14, 10)
    fixed, moving, warped, _, _ = pair(rng, shape)
    ddf = smooth_field(rng, shape, 0.4)
    computed = figures.pair_figure(tmp_path / "a.png", fixed, moving, warped, ddf)
    given = figures.pair_figure(tmp_path / "b.png", fixed, moving, warped, ddf, jacobian=np_jacobian_det(ddf))
    for a, b in zip(panels(computed)[:, 6], panels(given)[:, 6]):
        np.testing.assert_allclose(b.images[0].get_array(), a.images[0].get_array(), rtol=1e-5, atol=1e-6)
    folded = figures.pair_figure(tmp_path / "c.png", fixed, moving, warped, ddf, jacobian=np.full(shape, -1.0))
    assert "folding 100.00%" in panels(folded)[0, 6].get_title()  # what is given is what is drawn
    with pytest.raises(ValueError, match="`jacobian` must have the field's spatial shape"):
        figures.pair_figure(tmp_path / "d.png", fixed, moving, warped, ddf, jacobian=np.ones((12, 14, 9)))


def test_jacobian_limits_closed_forms():
    assert figures.jacobian_limits(np.ones(10)) == pytest.approx((0.99, 1.01))  # never degenerate
    det = np.r_[np.full(98, 1.2), 1.5, 50.0]  # 99th percentile well below the max
    lo, hi = figures.jacobian_limits(det)
    assert (lo + hi) / 2 == pytest.approx(1.0) and hi == pytest.approx(np.percentile(det, 99)) and hi < 50
    with pytest.raises(ValueError, match="`percentiles`"):
        figures.jacobian_limits(det, percentiles=(99, 1))


@pytest.mark.parametrize("shape,spacing", [((16, 20), (1.0, 2.5)), ((8, 10, 12), (3.15, 1.5, 0.75))])
def test_pair_figure_aspect_follows_spacing(tmp_path, rng, shape, spacing):
    fixed, moving, warped, ddf, _ = pair(rng, shape)
    fig = figures.pair_figure(tmp_path / "a.png", fixed, moving, warped, ddf, spacing=spacing)
    grid = panels(fig)
    pairs = [(0, 1)] if len(shape) == 2 else [(1, 2), (0, 2), (0, 1)]  # (rows, cols) axes of each row
    assert grid.shape == (len(pairs), 7)
    for row, (r, c) in zip(grid, pairs):
        for ax in row:
            assert ax.get_aspect() == pytest.approx(spacing[r] / spacing[c])
    iso = panels(figures.pair_figure(tmp_path / "b.png", fixed, moving, warped, ddf))
    assert all(ax.get_aspect() == pytest.approx(1.0) for ax in iso.ravel())


def contour_sets(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


@pytest.mark.parametrize("shape", [(16, 16), (10, 12, 14)])
def test_pair_figure_fixed_label_contours(tmp_path, rng, shape):
    fixed, moving, warped, ddf, labels = pair(rng, shape)  # labels 1 and 3
    plain = panels(figures.pair_figure(tmp_path / "p.png", fixed, moving, warped, ddf))
    assert all(not contour_sets(ax) for ax in plain.ravel())
    # The labels present in each drawn slice (2-D: the image; 3-D: the centre slices across axes 0, 1, 2).
    slices = [labels] if len(shape) == 2 else [np.take(labels, s // 2, axis=a) for a, s in enumerate(shape)]
    present = [len(set(np.unique(sl).tolist()) - {0}) for sl in slices]
    assert min(present) >= 1 and (len(shape) == 3 or present == [2])
    grid = panels(figures.pair_figure(tmp_path / "l.png", fixed, moving, warped, ddf, fixed_labels=labels))
    assert len(grid) == len(slices)
    for row, n in zip(grid, present):
        assert len(contour_sets(row[0])) == n  # one per non-background label, over the fixed image
        dashed = contour_sets(row[2])  # and over the warped image, dashed
        assert len(dashed) == n and all(ls[1] is not None for c in dashed for ls in c.get_linestyle())
        assert not contour_sets(row[1])
    both = panels(figures.pair_figure(tmp_path / "b.png", fixed, moving, warped, ddf, fixed_labels=labels,
                                      moving_labels=labels, warped_labels=labels))
    for row, n in zip(both, present):  # fixed, moving: their own labels; warped: its own + the fixed ones
        assert [len(contour_sets(ax)) for ax in row[:3]] == [n, n, 2 * n]


def test_pair_figure_3d_three_orthogonal_centre_slices(tmp_path, rng):
    shape = (10, 12, 14)
    fixed, moving, warped, ddf, _ = pair(rng, shape)
    fig = figures.pair_figure(tmp_path / "o.png", fixed, moving, warped, ddf)
    grid = panels(fig)
    assert grid.shape == (3, 7)
    centre = [s // 2 for s in shape]
    for a, row in enumerate(grid):
        np.testing.assert_array_equal(row[0].images[0].get_array(), np.take(fixed, centre[a], axis=a))
        np.testing.assert_array_equal(row[1].images[0].get_array(), np.take(moving, centre[a], axis=a))
        np.testing.assert_allclose(row[6].images[0].get_array(), np.take(np_jacobian_det(ddf), centre[a], axis=a),
                                   rtol=1e-5, atol=1e-5)
    one = panels(figures.pair_figure(tmp_path / "s.png", fixed, moving, warped, ddf, axis=2, index=3))
    assert one.shape == (1, 7)
    np.testing.assert_array_equal(one[0, 0].images[0].get_array(), fixed[:, :, 3])
    img = read_png(tmp_path / "o.png")
    assert img.shape[0] > 2 * read_png(tmp_path / "s.png").shape[0]  # three rows drawn


@pytest.mark.parametrize("shape,spacing", [((12, 10, 4), (1.4, 1.4, 10.0)),    # a thick-slice stack
                                           ((4, 12, 10), (10.0, 1.4, 1.4)),    # the same, slices along axis 0
                                           ((6, 8, 10), (3.0, 1.0, 2.0)),      # three different spacings
                                           ((10, 12, 14), (1.0, 1.0, 1.0))])   # isotropic: axis order
def test_pair_figure_orders_and_sizes_views_by_slice_thickness(tmp_path, rng, shape, spacing):
    fixed, moving, warped, ddf, _ = pair(rng, shape)
    fig = figures.pair_figure(tmp_path / "t.png", fixed, moving, warped, ddf, spacing=spacing)
    grid = panels(fig)
    sp = np.asarray(spacing)
    # The finest plane first: views sorted by the pixel area of their plane, sp[r] * sp[c] = prod(sp) / sp[across].
    across = [int(a) for a in np.argsort([np.prod(np.delete(sp, a)) for a in range(3)], kind="stable")]
    assert across[0] == int(np.argmax(sp)) or np.ptp(sp) == 0
    ratios = grid[0, 0].get_subplotspec().get_gridspec().get_height_ratios()
    for row, a, ratio in zip(grid, across, ratios, strict=True):
        first, second = np.delete(np.arange(3), a)
        r, c = (second, first) if sp[second] > sp[first] else (first, second)  # the coarser axis down the rows
        want = np.take(fixed, shape[a] // 2, axis=a)
        want = want.T if r > c else want
        np.testing.assert_array_equal(row[0].images[0].get_array(), want)
        assert row[0].get_ylabel() == f"slice {shape[a] // 2} of axis {a}\naxis {r}"
        assert row[0].get_aspect() == pytest.approx(sp[r] / sp[c])
        assert ratio == pytest.approx(np.clip(shape[r] * sp[r] / (shape[c] * sp[c]), 0.25, 4.0))  # physical h / w
    one = panels(figures.pair_figure(tmp_path / "o.png", fixed, moving, warped, ddf, spacing=spacing, axis=across[-1]))
    np.testing.assert_array_equal(one[0, 0].images[0].get_array(), grid[-1, 0].images[0].get_array())  # same orientation


def test_pair_figure_legend_names_the_contour_colours(tmp_path, rng):
    shape = (10, 12, 14)
    fixed, moving, warped, ddf, labels = pair(rng, shape)  # label 1 in the middle (3 in a corner off the slices)
    labels[1:3, 1:3, 6:9] = 3  # on the slice across axis 2
    labels[5:7, 5:7, 6:8] = 11  # the colour of label 1 again (tab10: value % 10)
    plain = figures.pair_figure(tmp_path / "p.png", fixed, moving, warped, ddf)
    assert not plain.legends  # no labels, no legend
    fig = figures.pair_figure(tmp_path / "l.png", fixed, moving, warped, ddf, fixed_labels=labels)
    present = set().union(*(np.unique(np.take(labels, s // 2, axis=a)).tolist() for a, s in enumerate(shape))) - {0}
    assert present == {1, 3, 11}
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["labels 1, 11", "label 3", "dashed: fixed labels over warped"]
    colours = [h.get_color() for h in legend.legend_handles[:2]]
    tab10 = matplotlib.colormaps["tab10"]
    assert colours == [tab10(1), tab10(3)]
    drawn = {tuple(np.round(c.get_edgecolor()[0], 6)) for ax in panels(fig)[:, 0] for c in contour_sets(ax)}
    assert drawn == {tuple(np.round(tab10(v), 6)) for v in (1, 3)}  # the colours the contours use
    moving_only = figures.pair_figure(tmp_path / "m.png", fixed, moving, warped, ddf, moving_labels=labels)
    assert [t.get_text() for t in moving_only.legends[0].get_texts()] == ["labels 1, 11", "label 3"]


def test_missing_directory(tmp_path):
    img = np.zeros((6, 6))
    with pytest.raises(FileNotFoundError):
        figures.pair_figure(tmp_path / "nope" / "x.png", img, img, img, np.zeros((6, 6, 2)))


# ============================================================================ dice_boxplot
def test_dice_boxplot(tmp_path, rng):
    dice = {"LV": rng.uniform(0.7, 0.9, 5), "RV": [0.6, 0.65, np.nan, 0.7], "overall": rng.uniform(0.6, 0.9, 5)}
    before = {"RV": [0.4, 0.5, 0.45], "overall": [0.3, 0.5], "LV": rng.uniform(0.4, 0.6, 5)}
    figures.dice_boxplot(tmp_path / "d.png", dice, title="Dice")
    figures.dice_boxplot(tmp_path / "db.png", dice, before=before)
    for name in ("d.png", "db.png"):
        img = read_png(tmp_path / name)
        assert 200 <= img.shape[0] <= 800 and 200 <= img.shape[1] <= 1500
        assert img[..., :3].std() > 0.05
    assert sorted(os.listdir(tmp_path)) == ["d.png", "db.png"]


def test_dice_boxplot_errors(tmp_path):
    out = tmp_path / "d.png"
    with pytest.raises(ValueError, match="`dice`.*empty"):
        figures.dice_boxplot(out, {})
    with pytest.raises(ValueError, match=r"`dice\['a'\]`.*non-empty"):
        figures.dice_boxplot(out, {"a": []})
    with pytest.raises(ValueError, match=r"`dice\['a'\]`.*\[0, 1\]"):
        figures.dice_boxplot(out, {"a": [0.5, 1.2]})
    with pytest.raises(ValueError, match=r"`before`.*same keys.*missing \['b'\].*extra \['c'\]"):
        figures.dice_boxplot(out, {"a": [0.5], "b": [0.6]}, before={"a": [0.4], "c": [0.3]})
    assert not out.exists()


# ============================================================================ atomic writes
@pytest.mark.parametrize("which", ["pair", "dice"])
def test_failed_write_leaves_no_file_and_keeps_old_one(tmp_path, monkeypatch, which):
    def draw(path):
        if which == "pair":
            img = np.zeros((6, 6))
            figures.pair_figure(path, img, img, img, np.zeros((6, 6, 2)))
        else:
            figures.dice_boxplot(path, {"a": [0.5, 0.6]})

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    new = tmp_path / "new.png"
    with pytest.raises(OSError, match="disk full"):
        draw(new)
    assert os.listdir(tmp_path) == []

    old = tmp_path / "old.png"
    old.write_bytes(b"previous result")
    with pytest.raises(OSError, match="disk full"):
        draw(old)
    assert old.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["old.png"]

    monkeypatch.undo()
    draw(old)  # a successful write replaces the old file
    read_png(old)
    assert os.listdir(tmp_path) == ["old.png"]


def test_no_pyplot():
    code = ("import sys; from jaxreg.evaluation import figures; import tempfile, os;"
            "d = tempfile.mkdtemp(); figures.dice_boxplot(os.path.join(d, 'a.png'), {'a': [0.5]});"
            "import numpy as np; x = np.zeros((6, 6, 6)); l = np.ones((6, 6, 6), int); l[0] = 0;"
            "figures.pair_figure(os.path.join(d, 'b.png'), x, x, x, np.zeros((6, 6, 6, 3)), fixed_labels=l);"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
