"""Tests of jaxreg.evaluation.diffusion_figures.

The PNGs are read back (signature, size, non-blank content, no temporary left over). The
drawn deformation grids are captured and compared with grids built from ``np.meshgrid``
(regular for a zero field, shifted by the in-plane components for a constant one); the
uncertainty map is checked by where its brightest colour lands and by its invariance to
how a fixed norm is split over the components. Bad inputs must raise ValueError naming
the argument, and leave no file behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.image import imread

from jaxreg.evaluation import diffusion_figures as dfig


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not blank
    return img


def make_frames(rng, shape, steps=(9, 5, 0)):
    nd = len(shape)
    frames = []
    for k, t in enumerate(steps):
        ddf_t = rng.normal(scale=1.0, size=shape + (nd,)).astype(np.float32)
        ddf0 = rng.normal(scale=0.3 * (k + 1), size=shape + (nd,)).astype(np.float32)
        warped = rng.random(shape).astype(np.float32)
        frames.append((t, ddf_t, ddf0, warped))
    return frames


# ============================================================================ sampling_figure
def test_sampling_figure_2d(tmp_path, rng):
    shape = (16, 20)
    fixed, moving = rng.random(shape), rng.random(shape + (1,))
    out = tmp_path / "s.png"
    dfig.sampling_figure(out, fixed, moving, make_frames(rng, shape), title="2-D", grid_step=3)
    img = read_png(out)
    h, w = img.shape[:2]
    assert 300 <= h <= 1000 and 4 * 150 <= w <= 2500  # three rows; first column + three frames
    assert sorted(os.listdir(tmp_path)) == ["s.png"]  # no temporary left over


def test_sampling_figure_one_column_per_frame(tmp_path, rng):
    shape = (12, 12)
    fixed = rng.random(shape)
    dfig.sampling_figure(tmp_path / "one.png", fixed, fixed, make_frames(rng, shape, steps=(0,)))
    dfig.sampling_figure(tmp_path / "five.png", fixed, fixed, make_frames(rng, shape, steps=(8, 6, 4, 2, 0)))
    one, five = read_png(tmp_path / "one.png"), read_png(tmp_path / "five.png")
    assert one.shape[0] == five.shape[0]
    assert five.shape[1] - one.shape[1] >= 4 * 150  # four more panel columns


@pytest.mark.parametrize("slice_index", [None, 0, 5])
def test_sampling_figure_3d(tmp_path, rng, slice_index):
    shape = (6, 10, 12)
    fixed, moving = rng.random(shape + (1,)), rng.random(shape)
    out = tmp_path / "s3.png"
    dfig.sampling_figure(out, fixed, moving, make_frames(rng, shape, steps=(3, 0)), slice_index=slice_index,
                         grid_step=2)
    img = read_png(out)
    assert 300 <= img.shape[0] <= 1000 and img.shape[1] >= 3 * 150
    assert sorted(os.listdir(tmp_path)) == ["s3.png"]


def grid_from_meshgrid(h, w, step, shift=(0.0, 0.0)):
    """Drawn polylines in (x, y) = (col, row) plot coordinates: rows then columns."""
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    xy = np.stack([jj + shift[1], ii + shift[0]], -1)
    return [xy[i] for i in range(0, h, step)] + [xy[:, j] for j in range(0, w, step)]


@pytest.fixture
def drawn_grids(monkeypatch):
    """Captures the segments of every LineCollection the module draws, in drawing order."""
    grids = []

    class Recording(LineCollection):
        def __init__(self, segments, **kwargs):
            grids.append([np.asarray(s, dtype=np.float64) for s in segments])
            super().__init__(segments, **kwargs)

    monkeypatch.setattr(dfig, "LineCollection", Recording)
    return grids


def assert_same_lines(got, want):
    assert len(got) == len(want)
    for g, e in zip(got, want):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_sampling_figure_grids_2d(tmp_path, rng, drawn_grids):
    h, w, step = 9, 13, 4
    zero = np.zeros((h, w, 2), np.float32)
    shift = (1.5, -2.25)
    const = np.broadcast_to(np.array(shift, np.float32), (h, w, 2))
    img = rng.random((h, w))
    # frame 0: noisy field zero, x̂₀ shifted; frame 1: noisy field shifted, x̂₀ zero.
    frames = [(4, zero, const, img), (0, const, zero, img)]
    dfig.sampling_figure(tmp_path / "g.png", img, img, frames, grid_step=step)
    assert len(drawn_grids) == 4  # (φ_t, x̂₀) per frame
    regular, shifted = grid_from_meshgrid(h, w, step), grid_from_meshgrid(h, w, step, shift)
    for got, want in zip(drawn_grids, [regular, shifted, shifted, regular]):
        assert_same_lines(got, want)


def test_sampling_figure_grids_3d_use_in_plane_components(tmp_path, rng, drawn_grids):
    d, h, w, step = 5, 8, 10, 3
    c = np.array([7.0, 0.5, -1.25], np.float32)  # the axis-0 (out-of-plane) component is not drawn
    const = np.broadcast_to(c, (d, h, w, 3)).copy()
    out_of_plane = np.zeros((d, h, w, 3), np.float32)
    out_of_plane[..., 0] = 3.0
    vol = rng.random((d, h, w))
    dfig.sampling_figure(tmp_path / "g.png", vol, vol, [(1, out_of_plane, const, vol)], grid_step=step,
                         slice_index=1)
    assert_same_lines(drawn_grids[0], grid_from_meshgrid(h, w, step))
    assert_same_lines(drawn_grids[1], grid_from_meshgrid(h, w, step, (0.5, -1.25)))


def sampling_cases():
    def frames_with(k, item, value):
        def edit(a):
            a["frames"][k] = tuple(value if i == item else x for i, x in enumerate(a["frames"][k]))
        return edit

    def put(key, value):
        def edit(a):
            a[key] = value
        return edit

    nan = np.zeros((8, 9, 2), np.float32)
    nan[2, 3, 1] = np.nan
    return {
        "empty": (put("frames", []), r"`frames`.*at least one"),
        "not_a_sequence": (put("frames", 5), r"`frames`.*sequence.*int"),
        "short_frame": (lambda a: a["frames"].__setitem__(1, a["frames"][1][:3]), r"`frames\[1\]`.*length 3"),
        "negative_t": (frames_with(0, 0, -1), r"`frames\[0\]\.t`.*non-negative.*-1"),
        "float_t": (frames_with(1, 0, 1.5), r"`frames\[1\]\.t`.*integer"),
        "bool_t": (frames_with(1, 0, True), r"`frames\[1\]\.t`"),
        "ddf_t_shape": (frames_with(1, 1, np.zeros((8, 10, 2), np.float32)),
                        r"`frames\[1\]\.ddf_t`.*\(8, 9, 2\).*\(8, 10, 2\)"),
        "ddf_t_dtype": (frames_with(0, 1, np.zeros((8, 9, 2), np.int32)), r"`frames\[0\]\.ddf_t`.*floating"),
        "ddf0_rank": (frames_with(0, 2, np.zeros((8, 9, 3), np.float32)), r"`frames\[0\]\.ddf0`.*\(8, 9, 3\)"),
        "ddf0_nan": (frames_with(1, 2, nan), r"`frames\[1\]\.ddf0` must be finite"),
        "warped_shape": (frames_with(1, 3, np.zeros((8, 10))), r"`frames\[1\]\.warped`.*\(8, 9\).*\(8, 10\)"),
        "fixed_shape": (put("fixed", np.zeros((9, 9))), r"`fixed`.*\(8, 9\).*\(9, 9\)"),
        "moving_shape": (put("moving", np.zeros((8, 9, 2))), r"`moving`.*\(8, 9\).*\(8, 9, 2\)"),
        "moving_nan": (put("moving", np.full((8, 9), np.nan)), r"`moving` must be finite"),
        "grid_step": (put("grid_step", 0), r"`grid_step`"),
        "slice_index_2d": (put("slice_index", 2), r"`slice_index`.*None for 2-D"),
    }


@pytest.mark.parametrize("case", list(sampling_cases()))
def test_sampling_figure_bad_inputs(tmp_path, rng, case):
    edit, pattern = sampling_cases()[case]
    shape = (8, 9)
    args = {"fixed": rng.random(shape), "moving": rng.random(shape), "frames": make_frames(rng, shape, (2, 0))}
    edit(args)
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match=pattern):
        dfig.sampling_figure(out, args.pop("fixed"), args.pop("moving"), args.pop("frames"), **args)
    assert os.listdir(tmp_path) == []


def test_sampling_figure_bad_slice_index_3d(tmp_path, rng):
    shape = (6, 6, 6)
    vol = rng.random(shape)
    for bad in (6, -1, 1.0):
        with pytest.raises(ValueError, match=r"`slice_index`.*\[0, 6\)"):
            dfig.sampling_figure(tmp_path / "x.png", vol, vol, make_frames(rng, shape, (0,)), slice_index=bad)
    assert os.listdir(tmp_path) == []


# ============================================================================ uncertainty_figure
def blobs(shape):
    labels = np.zeros(shape, np.int32)
    labels[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 1
    labels[tuple(slice(0, max(1, s // 4)) for s in shape)] = 2
    return labels


def test_uncertainty_figure_2d(tmp_path, rng):
    shape = (16, 20)
    out = tmp_path / "u.png"
    dfig.uncertainty_figure(out, rng.random(shape), rng.random(shape + (1,)), rng.random(shape + (2,)),
                            labels=blobs(shape), title="2-D")
    img = read_png(out)
    h, w = img.shape[:2]
    assert 150 <= h <= 600 and w >= 2 * h  # one row of three panels
    assert sorted(os.listdir(tmp_path)) == ["u.png"]


@pytest.mark.parametrize("slice_index", [None, 3])
def test_uncertainty_figure_3d(tmp_path, rng, slice_index):
    shape = (6, 10, 12)
    out = tmp_path / "u3.png"
    dfig.uncertainty_figure(out, rng.random(shape + (1,)), rng.random(shape), rng.random(shape + (3,)),
                            labels=blobs(shape)[..., None], slice_index=slice_index)
    img = read_png(out)
    assert 150 <= img.shape[0] <= 600 and img.shape[1] >= 2 * img.shape[0]
    assert sorted(os.listdir(tmp_path)) == ["u3.png"]


def test_uncertainty_figure_names_its_contours(tmp_path, rng):
    shape = (16, 20)
    img, std = rng.random(shape), rng.random(shape + (2,))
    labels = blobs(shape)
    labels[0, -1] = 3  # a third label, named by a string key as in config.eval.label_names
    fig = dfig.uncertainty_figure(tmp_path / "u.png", img, img, std, labels=labels, label_names={1: "LV", "3": "RV"})
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "contours: the fixed image's labels"
    assert [t.get_text() for t in legend.get_texts()] == ["LV", "label 2", "RV"]
    tab10 = colormaps["tab10"]
    assert [tuple(h.get_color()) for h in legend.legend_handles] == [tab10(1), tab10(2), tab10(3)]  # as the contours
    from matplotlib.contour import ContourSet

    fixed_ax, _, unc_ax = fig.axes[:3]
    for ax in (fixed_ax, unc_ax):  # one contour set per label, in the legend's colours
        colors = [tuple(np.ravel(c.get_edgecolor())) for c in ax.collections if isinstance(c, ContourSet)]
        assert colors == [tab10(1), tab10(2), tab10(3)]
    # Without labels: no contours, no legend.
    assert not dfig.uncertainty_figure(tmp_path / "v.png", img, img, std).legends


def test_observed_calls_start_at_the_first_and_are_dense_at_low_t():
    from jaxreg.evaluation.diffusion import observed_calls

    assert sorted(observed_calls(50, 6)) == [1, 28, 41, 46, 49, 50]
    assert sorted(observed_calls(2000, 6)) == [1, 1564, 1905, 1980, 1996, 2000]
    assert sorted(observed_calls(3, 6)) == [1, 2, 3] and observed_calls(1, 6) == {1}
    assert observed_calls(20, 1) == {20}


def near(img, rgb, tol=0.06):
    return np.all(np.abs(img[..., :3] - np.asarray(rgb[:3])) < tol, axis=-1)


def test_uncertainty_map_shows_where_the_spread_is(tmp_path):
    # Zero spread in one half, 2 voxels in the other; flipping the halves must move the
    # colour of the maximum (top of the colourbar) from the right half of the panel to the left.
    h, w = 16, 16
    img = np.zeros((h, w))
    right = np.zeros((h, w, 2))
    right[:, w // 2:, 1] = 2.0
    dfig.uncertainty_figure(tmp_path / "r.png", img, img, right)
    dfig.uncertainty_figure(tmp_path / "l.png", img, img, right[:, ::-1])
    r, l_ = read_png(tmp_path / "r.png"), read_png(tmp_path / "l.png")
    cmap = colormaps["viridis"]
    cols = np.arange(r.shape[1])[None, :].repeat(r.shape[0], 0)
    for colour, moves in ((cmap(1.0), "left"), (cmap(0.0), "right")):
        only_r, only_l = near(r, colour) & ~near(l_, colour), near(l_, colour) & ~near(r, colour)
        assert only_r.sum() > 500 and only_l.sum() > 500  # a big patch changed colour
        if moves == "left":  # the high colour sits right of the low one in r.png
            assert cols[only_r].mean() > cols[only_l].mean()
        else:
            assert cols[only_r].mean() < cols[only_l].mean()
    assert r[..., :3].shape == l_[..., :3].shape


@pytest.mark.parametrize("nd", [2, 3])
def test_uncertainty_map_is_the_norm_over_components(tmp_path, rng, nd):
    # The same per-voxel norm split differently over the components (for 3-D also onto the
    # out-of-plane one) must give the very same picture.
    shape = (6, 12, 12)[-nd:]
    r = rng.uniform(0.0, 3.0, shape)
    theta = rng.uniform(0.0, np.pi / 2, shape)
    split = np.zeros(shape + (nd,))
    split[..., 0], split[..., -1] = r * np.cos(theta), r * np.sin(theta)
    first = np.zeros(shape + (nd,))
    first[..., -1] = r
    img = rng.random(shape)
    dfig.uncertainty_figure(tmp_path / "a.png", img, img, split)
    dfig.uncertainty_figure(tmp_path / "b.png", img, img, first)
    a, b = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda a: a.update(std=np.zeros((8, 9, 3))), r"`std`.*\(8, 9, 3\)"),
        (lambda a: a.update(std=-np.ones((8, 9, 2))), r"`std` must be >= 0"),
        (lambda a: a.update(std=np.full((8, 9, 2), np.inf)), r"`std` must be finite"),
        (lambda a: a.update(fixed=np.zeros((8, 10))), r"`fixed`.*\(8, 9\).*`std`.*\(8, 10\)"),
        (lambda a: a.update(warped=np.zeros((9, 9, 1))), r"`warped`.*\(8, 9\).*\(9, 9, 1\)"),
        (lambda a: a.update(labels=np.zeros((8, 8), int)), r"`labels`.*\(8, 9\).*\(8, 8\)"),
        (lambda a: a.update(slice_index=0), r"`slice_index`.*None for 2-D"),
    ],
)
def test_uncertainty_figure_bad_inputs(tmp_path, edit, pattern):
    args = {"fixed": np.zeros((8, 9)), "warped": np.zeros((8, 9)), "std": np.ones((8, 9, 2))}
    edit(args)
    with pytest.raises(ValueError, match=pattern):
        dfig.uncertainty_figure(tmp_path / "x.png", args.pop("fixed"), args.pop("warped"), args.pop("std"), **args)
    assert os.listdir(tmp_path) == []


def test_uncertainty_figure_bad_slice_index_3d(tmp_path):
    vol = np.zeros((4, 6, 6))
    with pytest.raises(ValueError, match=r"`slice_index`.*\[0, 4\).*4"):
        dfig.uncertainty_figure(tmp_path / "x.png", vol, vol, np.ones((4, 6, 6, 3)), slice_index=4)
    assert os.listdir(tmp_path) == []


# ============================================================================ atomic writes
@pytest.mark.parametrize("which", ["sampling", "uncertainty"])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, rng, which):
    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    old = tmp_path / "old.png"
    old.write_bytes(b"previous result")
    img = np.zeros((6, 6))
    with pytest.raises(OSError, match="disk full"):
        if which == "sampling":
            dfig.sampling_figure(old, img, img, make_frames(rng, (6, 6), (0,)))
        else:
            dfig.uncertainty_figure(old, img, img, np.ones((6, 6, 2)))
    assert old.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["old.png"]


def test_missing_directory(tmp_path):
    img = np.zeros((6, 6))
    with pytest.raises(FileNotFoundError):
        dfig.uncertainty_figure(tmp_path / "nope" / "x.png", img, img, np.ones((6, 6, 2)))


def test_no_pyplot():
    code = ("import sys, os, tempfile; import numpy as np; from jaxreg.evaluation import diffusion_figures as d;"
            "p = tempfile.mkdtemp(); x = np.zeros((4, 6, 6)); f = np.zeros((4, 6, 6, 3));"
            "d.sampling_figure(os.path.join(p, 's.png'), x, x, [(0, f, f, x)]);"
            "l = np.ones((4, 6, 6), int); l[:, 0] = 0;"
            "d.uncertainty_figure(os.path.join(p, 'u.png'), x, x, f + 1, labels=l);"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
