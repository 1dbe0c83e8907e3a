"""The Dice-vs-time figure of ``benchmarks/sampling.py`` (docs/figures/diffusereg_speed.png).

Built from a hand-made result dict (no model): every sampler kind gets its own colour and
legend entry, the guided row is drawn, points are named, the before/teacher lines are
explained in the legend, and the y-axis does not magnify sub-point gaps.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sampling():
    spec = importlib.util.spec_from_file_location("sampling_benchmark", ROOT / "benchmarks" / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(seconds, dice):
    return {"time_per_pair_s": seconds, "dice": dice}


def _result(before=0.66, guidance=True):
    result = {"pairs": 8, "split": "test", "backend": "cpu", "dice_before": before, "dice_teacher": 0.871,
              "samplers": {"ddpm2000": _row(15.3, 0.859), "ddim25": _row(0.21, 0.861), "ddim50": _row(0.38, 0.860),
                           "ddim20_from_teacher_t400": _row(0.16, 0.872)}}
    if guidance:
        result["guidance"] = {"unguided": _row(0.38, 0.860), "guided": _row(0.39, 0.859), "weights": {"bending": 0.05},
                              "ddim_steps": 50}
    return result


def _points(ax):
    """(x, y, colour) of every scatter point."""
    out = []
    for collection in ax.collections:
        for (x, y), color in zip(collection.get_offsets(), collection.get_facecolors()):
            out.append((float(x), float(y), tuple(color)))
    return out


def test_legend_explains_colours_and_guided_row_is_drawn(sampling, tmp_path):
    fig = sampling.speed_figure(tmp_path / "s.png", _result())
    assert (tmp_path / "s.png").stat().st_size > 1000
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    kinds = sampling.SPEED_KINDS
    for kind in ("ddpm", "ddim", "teacher_start", "guided"):
        assert texts.count(kinds[kind][0]) == 1  # one entry per kind, however many points
    assert "teacher, one network pass (87.1)" in texts
    assert "before registration (66.0)" in texts
    ax = fig.axes[0]
    points = _points(ax)
    assert len(points) == 5  # 4 sampler settings + the guided row
    guided = [p for p in points if p[:2] == pytest.approx((0.39, 85.9))]
    assert len(guided) == 1
    from matplotlib.colors import to_rgba

    assert guided[0][2] == to_rgba(kinds["guided"][1])
    names = {t.get_text() for t in ax.texts}
    assert names == {"DDPM-2000", "DDIM-25", "DDIM-50", "DDIM-20 from teacher, t = 400", "DDIM-50 + guidance (bending 0.05)"}
    assert len({p[2] for p in points}) == 4  # colours tell the kinds apart


def test_before_line_on_the_axis_when_close_and_no_guidance(sampling, tmp_path):
    fig = sampling.speed_figure(tmp_path / "s.png", _result(before=0.855, guidance=False))
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "before registration (85.5)" in texts and sampling.SPEED_KINDS["guided"][0] not in texts
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < 85.5 < high and len(_points(ax)) == 4
    assert any(list(line.get_ydata()) == [85.5, 85.5] for line in ax.get_lines())


@pytest.mark.parametrize("before", [0.66, 0.855])
def test_y_range_holds_every_point_and_line_and_spans_ten_points(sampling, tmp_path, before):
    result = _result(before=before)
    fig = sampling.speed_figure(tmp_path / "s.png", result)
    low, high = fig.axes[0].get_ylim()
    drawn = [100 * r["dice"] for r in result["samplers"].values()]
    drawn += [100 * result["guidance"]["guided"]["dice"], 100 * result["dice_teacher"], 100 * before]
    assert low < min(drawn) and max(drawn) < high  # before and teacher lines included
    assert high - low >= 10.0 - 1e-9
    # DDPM-2000 (85.9) vs DDIM-25 (86.1): a 0.2-point gap is at most 2 % of the axis height
    assert 0.2 / (high - low) <= 0.02
    if before == 0.66:  # a wide range (66.0 .. 87.2): margins of 8 %, not more
        assert high - low == pytest.approx(1.16 * (87.2 - 66.0))


def test_plot_only_redraws_from_a_saved_result(sampling, tmp_path):
    import json

    (tmp_path / "r.json").write_text(json.dumps(_result()))
    sampling.main(["--plot-only", str(tmp_path / "r.json"), "--figure", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").stat().st_size > 1000
