"""The convergence study (DEQReg Fig. 3 / Table 2) on two tiny trained runs: a DEQReg and an unrolled one.

The runs are 2-step trainings of ``tests/configs/tiny_deq.py`` (T = 4 solver steps, S = 2)
and ``tests/configs/tiny_unroll.py`` (vanilla, T = 2) on 16² synthetic brains.
"""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from matplotlib.image import imread
from scipy import ndimage

from jaxreg import methods, metrics
from jaxreg.data import pipeline
from jaxreg.evaluation.convergence import convergence_study
from jaxreg.training import train_and_evaluate
from jaxreg.runs.workdir import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = (1, 3, 8)  # plus each run's trained steps: 4 (DEQReg) and 2 (unrolled)
LIMIT = 2


def _config(name, arg=None):
    if str(ROOT) not in sys.path:  # the configs import `configs`, a package at the repo root
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("convergence")
    deq, unroll = root / "deq", root / "unroll"
    config = _config("tiny_deq")
    config.solver.method = "fixed_point"  # compiles faster than Anderson; the study is solver-agnostic
    train_and_evaluate(config, deq)
    config = _config("tiny_unroll")
    config.optimizer.learning_rate = 0.03  # fields large enough that Dice depends on the step count
    train_and_evaluate(config, unroll)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    result = convergence_study([deq, unroll], steps=STEPS, limit=LIMIT, out_dir=root / "out", progress=False)
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules  # object-oriented matplotlib only
    return result, {"deq": deq, "unroll": unroll}, root / "out"


