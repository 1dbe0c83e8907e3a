"""jaxreg.register (classical and trained-model paths), load_model and the ``jaxreg register`` command.

References are independent of the code under test: scipy's map_coordinates for warping,
numpy for Dice and for the closed-form resampling of a flipped or shifted affine, nibabel
for reading what the command wrote.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg import cli

ROOT = Path(__file__).resolve().parents[1]


def _blob_pair(shape=(32, 32), shift=(2.0, -1.5)):
    """A textured 2-D image with a disc label, and the same moved by ``shift`` voxels (scipy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, np.float32)[:, None, None] / 2
    radius = np.sqrt(((grid - centre) ** 2).sum(0))
    texture = ndimage.gaussian_filter(np.random.default_rng(0).random(shape), 1.5)
    labels = (radius < min(shape) / 4).astype(np.int32)
    fixed = ndimage.gaussian_filter(labels + 4 * (texture - texture.mean()), 0.7)
    coords = grid + np.asarray(shift, np.float32)[:, None, None]  # moving(x) = fixed(x + shift)
    moving = ndimage.map_coordinates(fixed, coords, order=1, mode="nearest")
    moving_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
    return fixed.astype(np.float32), moving.astype(np.float32), labels, moving_labels


def _dice(a, b):
    return 2 * np.sum((a > 0) & (b > 0)) / (np.sum(a > 0) + np.sum(b > 0))


def _scipy_warp(image, ddf, order=1):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"))
    coords = grid + np.moveaxis(np.asarray(ddf, np.float64), -1, 0)
    return ndimage.map_coordinates(np.asarray(image, np.float64), coords, order=order, mode="nearest")


FAST = {"levels": (2, 1), "steps": (40, 30)}


def test_classical_register_aligns_a_shifted_pair_and_warps_like_scipy():
    fixed, moving, labels, moving_labels = _blob_pair()
    result = jaxreg.register(fixed, moving, moving_labels=moving_labels, **FAST)
    assert result.ddf.shape == (32, 32, 2)
    before, after = _dice(labels, moving_labels), _dice(labels, np.asarray(result.warped_labels))
    assert after > before + 0.1, (before, after)
    # warped(x) = moving(x + ddf) = fixed(x + ddf + shift): the centre of the field is −shift
    np.testing.assert_allclose(np.asarray(result.ddf)[12:20, 12:20].mean(axis=(0, 1)), [-2.0, 1.5], atol=0.25)
    np.testing.assert_allclose(np.asarray(result.warped), _scipy_warp(moving, result.ddf), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(result.warped_labels), _scipy_warp(moving_labels, result.ddf, order=0))
    assert result.info["method"] == "optimize" and result.info["time_s"] > 0
    assert np.mean(np.abs(fixed - np.asarray(result.warped))) < 0.6 * np.mean(np.abs(fixed - moving))


def test_second_call_on_same_shapes_does_not_compile(caplog):
    fixed, moving, _, _ = _blob_pair()
    jaxreg.register(fixed, moving, **FAST)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG, logger="jax"):
        jaxreg.register(moving, fixed, **FAST)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiles, compiles


