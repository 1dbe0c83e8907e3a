"""``jaxreg example`` / ``jaxreg.data.write_example``: a synthetic brain pair to register, written as NIfTI.

The files are read back with nibabel (not jaxreg.io) and checked with numpy: shapes, dtypes,
1 mm identity geometry, the label set, a bright head on a dark background, and a partial
overlap of the two label maps (Dice strictly between 0 and 1). Bad input gives one line and
writes nothing; a failure half-way leaves nothing behind.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import jaxreg
from jaxreg import cli
from jaxreg.data import example

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (24, 28, 20)  # sides differ: a transposed array would show
NAMES = ("fixed", "moving", "fixed_labels", "moving_labels")


def _read(folder: Path) -> dict[str, nib.Nifti1Image]:
    return {name: nib.load(str(folder / f"{name}.nii.gz")) for name in NAMES}


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(img.dataobj) for name, img in _read(folder).items()}


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Seed 0 twice and seed 1 once, at ``SHAPE`` (one compilation of the generator)."""
    root = tmp_path_factory.mktemp("examples")
    paths = {name: example.write_example(root / name, seed=seed, shape=SHAPE)
             for name, seed in (("a", 0), ("again", 0), ("other", 1))}
    return root, paths


@pytest.mark.xdist_group("test_example.written")  # one worker builds the module fixture once
def test_files_are_a_1mm_brain_pair_with_labels(written):
    root, paths = written
    assert set(paths["a"]) == set(NAMES)
    assert sorted(p.name for p in (root / "a").iterdir()) == sorted(f"{n}.nii.gz" for n in NAMES)
    images = _read(root / "a")
    for name, img in images.items():
        assert Path(paths["a"][name]) == root / "a" / f"{name}.nii.gz"
        assert img.shape == SHAPE, name
        np.testing.assert_array_equal(img.affine, np.eye(4))
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        dtype = img.header.get_data_dtype()
        assert np.issubdtype(dtype, np.integer) if name.endswith("labels") else dtype == np.float32, (name, dtype)
    a = {name: np.asarray(img.dataobj) for name, img in images.items()}
    # 12 structures (1..12) in a head on background 0; warping may lose a sliver, never add a label.
    assert set(np.unique(a["moving_labels"]).tolist()) == set(range(13))
    assert set(np.unique(a["fixed_labels"]).tolist()) <= set(range(13))
    assert len(np.unique(a["fixed_labels"])) >= 10
    for labels in (a["fixed_labels"], a["moving_labels"]):
        assert labels[0, 0, 0] == labels[-1, -1, -1] == 0
        assert 0.1 < np.mean(labels > 0) < 0.5
    # The images show the anatomy: a bright head on a dark (noisy) background.
    for image, labels in ((a["fixed"], a["fixed_labels"]), (a["moving"], a["moving_labels"])):
        assert np.all(np.isfinite(image))
        assert image[labels > 0].mean() > 0.3 > abs(image[labels == 0].mean()) + 0.2
    # Something to register: the two differ and overlap only partly.
    assert not np.allclose(a["fixed"], a["moving"], atol=0.05)
    assert 0.02 < np.mean(a["fixed_labels"] != a["moving_labels"]) < 0.5
    assert 0.0 < _mean_dice(a["fixed_labels"], a["moving_labels"]) < 1.0


@pytest.mark.xdist_group("test_example.written")  # one worker builds the module fixture once
def test_same_seed_same_files_other_seed_other_files(written):
    root, _ = written
    a, again, other = (_arrays(root / name) for name in ("a", "again", "other"))
    for name in NAMES:
        np.testing.assert_array_equal(a[name], again[name])
        assert not np.array_equal(a[name], other[name]), name


def test_a_failure_half_way_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_third(path, array, affine=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))

    monkeypatch.setattr(jaxreg.io, "save_nifti", fail_third)
    with pytest.raises(OSError, match="disk full"):
        example.write_example(tmp_path / "out", shape=SHAPE)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (24, 24)}, "`shape` must be 3 whole numbers"),
    ({"shape": (24, 24, 15)}, "each from 16 to 256"),
    ({"shape": (24.0, 24, 24)}, "`shape` must be 3"),
    ({"shape": (24, 24, 24, 1)}, "got (24, 24, 24, 1)"),
    ({"seed": -1}, "`seed` must be a whole number from 0 to 4294967295"),
    ({"seed": 2**32}, "`seed` must be"),
    ({"seed": 1.0}, "`seed` must be"),
])
def test_python_bad_arguments_write_nothing(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        example.write_example(tmp_path / "out", **kwargs)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_python_refuses_a_non_empty_folder_and_fills_an_empty_one(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="`out_dir` .* exists and is not an empty folder"):
        example.write_example(full, shape=SHAPE)
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    example.write_example(empty, shape="24,28,20")  # the text form, as the command gives it
    assert sorted(p.name for p in empty.iterdir()) == sorted(f"{n}.nii.gz" for n in NAMES)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--shape", "8,8,8"], "--shape must be 3 whole numbers of voxels, each from 16 to 256 (e.g. 80,96,80); "
                           "got '8,8,8'."),
    (["--shape", "32,32"], "got '32,32'"),
    (["--shape", "32,x,32"], "got '32,x,32'"),
    (["--shape=-32,32,32"], "--shape must be"),
    (["--shape", "32,32,32,32"], "--shape must be"),
    (["--shape", "300,32,32"], "--shape must be"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295; got '-1'."),
    (["--seed", "1.5"], "--seed must be"),
    (["--seed", "+-5"], "--seed must be"),
    (["--out-is-full"], "exists and is not an empty folder; give a new folder (nothing was done)."),
])
def test_command_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    if args == ["--out-is-full"]:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = []
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = cli.main(["example", "--out", str(out), *args])
    assert code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert captured.out == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_command_help_lists_example_with_its_default_shape(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "example" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["example", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{example.MIN_SIDE} to {example.MAX_SIDE} (default {','.join(map(str, example.DEFAULT_SHAPE))})" in text
    assert "--seed" in text and ":func:" not in text and "``" not in text


@pytest.mark.xdist_group("test_example.written")  # one worker builds the module fixture once
def test_command_writes_the_pair_and_prints_a_register_command_that_parses(written, tmp_path, capsys):
    root, _ = written
    out = tmp_path / "my example"  # a space: the printed command must quote it
    assert cli.main(["example", "--out", str(out), "--shape", "24,28,20"]) == 0
    mine, reference = _arrays(out), _arrays(root / "a")  # default seed 0, as write_example(seed=0)
    for name in NAMES:
        np.testing.assert_array_equal(mine[name], reference[name])
    assert _leftovers(tmp_path) == []
    line = next(line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("jaxreg "))
    argv = shlex.split(line)
    args = cli._parser().parse_args(argv[1:])
    assert args.command == "register"
    for name in NAMES:
        assert Path(getattr(args, name)) == out / f"{name}.nii.gz"
    assert Path(args.out) == out / "registered" and not Path(args.out).exists()


def test_console_command_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "jaxreg.cli", "example", "--out", str(tmp_path / "out"),
                          "--shape", "64,64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "error: --shape must be 3 whole numbers of voxels, each from 16 to 256 (e.g. 80,96,80); got '64,64'."]
    assert list(tmp_path.iterdir()) == []