def _params(workdir):
    """The latest checkpoint's parameters, read with orbax directly (not through jaxreg)."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    with warnings.catch_warnings():  # "Sharding info not provided": restored as saved, on one device
        warnings.simplefilter("ignore", UserWarning)
        tree = ocp.PyTreeCheckpointer().restore((workdir / "checkpoints" / str(step) / "default").absolute())
    return tree["params"]


def _curve(run):
    return {c["steps"]: c for c in run["curve"]}


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_json_has_every_step_count(study):
    result, _, out = study
    assert json.loads((out / "convergence.json").read_text()) == json.loads(json.dumps(result))
    deq, unroll = result["runs"]
    assert (deq["name"], deq["model"], deq["variant"], deq["trained_steps"]) == ("deq", "deqreg", "fixed_point", 4)
    assert (unroll["name"], unroll["model"], unroll["variant"], unroll["trained_steps"]) == ("unroll", "unroll", "vanilla", 2)
    assert deq["label"] == "DEQReg (fixed-point iteration, trained with ≤ 4 steps)" and "levels" not in deq
    assert unroll["label"] == "Unrolled vanilla, 2 steps" and unroll["levels"] == 1
    assert result["steps"] == list(STEPS)
    assert list(_curve(deq)) == [1, 3, 4, 8] and list(_curve(unroll)) == [1, 2, 3, 8]
    for run in result["runs"]:
        assert run["checkpoint"] == 2
        for entry in run["curve"]:
            assert 0.0 <= entry["dice"] <= 1.0 and entry["dice_std"] >= 0.0
            assert 0.0 <= entry["folding"] <= 100.0 and np.isfinite(entry["sdlogj"])
            assert entry["num_pairs"] == LIMIT


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_unrolled_dice_matches_independent_computation(study):
    result, workdirs, _ = study
    config = load_config(workdirs["unroll"])
    module, params = methods.build(config.model, config.loss).module, _params(workdirs["unroll"])
    records = list(pipeline.records(config.data, "test", limit=LIMIT))
    curve = _curve(result["runs"][1])
    for n in (1, 8):
        dices = []
        for record in records:
            ddf = np.asarray(module.predict(params, record["fixed"][None], record["moving"][None], steps=n))[0]
            fixed_labels, moving_labels = np.asarray(record["fixed_labels"]), np.asarray(record["moving_labels"])
            coords = np.indices(fixed_labels.shape).astype(np.float64) + np.moveaxis(ddf, -1, 0)
            warped = ndimage.map_coordinates(moving_labels, coords, order=0, mode="nearest")
            labels = [k for k in np.union1d(fixed_labels, moving_labels) if k]
            dices.append(np.mean([2 * np.sum((fixed_labels == k) & (warped == k))
                                  / (np.sum(fixed_labels == k) + np.sum(warped == k)) for k in labels]))
        assert curve[n]["dice"] == pytest.approx(np.mean(dices), abs=1e-6)
        assert curve[n]["dice_std"] == pytest.approx(np.std(dices), abs=1e-6)
    assert abs(curve[8]["dice"] - curve[1]["dice"]) > 0.01  # the check above can tell step counts apart


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_deqreg_runs_exactly_n_solver_steps(study):
    result, workdirs, _ = study
    config = load_config(workdirs["deq"])
    module, params = methods.build(config.model, config.loss, config.solver).module, _params(workdirs["deq"])
    records = list(pipeline.records(config.data, "test", limit=LIMIT))
    curve = _curve(result["runs"][0])
    # n = 1 (< S = 2 captured states): one application of T from φ₀ = 0.
    one = [float(metrics.sdlogj(np.asarray(module.trajectory(params, r["fixed"][None], r["moving"][None], steps=1))[-1, 0]))
           for r in records]
    assert curve[1]["sdlogj"] == pytest.approx(np.mean(one), rel=1e-4, abs=1e-7)
    eight = [float(metrics.sdlogj(np.asarray(module.predict(params, r["fixed"][None], r["moving"][None], steps=8))[0]))
             for r in records]
    assert curve[8]["sdlogj"] == pytest.approx(np.mean(eight), rel=1e-4, abs=1e-7)
    assert curve[8]["sdlogj"] != pytest.approx(curve[1]["sdlogj"], rel=1e-3)


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_figure_and_table(study):
    result, _, out = study
    image = imread(out / "convergence.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    lines = (out / "convergence.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Run")]
    assert len(rows) == 2
    deq, unroll = result["runs"]
    assert rows[0].startswith(f"| DEQReg (fixed-point iteration, trained with ≤ 4 steps) | `{deq['workdir']}` | 4 |")
    assert rows[1].startswith(f"| Unrolled vanilla, 2 steps | `{unroll['workdir']}` | 2 |")
    unroll = _curve(result["runs"][1])
    assert f"{100 * unroll[2]['dice']:.2f}" in rows[1] and "(8)" in rows[1]


def _curve_run(model, variant, trained, levels=None, name="w"):
    curve = [{"steps": n, "dice": 0.5 + 0.01 * n, "dice_std": 0.1, "folding": 0.0, "folding_std": 0.0, "num_pairs": 2}
             for n in (1, 2, 4)]
    return {"name": name, "workdir": f"runs/{name}", "model": model, "variant": variant, "trained_steps": trained,
            **({"levels": levels} if levels else {}), "curve": curve}


def test_run_labels_and_legend(tmp_path):
    from jaxreg.evaluation.convergence import convergence_figure, convergence_table, run_label

    runs = [_curve_run("deqreg", "anderson", 48, name="dqdemo2"), _curve_run("unroll", "vanilla", 3, 3, name="unroll3"),
            _curve_run("unroll", "riir", 6, 1, name="r1"), _curve_run("unroll", "riir", 6, 1, name="r2")]
    assert run_label(runs[0]) == "DEQReg (Anderson, trained with ≤ 48 steps)"
    assert run_label(runs[1]) == "Unrolled vanilla, 3 levels × 3 steps"
    assert run_label(runs[2]) == "Unrolled RIIR-like, 6 steps"
    assert run_label({"model": "unroll", "variant": "gradirn", "trained_steps": 2}) == "Unrolled GraDIRN-like, 2 steps"
    fig = convergence_figure(tmp_path / "c.png", runs, title="t")
    assert (tmp_path / "c.png").is_file()
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["DEQReg (Anderson, trained with ≤ 48 steps)", "Unrolled vanilla, 3 levels × 3 steps",
                     "Unrolled RIIR-like, 6 steps [r1]", "Unrolled RIIR-like, 6 steps [r2]",  # same label: workdir added
                     "trained step count (★, dotted line)"]
    assert not any(name in text for text in texts[:2] for name in ("dqdemo2", "unroll3"))
    dice_axes = fig.axes[0]
    assert sum(len(line.get_xdata()) == 3 for line in dice_axes.get_lines()) == len(runs)  # one curve per run
    table = convergence_table(runs)
    assert "| Unrolled vanilla, 3 levels × 3 steps | `runs/unroll3` | 3 per level |" in table


def test_figure_dice_in_percent_and_folding_on_a_log_axis(tmp_path):
    """0.005 % and 40 % of folded voxels both read on the folding axis; Dice is drawn in %."""
    from jaxreg.evaluation.convergence import convergence_figure

    deq, unroll = _curve_run("deqreg", "anderson", 4, name="d"), _curve_run("unroll", "vanilla", 2, name="u")
    for run, folding in ((deq, (0.0, 0.005, 0.002)), (unroll, (0.01, 4.0, 40.0))):
        for c, f in zip(run["curve"], folding):
            c["folding"] = f
    fig = convergence_figure(tmp_path / "c.png", [deq, unroll])
    dice_ax, fold_ax = fig.axes[:2]
    curves = [line for line in dice_ax.get_lines() if len(line.get_xdata()) == 3]
    np.testing.assert_allclose(curves[0].get_ydata(), [51.0, 52.0, 54.0])  # 100 × (0.5 + 0.01 n), n = 1, 2, 4
    assert fold_ax.get_yscale() == "symlog"
    fig.canvas.draw()

    def height(value):  # fraction of the folding axis' height at which a value is drawn
        return fold_ax.transLimits.transform(fold_ax.transScale.transform([(1.0, value)]))[0, 1]

    assert height(0.0) == pytest.approx(0.0, abs=1e-9) and fold_ax.get_ylim()[1] == pytest.approx(100.0)
    decades = np.diff([height(v) for v in (0.01, 0.1, 1.0, 10.0, 100.0)])
    np.testing.assert_allclose(decades, decades[0], rtol=1e-6)  # logarithmic above the linear zone
    assert height(0.005) > 0.1 and height(40.0) - height(0.005) < 0.9  # both visibly on the axis


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_replot_from_saved_json(study, tmp_path):
    from jaxreg.evaluation.convergence import convergence_replot

    result, _, out = study
    saved = json.loads((out / "convergence.json").read_text())
    for run in saved["runs"]:  # as written before labels and levels were kept
        run.pop("label"), run.pop("levels", None)
    (tmp_path / "old.json").write_text(json.dumps(saved))
    replotted = convergence_replot(tmp_path / "old.json", out_dir=tmp_path / "re")
    assert [run["label"] for run in replotted["runs"]] == [run["label"] for run in result["runs"]]
    assert replotted["runs"][1]["levels"] == 1  # read back from the workdir's config
    assert (tmp_path / "re" / "convergence.md").read_text() == (out / "convergence.md").read_text()
    assert imread(tmp_path / "re" / "convergence.png").shape[0] > 100
    with pytest.raises(FileNotFoundError, match="no file"):
        convergence_replot(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"runs": []}')
    with pytest.raises(ValueError, match="not a convergence study"):
        convergence_replot(tmp_path / "bad.json")


def _cli():
    spec = importlib.util.spec_from_file_location("convergence_cli", ROOT / "benchmarks" / "convergence.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_cli_plot_only(study, tmp_path, capsys):
    _, _, out = study
    cli = _cli()
    cli.main(["--plot-only", str(out / "convergence.json"), "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"][0]["label"].startswith("DEQReg") and (tmp_path / "convergence.png").is_file()
    for argv in (["--plot-only", str(out / "convergence.json"), "some_workdir"], ["--plot-only", str(tmp_path / "none.json")],
                 []):
        with pytest.raises(SystemExit) as error:
            cli.main(argv)
        assert error.value.code == 2


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_cli(study, tmp_path, capsys):
    _, workdirs, _ = study
    cli = _cli()
    cli.main([str(workdirs["unroll"]), "--steps", "1,2", "--limit", "1", "--out", str(tmp_path), "--no-progress"])
    printed = json.loads(capsys.readouterr().out)
    assert [c["steps"] for c in printed["runs"][0]["curve"]] == [1, 2] and printed["runs"][0]["curve"][0]["num_pairs"] == 1
    with pytest.raises(SystemExit):
        cli.main([str(workdirs["unroll"]), "--steps", "1,x"])


@pytest.mark.xdist_group("test_convergence.study")  # one worker builds the module fixture once
@pytest.mark.slow
def test_rejects_voxelmorph_and_bad_steps(study, tmp_path):
    _, workdirs, _ = study
    save_config(_config("tiny"), tmp_path / "vm")
    with pytest.raises(ValueError, match="voxelmorph"):
        convergence_study([workdirs["deq"], tmp_path / "vm"], out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any scoring
    for steps in ((), (0, 2), (1.5,)):
        with pytest.raises(ValueError, match="steps"):
            convergence_study([workdirs["deq"]], steps=steps, out_dir=tmp_path / "out", progress=False)