@pytest.mark.parametrize("fixed, moving, kwargs, match", [
    (np.full((16, 16), np.nan), np.ones((16, 16)), {}, "fixed"),
    (np.eye(16), np.where(np.eye(16) > 0, np.inf, 0.0), {}, "moving"),
    (np.eye(16), np.tile(np.eye(16), (16, 1, 1)), {}, "rank"),
    (np.ones((16, 16)), np.eye(16), {}, "constant"),
    (np.eye(16), np.eye(16)[::-1], {"fixed_mask": np.ones((8, 8))}, "fixed_mask"),
    (np.eye(16), np.eye(16)[::-1], {"moving_labels": np.ones((8, 8))}, "moving_labels"),
    (np.eye(16), np.eye(16)[::-1], {"model": "/nonexistent/workdir"}, "does not exist"),
])
def test_bad_input_raises_a_clear_error(fixed, moving, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        jaxreg.register(fixed, moving, **kwargs)


def test_affine_false_is_exactly_the_deformable_stage():
    from jaxreg.optimize import optimize

    fixed, moving, _, _ = _blob_pair()
    result = jaxreg.register(fixed, moving, affine=False, **FAST)
    plain = optimize(fixed, moving, **FAST)
    np.testing.assert_array_equal(np.asarray(result.ddf), np.asarray(plain.ddf))
    np.testing.assert_array_equal(np.asarray(result.deformation), np.asarray(plain.ddf))
    np.testing.assert_array_equal(np.asarray(result.velocity), np.asarray(plain.velocity))
    np.testing.assert_array_equal(result.matrix, np.eye(3))
    assert result.info["affine"] is None and result.spacing == (1.0, 1.0)


def _rotated_pair(angle=14.0, shift=(3.0, -2.0), shape=(48, 48)):
    """A textured 2-D object and the same rotated by ``angle`` degrees about the centre and shifted (scipy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    centre = (np.array(shape) - 1) / 2
    r2 = ((grid[0] - centre[0]) / 15) ** 2 + ((grid[1] - centre[1]) / 11) ** 2
    labels = (r2 < 1).astype(np.int32) + (((grid[0] - centre[0] - 5) ** 2 + (grid[1] - centre[1]) ** 2) < 16)
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=shape), 1.5)
    fixed = ndimage.gaussian_filter(labels + 0.3 * texture / texture.std() * (r2 < 1), 0.7).astype(np.float32)
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    truth = np.eye(3)
    truth[:2, :2], truth[:2, 2] = rot, centre - rot @ centre + np.asarray(shift)  # fixed voxel -> moving voxel
    inv = np.linalg.inv(truth)
    moving = ndimage.affine_transform(fixed, inv[:2, :2], inv[:2, 2], order=3).astype(np.float32)
    moving_labels = ndimage.affine_transform(labels, inv[:2, :2], inv[:2, 2], order=0)
    return fixed, moving, labels, moving_labels, truth


def test_affine_then_deformable_composes_as_documented():
    fixed, moving, labels, moving_labels, truth = _rotated_pair()
    result = jaxreg.register(fixed, moving, moving_labels=moving_labels, spacing=(2.0, 2.0), **FAST)
    assert result.info["affine"] == "affine" and result.spacing == (2.0, 2.0)
    matrix, u = result.matrix, np.asarray(result.deformation, np.float64)
    assert matrix.shape == (3, 3) and matrix.dtype == np.float64
    # ddf(x) = matrix · (x + u(x)) − x, in numpy
    grid = np.moveaxis(np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in fixed.shape], indexing="ij")), 0, -1)
    want = (grid + u) @ matrix[:2, :2].T + matrix[:2, 2] - grid
    np.testing.assert_allclose(np.asarray(result.ddf), want, atol=1e-3)
    np.testing.assert_allclose(np.asarray(result.warped), _scipy_warp(moving, result.ddf), atol=1e-4)
    # the affine stage found the rotation (angle within 1 degree) and the deformable stage little more
    angle = np.rad2deg(np.arctan2(matrix[1, 0], matrix[0, 0]))
    assert abs(angle - 14.0) < 1.0, angle
    assert np.abs(u).mean() < 0.5
    before, after = _dice(labels, moving_labels), _dice(labels, np.asarray(result.warped_labels))
    assert before < 0.85 and after > 0.95, (before, after)
    # world form: G · matrix · G⁻¹
    np.testing.assert_allclose(result.world_matrix(), np.diag([2.0, 2.0, 1.0]) @ matrix @ np.diag([0.5, 0.5, 1.0]))
    flip = np.array([[-1.0, 0.0, 47.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(result.world_matrix(flip), flip @ matrix @ np.linalg.inv(flip))


def test_rigid_stage_only_and_the_progress_plan():
    fixed, moving, _, _, truth = _rotated_pair(angle=8.0, shift=(1.0, 1.0))
    calls = []
    result = jaxreg.register(fixed, moving, affine=False, transform="rigid", callback=lambda *a: calls.append(a))
    assert result.deformation is None and result.velocity is None
    np.testing.assert_allclose(np.asarray(result.ddf),
                               np.asarray(jaxreg.spatial.affine_ddf(result.matrix, fixed.shape)), atol=1e-5)
    np.testing.assert_allclose(result.matrix, truth, atol=0.15)
    plan = jaxreg.register_stages(fixed.shape, affine=False, transform="rigid")
    assert plan == (("rigid", result.info["levels"], result.info["steps"]),)
    levels = sorted({c[0] for c in calls})
    assert levels == list(range(len(result.info["levels"])))
    both = jaxreg.register_stages(fixed.shape, spacing=(1.0, 3.0), **FAST)
    assert both[0][0] == "affine" and both[1] == ("svf", FAST["levels"], FAST["steps"])


@pytest.mark.parametrize("kwargs, match", [
    ({"spacing": (1.0, 0.0)}, "`spacing`"),
    ({"spacing": (1.0, float("nan"))}, "`spacing`"),
    ({"spacing": (1.0, 1.0, 1.0)}, "`spacing`"),
    ({"affine": "similarity"}, "`affine`"),
    ({"affine_options": {"transform": "rigid"}}, "affine_options"),
])
def test_bad_spacing_or_stage_raises(kwargs, match):
    fixed, moving, _, _ = _blob_pair(shape=(16, 16))
    with pytest.raises(ValueError, match=match):
        jaxreg.register(fixed, moving, **kwargs)


def test_integral_float_labels_are_warped_as_integers_and_others_refused():
    fixed, moving, _, moving_labels = _blob_pair()
    result = jaxreg.register(fixed, moving, affine=False, moving_labels=moving_labels.astype(np.float32), **FAST)
    assert np.asarray(result.warped_labels).dtype == np.int32
    np.testing.assert_array_equal(np.asarray(result.warped_labels), _scipy_warp(moving_labels, result.ddf, order=0))
    stack = np.stack([moving_labels, moving_labels]).astype(np.float64)  # batch=True: (B, *S) float labels
    batch = jaxreg.register(np.stack([fixed, fixed]), np.stack([moving, moving]), batch=True, affine=False,
                            moving_labels=stack, **FAST)
    for b in range(2):
        np.testing.assert_array_equal(np.asarray(batch.warped_labels[b]),
                                      _scipy_warp(moving_labels, batch.ddf[b], order=0))
    for bad in (np.full(fixed.shape, 0.5), np.where(moving_labels > 0, np.nan, 0.0)):
        with pytest.raises(ValueError, match="`moving_labels` must be an integer label map"):
            jaxreg.register(fixed, moving, affine=False, moving_labels=bad, **FAST)


def test_unknown_options_list_the_valid_names():
    fixed, moving, _, _ = _blob_pair(shape=(16, 16))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\] of optimize; valid names: transform, .*steps"):
        jaxreg.register(fixed, moving, bogus=1)
    with pytest.raises(ValueError, match=r"`affine_options`: unknown option\(s\) \['bogus'\].*valid names: .*learning_rate"):
        jaxreg.register(fixed, moving, affine_options={"bogus": 1})


def test_a_2d_image_with_channels_is_refused_with_a_hint():
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)  # an RGB-like 2-D image
    with pytest.raises(ValueError, match="A rank-3 array is a 3-D image; 2-D images with channels are not supported"):
        jaxreg.register(image, image[::-1])
    with pytest.raises(ValueError, match="2-D images with channels are not supported"):
        jaxreg.register(np.stack([image, image]), np.stack([image, image[::-1]]), batch=True)


# --- trained models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deq_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("deq")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny_deq.py"),
                          "--workdir", str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir


@pytest.mark.xdist_group("test_register.deq_workdir")  # one worker builds the module fixture once
@pytest.mark.slow
def test_trained_model_registers_odd_shapes_with_solver_options(deq_workdir):
    fixed, moving, _, _ = _blob_pair(shape=(18, 22))
    model = jaxreg.load_model(deq_workdir)
    assert model.name == "deqreg" and model.step > 0
    result = jaxreg.register(fixed, moving, model=model, steps=3)
    assert result.ddf.shape == (18, 22, 2)
    assert np.all(np.isfinite(np.asarray(result.ddf)))
    np.testing.assert_allclose(np.asarray(result.warped), _scipy_warp(moving, result.ddf), atol=1e-4)
    assert result.info["method"] == "deqreg" and result.info["options"] == {"steps": 3}
    by_path = jaxreg.register(fixed, moving, model=str(deq_workdir), steps=3)
    np.testing.assert_allclose(np.asarray(by_path.ddf), np.asarray(result.ddf), atol=1e-6)


@pytest.mark.xdist_group("test_register.deq_workdir")  # one worker builds the module fixture once
@pytest.mark.slow
def test_trained_model_registers_a_batch_like_single_pairs(deq_workdir):
    # Pairs of different intensity ranges: each is rescaled alone before the one network call.
    pairs = [_blob_pair(shape=(18, 22), shift=s)[:2] for s in [(1.0, -1.0), (-1.5, 0.5), (0.5, 1.5)]]
    fixed = np.stack([f * (1 + 3 * i) for i, (f, _) in enumerate(pairs)])
    moving = np.stack([m * (1 + 3 * i) + i for i, (_, m) in enumerate(pairs)])
    model = jaxreg.load_model(deq_workdir)
    batch = jaxreg.register(fixed, moving, model=model, batch=True, affine=False, steps=4)
    assert batch.ddf.shape == (3, 18, 22, 2)
    for i in range(3):
        alone = jaxreg.register(fixed[i], moving[i], model=model, affine=False, steps=4)
        np.testing.assert_allclose(np.asarray(batch.ddf[i]), np.asarray(alone.ddf), atol=1e-5)
        np.testing.assert_allclose(np.asarray(batch.warped[i]), _scipy_warp(moving[i], batch.ddf[i]), atol=1e-4)


@pytest.mark.slow
def test_voxelmorph_workdir_registers_a_volume_and_takes_no_options(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny.py"),
                          "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    fixed, moving, _, _ = _volume_pair()
    result = jaxreg.register(fixed[:, :, :15], moving[:, :, :15], model=tmp_path)  # 15: padded to 16 and back
    assert result.ddf.shape == (16, 16, 15, 3) and result.info["method"] == "voxelmorph"
    np.testing.assert_allclose(np.asarray(result.warped), _scipy_warp(moving[:, :, :15], result.ddf), atol=1e-4)
    with pytest.raises(ValueError, match="no options"):
        jaxreg.register(fixed, moving, model=tmp_path, steps=3)


@pytest.mark.xdist_group("test_register.deq_workdir")  # one worker builds the module fixture once
@pytest.mark.slow
def test_model_rejects_the_optimisers_mask(deq_workdir):
    fixed, moving, _, _ = _blob_pair(shape=(16, 16))
    with pytest.raises(ValueError, match="fixed_mask"):
        jaxreg.register(fixed, moving, model=deq_workdir, fixed_mask=np.ones((16, 16)))


# --- the command line ---------------------------------------------------------------------


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))


def _volume_pair():
    """A 3-D blob pair (16³), moving shifted by (1, -1, 1) voxels."""
    grid = np.stack(np.meshgrid(*[np.arange(16, dtype=np.float32)] * 3, indexing="ij"))
    fixed = np.exp(-((grid - 8) ** 2).sum(0) / 20.0) + 0.3 * np.exp(-((grid - 4) ** 2).sum(0) / 6.0)
    labels = (((grid - 8) ** 2).sum(0) < 16).astype(np.int16)
    coords = grid + np.array([1.0, -1.0, 1.0], np.float32)[:, None, None, None]
    moving = ndimage.map_coordinates(fixed, coords, order=1, mode="nearest").astype(np.float32)
    return fixed.astype(np.float32), moving, labels, ndimage.map_coordinates(labels, coords, order=0, mode="nearest")


@pytest.mark.slow
def test_command_writes_every_output_consistently(tmp_path):
    fixed, moving, labels, moving_labels = _volume_pair()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for name, array in (("f", fixed), ("m", moving), ("l", moving_labels)):
        _save(tmp_path / f"{name}.nii.gz", array, affine)
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                     "--moving-labels", str(tmp_path / "l.nii.gz"), "--out", str(out), "--no-progress",
                     "--option", "levels=(2,1)", "--option", "steps=(30,20)"])
    assert code == 0
    assert {"warped.nii.gz", "disp.nii.gz", "warped_labels.nii.gz", "overview.png", "info.json"} <= {
        p.name for p in out.iterdir()}  # and the transform files (tests/test_cli.py)
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    assert disp.shape == (16, 16, 16, 3)
    warped = nib.load(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(warped.affine, affine)
    np.testing.assert_allclose(warped.get_fdata(), _scipy_warp(moving, disp), atol=1e-4)
    warped_labels = nib.load(str(out / "warped_labels.nii.gz")).get_fdata()
    assert _dice(labels, warped_labels) > _dice(labels, moving_labels)
    info = json.loads((out / "info.json").read_text())
    assert info["two_grids"] is False and info["method"] == "optimize"


def test_resampling_onto_the_fixed_grid_matches_closed_forms():
    image = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 5.0  # voxel i of the source is world 5 - i
    got = cli.resample_to(image, flipped, image.shape, np.eye(4))
    np.testing.assert_allclose(got[:6], image[::-1][:6], atol=1e-6)
    shifted = np.eye(4)
    shifted[1, 3] = -2.0  # source voxel j sits at world j - 2: target voxel j reads source j + 2
    got = cli.resample_to(image, shifted, image.shape, np.eye(4), order=0)
    np.testing.assert_array_equal(got[:, :5], image[:, 2:])
    np.testing.assert_array_equal(got[:, 5:], 0)


def test_command_registers_a_moving_image_on_another_grid_and_says_so(tmp_path, capsys):
    fixed, moving, _, _ = _volume_pair()
    _save(tmp_path / "f.nii.gz", fixed)
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    _save(tmp_path / "m.nii.gz", moving, shifted)
    code = cli.main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                     "--out", str(tmp_path / "out"), "--no-progress", "--option", "levels=(1,)", "--option",
                     "steps=(5,)"])
    assert code == 0
    assert "world coordinates" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "info.json").read_text())["two_grids"] is True


@pytest.mark.parametrize("setup, message", [
    ("not_nifti", "nii"),
    ("missing", "no such file"),
    ("nan", "NaN"),
    ("model", "does not exist"),
])
def test_command_errors_are_one_line_and_write_nothing(tmp_path, setup, message):
    fixed, moving, _, _ = _volume_pair()
    _save(tmp_path / "f.nii.gz", fixed)
    _save(tmp_path / "m.nii.gz", np.where(fixed > 0.5, np.nan, moving) if setup == "nan" else moving)
    (tmp_path / "m.txt").write_text("not an image")
    moving_path = {"not_nifti": "m.txt", "missing": "absent.nii.gz"}.get(setup, "m.nii.gz")
    args = ["-m", "jaxreg.cli", "register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving",
            str(tmp_path / moving_path), "--out", str(tmp_path / "out"), "--no-progress"]
    if setup == "model":
        args += ["--model", str(tmp_path / "no_such_run")]
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_console_script_is_installed():
    """`pip install -e .` puts the `jaxreg` command beside the interpreter (pyproject [project.scripts])."""
    script = Path(sys.executable).parent / "jaxreg"
    assert script.exists(), f"{script} missing: reinstall with pip install -e ."
    out = subprocess.run([str(script), "register", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--moving-labels" in out.stdout, out.stderr
