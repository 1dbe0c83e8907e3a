"""The ``jaxreg`` command: ``register`` outputs (transform, inverse, ITK export, Dice, spacing,
channels) and ``apply``, and one-line errors that leave nothing behind.

References: nibabel reading what the command wrote, scipy's map_coordinates for warping,
numpy for Dice, SimpleITK for the ITK export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import jaxreg
from jaxreg import cli, images
from jaxreg import transform as tx
from jaxreg.evaluation import figures

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--option", "levels=(1,)", "--option", "steps=(30,)"]  # one compile for all 16³ runs
AFFINE = np.array([[0.0, 0.0, 2.0, -10.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 1.5, 0.0, -5.0], [0, 0, 0, 1]])


def _save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return str(path)


def _scipy_warp(image, ddf, order=1, mode="nearest"):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in ddf.shape[:-1]], indexing="ij"))
    coords = grid + np.moveaxis(np.asarray(ddf, np.float64), -1, 0)
    return ndimage.map_coordinates(np.asarray(image, np.float64), coords, order=order, mode=mode)


def _dice(a, b, label):
    return 2 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))


def _pair(shape=(16, 16, 16), shift=(1.0, -1.0, 1.0)):
    """Two blobs (labels 1 and 2) and the same moved by ``shift`` voxels (scipy)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, np.float32).reshape(-1, *[1] * len(shape)) / 2
    fixed = np.exp(-((grid - centre) ** 2).sum(0) / 20.0) + 0.3 * np.exp(-((grid - centre / 2) ** 2).sum(0) / 6.0)
    labels = np.where(((grid - centre) ** 2).sum(0) < 16, 1, 0) + np.where(((grid - centre / 2) ** 2).sum(0) < 5, 2, 0)
    coords = grid + np.asarray(shift, np.float32).reshape(-1, *[1] * len(shape))
    moving = ndimage.map_coordinates(fixed, coords, order=1, mode="nearest").astype(np.float32)
    moving_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
    return fixed.astype(np.float32), moving, labels.astype(np.int16), moving_labels.astype(np.int16)


class FakeRegistration(NamedTuple):
    ddf: object
    warped: object
    warped_labels: object
    info: dict
    matrix: np.ndarray
    deformation: object
    velocity: object
    spacing: tuple


def _fake_matrix(shape):
    """Voxel matrix fixed → moving: a small rotation and scaling about the centre, and a shift."""
    n = len(shape)
    c, s = np.cos(0.1), np.sin(0.1)
    linear = np.eye(n)
    linear[:2, :2] = [[c, -s], [s, c]]
    linear = linear @ np.diag(np.linspace(1.04, 0.97, n))
    centre = (np.array(shape) - 1) / 2
    m = np.eye(n + 1)
    m[:n, :n], m[:n, n] = linear, centre - linear @ centre + np.linspace(0.5, -0.3, n)
    return m


@pytest.fixture
def fake(monkeypatch):
    """``jaxreg.register`` as its contract states, with a known affine and a smooth velocity (no optimiser):
    the command is tested on its own. Records the keywords it was called with."""
    calls = []

    def register(fixed, moving, *, model=None, fixed_mask=None, moving_labels=None, callback=None, spacing=None,
                 **options):
        calls.append({"spacing": spacing, **options})
        to_moving = None  # images with a grid: the matrix points into the moving image's own grid
        if isinstance(fixed, images.Image):
            to_moving = images.voxel_matrix(moving.affine, fixed.affine, len(fixed.shape))
            fixed, moving = fixed.array, moving.array
        shape = np.shape(fixed)[: 2 if np.ndim(fixed) == 2 else 3]
        n = len(shape)
        velocity = np.stack([ndimage.gaussian_filter(np.random.default_rng(k).standard_normal(shape), 2.5)
                             for k in range(n)], -1)
        velocity = (1.5 * velocity / np.abs(velocity).max()).astype(np.float32)
        deformation = np.asarray(jaxreg.integrate_velocity(velocity, steps=7))
        matrix = _fake_matrix(shape) if to_moving is None else to_moving @ _fake_matrix(shape)
        grid = np.stack(np.meshgrid(*[np.arange(k, dtype=np.float64) for k in shape], indexing="ij"), -1)
        ddf = ((grid + deformation) @ matrix[:n, :n].T + matrix[:n, n] - grid).astype(np.float32)
        kind = options.get("transform", "svf")
        if kind in ("affine", "rigid"):  # the affine map is the whole registration
            deformation = velocity = None
            ddf = (grid @ matrix[:n, :n].T + matrix[:n, n] - grid).astype(np.float32)
        labels = None if moving_labels is None else jaxreg.warp(moving_labels, ddf, order=0)
        return FakeRegistration(ddf, jaxreg.warp(moving, ddf), labels, {"method": "fake", "time_s": 0.0},
                                matrix, deformation, velocity if kind == "svf" else None, spacing)

    monkeypatch.setattr(jaxreg, "register", register)
    return calls


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One 3-D registration with labels and fixed labels, shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("cli")
    fixed, moving, labels, moving_labels = _pair()
    paths = {name: _save(tmp / f"{name}.nii.gz", array) for name, array in
             (("f", fixed), ("m", moving), ("fl", labels), ("ml", moving_labels))}
    out = tmp / "out"
    real = figures.pair_figure

    def spy(*args, **kwargs):  # keeps what overview.png was drawn from
        OVERVIEW.update(args=args, kwargs=kwargs, fig=real(*args, **kwargs))
        return OVERVIEW["fig"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "pair_figure", spy)
        code = cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--moving-labels", paths["ml"],
                         "--fixed-labels", paths["fl"], "--out", str(out), *FAST])
    assert code == 0
    return tmp, out, paths, (fixed, moving, labels, moving_labels)


OVERVIEW = {}  # filled by the `registered` fixture


@pytest.mark.xdist_group("cli_registered")  # one `registered` fixture for all
def test_register_overview_uses_spacing_fixed_labels_and_three_slices(registered):
    tmp, out, paths, (fixed, moving, labels, moving_labels) = registered
    assert OVERVIEW["kwargs"]["spacing"] == (1.5, 1.5, 2.0)  # the header's voxel size (AFFINE)
    np.testing.assert_array_equal(OVERVIEW["kwargs"]["fixed_labels"], labels)
    axes = np.array([ax for ax in OVERVIEW["fig"].axes if ax.images], dtype=object).reshape(-1, 7)
    assert axes.shape == (3, 7)  # slices across axes 2 (the 2 mm axis first: the finest plane), 0, 1
    # (rows, cols) axes (0, 1), (2, 1), (2, 0): the coarser axis of a view runs down the rows
    for row, ratio in zip(axes, (1.5 / 1.5, 2.0 / 1.5, 2.0 / 1.5)):
        assert all(ax.get_aspect() == pytest.approx(ratio) for ax in row)
        assert row[0].collections and row[2].collections  # fixed-label contours: fixed and warped panels
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.xdist_group("cli_registered")  # one `registered` fixture for all
def test_register_writes_every_output_consistently(registered):
    tmp, out, paths, (fixed, moving, labels, moving_labels) = registered
    assert {p.name for p in out.iterdir()} >= {"warped.nii.gz", "disp.nii.gz", "warped_labels.nii.gz", "overview.png",
                                               "info.json", "transform", "itk"}
    assert {p.name for p in (out / "itk").iterdir()} >= {"warp.nii.gz", "affine.mat", "affine.txt"}
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    warped = nib.load(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(warped.affine, AFFINE)
    np.testing.assert_allclose(warped.get_fdata(), _scipy_warp(moving, disp), atol=1e-4)
    warped_labels = nib.load(str(out / "warped_labels.nii.gz")).get_fdata()
    info = json.loads((out / "info.json").read_text())
    assert info["two_grids"] is False and info["spacing"] == [1.5, 1.5, 2.0] and info["spacing_source"] == "header"
    assert info["itk"]["warp"] == "itk/warp.nii.gz" and info["transform"] == "transform/transform.json"
    dice = info["dice"]
    assert dice["labels"] == [1, 2]
    for k, label in enumerate((1, 2)):  # numpy Dice of what was written
        assert dice["before"][k] == pytest.approx(_dice(labels, moving_labels, label), abs=1e-6)
        assert dice["after"][k] == pytest.approx(_dice(labels, warped_labels, label), abs=1e-6)
    assert dice["mean_after"] > dice["mean_before"] + 0.05


PHASES = ("import", "read", "register", "inverse", "outputs", "figure")


@pytest.mark.xdist_group("cli_registered")  # one `registered` fixture for all
def test_info_json_timings_add_up_to_the_total(registered):
    tmp, out, paths, _ = registered
    timings = json.loads((out / "info.json").read_text())["timings"]
    assert set(PHASES) | {"total"} <= set(timings)
    assert all(timings[k] >= 0 for k in PHASES) and timings["register"] > 0
    assert sum(timings[k] for k in PHASES) == pytest.approx(timings["total"], abs=0.05)


def test_info_json_timings_keep_the_registrations_own(fake, tmp_path, monkeypatch):
    registration = jaxreg.register  # the fake, as its contract states

    def with_timings(*args, **kwargs):
        result = registration(*args, **kwargs)
        result.info["timings"] = {"affine": 1.25, "deformable": 2.5, "compile": 0.75}
        return result

    monkeypatch.setattr(jaxreg, "register", with_timings)
    out, _, _ = _fake_run(tmp_path)
    timings = json.loads((out / "info.json").read_text())["timings"]
    assert {k: timings[k] for k in ("affine", "deformable", "compile")} == {"affine": 1.25, "deformable": 2.5,
                                                                             "compile": 0.75}
    assert sum(timings[k] for k in PHASES) == pytest.approx(timings["total"], abs=0.05)


def test_written_fields_match_scipy_from_the_written_transform(fake, tmp_path):
    """inverse_disp, itk/warp and itk/inverse_warp from transform/ (matrix, u, v) in float64 with scipy; the
    warped labels are the moving labels sampled nearest at x + disp(x)."""
    fixed, moving, labels, moving_labels = _pair()
    paths = {name: _save(tmp_path / f"{name}.nii.gz", array) for name, array in
             (("f", fixed), ("m", moving), ("ml", moving_labels))}
    out = tmp_path / "out"
    assert cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--moving-labels", paths["ml"],
                     "--out", str(out), "--no-progress"]) == 0
    description = json.loads((out / "transform" / "transform.json").read_text())
    matrix, steps = np.array(description["matrix"]), description["steps"]
    velocity = nib.load(str(out / "transform" / "velocity.nii.gz")).get_fdata()
    deformation = nib.load(str(out / "transform" / "deformation.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in fixed.shape], indexing="ij"))

    def sample(field, points):
        return np.stack([ndimage.map_coordinates(field[..., k], points, order=1, mode="nearest")
                         for k in range(field.shape[-1])], -1)

    backward = -velocity / 2**steps  # exp(−v) by scaling and squaring
    for _ in range(steps):
        backward = backward + sample(backward, grid + np.moveaxis(backward, -1, 0))
    inv = np.linalg.inv(matrix)
    to_fixed = np.einsum("ij,j...->i...", inv[:3, :3], grid) + inv[:3, 3].reshape(3, 1, 1, 1)
    # exp(−v) as ITK reads a displacement field: edges repeated to half a voxel outside, 0 beyond
    inside = np.all([(p >= -0.5) & (p <= s - 0.5) for p, s in zip(to_fixed, backward.shape[:3])], axis=0)
    inverse = np.moveaxis(to_fixed, 0, -1) + inside[..., None] * sample(backward, to_fixed) - np.moveaxis(grid, 0, -1)
    np.testing.assert_allclose(nib.load(str(out / "inverse_disp.nii.gz")).get_fdata(), inverse, atol=2e-4)
    to_lps_mm = np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, :3]
    np.testing.assert_allclose(nib.load(str(out / "itk" / "warp.nii.gz")).get_fdata()[:, :, :, 0],
                               deformation @ to_lps_mm.T, atol=1e-5)
    np.testing.assert_allclose(nib.load(str(out / "itk" / "inverse_warp.nii.gz")).get_fdata()[:, :, :, 0],
                               backward @ to_lps_mm.T, atol=2e-4)
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    points = grid + np.moveaxis(deformation, -1, 0)
    np.testing.assert_allclose(np.moveaxis(disp, -1, 0), np.einsum("ij,j...->i...", matrix[:3, :3], points)
                               + matrix[:3, 3].reshape(3, 1, 1, 1) - grid, atol=1e-4)
    nearest = _scipy_warp(moving_labels, disp, order=0, mode="grid-constant")  # 0 outside the moving grid
    assert np.mean(nib.load(str(out / "warped_labels.nii.gz")).get_fdata() == nearest) > 0.999  # ties at .5


@pytest.mark.xdist_group("cli_registered")  # one `registered` fixture for all
def test_apply_reproduces_warped_and_warped_labels(registered):
    tmp, out, paths, _ = registered
    code = cli.main(["apply", "--transform", str(out), "--image", paths["m"], "--out", str(tmp / "a.nii.gz")])
    assert code == 0
    np.testing.assert_array_equal(nib.load(str(tmp / "a.nii.gz")).get_fdata(),
                                  nib.load(str(out / "warped.nii.gz")).get_fdata())
    code = cli.main(["apply", "--transform", str(out / "transform" / "transform.json"), "--image", paths["ml"],
                     "--labels", "--out", str(tmp / "al.nii.gz")])
    assert code == 0
    written = nib.load(str(tmp / "al.nii.gz"))
    assert np.issubdtype(written.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(written.get_fdata(), nib.load(str(out / "warped_labels.nii.gz")).get_fdata())
    # Python: jaxreg.transform.apply on the arrays gives the same
    loaded = tx.load_transform(out)
    moving = nib.load(paths["m"]).get_fdata()
    np.testing.assert_allclose(np.asarray(tx.apply(loaded, moving)), nib.load(str(out / "warped.nii.gz")).get_fdata(),
                               atol=1e-6)


def test_python_transform_of_a_registration_matches_its_ddf_and_warped():
    """jaxreg.register's result (the real one) as a Transform: the same field and the same warped image."""
    fixed, moving, _, _ = _pair()
    result = jaxreg.register(fixed, moving, levels=(1,), steps=(30,))
    t = tx.from_registration(result, fixed_affine=AFFINE)
    np.testing.assert_allclose(np.asarray(tx.total_ddf(t.matrix, t.deformation)), np.asarray(result.ddf), atol=1e-3)
    np.testing.assert_allclose(np.asarray(tx.apply(t, moving)), np.asarray(result.warped), atol=1e-3)


def _fake_run(tmp, *extra, shape=(16, 16, 16), affine=AFFINE, progress=False):
    fixed, moving, labels, moving_labels = _pair(shape=shape, shift=(1.0, -1.0, 1.0)[: len(shape)])
    if len(shape) == 2:
        fixed, moving = fixed[..., None], moving[..., None]
    paths = {name: _save(tmp / f"{name}.nii.gz", array, affine) for name, array in (("f", fixed), ("m", moving))}
    out = tmp / "out"
    progress = [] if progress else ["--no-progress"]
    assert cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--out", str(out), *progress,
                     *extra]) == 0
    return out, paths, moving


def test_inverse_field_undoes_the_forward_one(fake, tmp_path):
    out, _, _ = _fake_run(tmp_path)
    info = json.loads((out / "info.json").read_text())
    assert info["inverse"] == "inverse_disp.nii.gz" and (out / "itk" / "inverse_warp.nii.gz").exists()
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    inverse = nib.load(str(out / "inverse_disp.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in inverse.shape[:-1]], indexing="ij"))
    back = grid + np.moveaxis(inverse, -1, 0)  # T⁻¹(y)
    forward = back + np.stack([ndimage.map_coordinates(disp[..., k], back, order=1, mode="nearest") for k in range(3)])
    residual = np.linalg.norm(forward - grid, axis=0)
    inside = np.all([(b >= 2) & (b <= s - 3) for b, s in zip(back, disp.shape)], axis=0)  # away from the border
    assert inside.mean() > 0.3
    assert residual[inside].max() < 0.1, residual[inside].max()


def test_itk_export_of_the_command_is_read_by_simpleitk(fake, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    out, paths, moving = _fake_run(tmp_path)
    field = sitk.Cast(sitk.ReadImage(str(out / "itk" / "warp.nii.gz")), sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform([sitk.ReadTransform(str(out / "itk" / "affine.mat")),
                                         sitk.DisplacementFieldTransform(field)])
    resampled = sitk.Resample(sitk.ReadImage(paths["m"]), sitk.ReadImage(paths["f"]), composite, sitk.sitkLinear, 0.0,
                              sitk.sitkFloat64)
    itk_warped = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in moving.shape], indexing="ij"))
    points = grid + np.moveaxis(disp, -1, 0)
    inside = np.all([(p >= 0) & (p <= s - 1) for p, s in zip(points, moving.shape)], axis=0)
    assert inside.mean() > 0.7
    ours = nib.load(str(out / "warped.nii.gz")).get_fdata()
    assert np.abs(itk_warped - ours)[inside].max() < 1e-4


def test_moving_on_another_grid_with_channels_and_a_spacing_override(fake, tmp_path):
    """The transform points into the moving file's grid: apply takes the moving file as it is."""
    fixed, moving, _, _ = _pair()
    channels = np.stack([moving, moving ** 2], -1)[2:, :, 1:]  # another shape ...
    moving_affine = AFFINE.copy()
    moving_affine[:3, 3] += AFFINE[:3, 0] * 2 + AFFINE[:3, 2]  # ... and origin: the same world positions
    f = _save(tmp_path / "f.nii.gz", np.stack([fixed, fixed ** 2], -1))
    m = _save(tmp_path / "m.nii.gz", channels, moving_affine)
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", f, "--moving", m, "--out", str(out), "--spacing", "1,1,2", *FAST])
    assert code == 0
    assert fake[0]["spacing"] == (1.0, 1.0, 2.0) and fake[0]["levels"] == (1,)
    info = json.loads((out / "info.json").read_text())
    assert info["two_grids"] is True and info["spacing"] == [1.0, 1.0, 2.0] and info["spacing_source"] == "--spacing"
    warped = nib.load(str(out / "warped.nii.gz"))
    assert warped.shape == (16, 16, 16, 2)
    t = tx.load_transform(out)
    assert t.moving_shape == (14, 16, 15)
    np.testing.assert_allclose(t.moving_affine, moving_affine)
    inverse = nib.load(str(out / "inverse_disp.nii.gz"))
    assert inverse.shape == (14, 16, 15, 3)
    np.testing.assert_allclose(inverse.affine, moving_affine)
    code = cli.main(["apply", "--transform", str(out), "--image", m, "--out", str(tmp_path / "a.nii.gz")])
    assert code == 0
    np.testing.assert_array_equal(nib.load(str(tmp_path / "a.nii.gz")).get_fdata(), warped.get_fdata())
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()  # in the moving file's voxels
    np.testing.assert_allclose(warped.get_fdata()[..., 1], _scipy_warp(channels[..., 1], disp), atol=1e-4)
    # --outside zero: zero where the transform reads beyond the moving scan, the same inside it
    code = cli.main(["apply", "--transform", str(out), "--image", m, "--outside", "zero", "--out",
                     str(tmp_path / "z.nii.gz")])
    assert code == 0
    zero = nib.load(str(tmp_path / "z.nii.gz")).get_fdata()
    points = np.stack(np.meshgrid(*[np.arange(s) for s in disp.shape[:-1]], indexing="ij"), -1) + disp
    inside = np.all((points >= 0) & (points <= np.array(channels.shape[:3]) - 1), -1)
    far = np.any((points < -1) | (points > np.array(channels.shape[:3])), -1)
    assert far.sum() > 100 and inside.mean() > 0.5
    np.testing.assert_allclose(zero[inside], warped.get_fdata()[inside], atol=1e-6)
    assert np.all(zero[far] == 0)


def test_2d_images_register_and_apply_without_an_itk_export(fake, tmp_path):
    out, paths, _ = _fake_run(tmp_path, shape=(24, 20), affine=np.eye(4))
    info = json.loads((out / "info.json").read_text())
    assert info["itk"] is None and not (out / "itk").exists() and info["spacing"] == [1.0, 1.0]
    assert fake[0]["spacing"] == (1.0, 1.0)
    assert cli.main(["apply", "--transform", str(out), "--image", paths["m"], "--out", str(tmp_path / "a.nii.gz")]) == 0
    np.testing.assert_array_equal(nib.load(str(tmp_path / "a.nii.gz")).get_fdata(),
                                  nib.load(str(out / "warped.nii.gz")).get_fdata())


def test_an_affine_map_alone_is_inverted_exactly(fake, tmp_path):
    out, _, _ = _fake_run(tmp_path, "--option", "transform=affine")
    t = tx.load_transform(out)
    assert t.deformation is None and t.velocity is None
    inverse = nib.load(str(out / "inverse_disp.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in inverse.shape[:-1]], indexing="ij"), -1)
    back = grid + inverse
    np.testing.assert_allclose(back @ t.matrix[:3, :3].T + t.matrix[:3, 3], grid, atol=1e-3)


def test_ddf_path_writes_the_fixed_point_inverse(fake, tmp_path, capsys):
    """No velocity: the deformation is inverted by fixed-point iteration; the check is scipy's."""
    out, _, _ = _fake_run(tmp_path, "--option", "transform=ddf", progress=True)
    assert "register" in capsys.readouterr().err  # the progress bar, sized by jaxreg.register.register_stages
    info = json.loads((out / "info.json").read_text())
    assert info["inverse"] == "inverse_disp.nii.gz" and info["inverse_method"] == "fixed-point inversion"
    assert info["inverse_residual_voxels"] < 0.01 and "inverse_note" not in info
    assert (out / "itk" / "inverse_warp.nii.gz").exists()
    disp = nib.load(str(out / "disp.nii.gz")).get_fdata()
    inverse = nib.load(str(out / "inverse_disp.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in inverse.shape[:-1]], indexing="ij"))
    back = grid + np.moveaxis(inverse, -1, 0)  # T⁻¹(y)
    forward = back + np.stack([ndimage.map_coordinates(disp[..., k], back, order=1, mode="nearest") for k in range(3)])
    inside = np.all([(b >= 2) & (b <= s - 3) for b, s in zip(back, disp.shape)], axis=0)
    assert inside.mean() > 0.3
    assert np.linalg.norm(forward - grid, axis=0)[inside].max() < 0.1
    # jaxreg apply --inverse takes it too
    image = _save(tmp_path / "on_fixed.nii.gz", np.random.default_rng(0).random(disp.shape[:3]).astype(np.float32))
    assert cli.main(["apply", "--transform", str(out), "--image", image, "--inverse", "--out",
                     str(tmp_path / "back.nii.gz")]) == 0


# --- errors: one line, exit status 1, nothing written, nothing registered -------------------------------

@pytest.fixture
def inputs(tmp_path, monkeypatch):
    fixed, moving, labels, moving_labels = _pair()
    paths = {name: _save(tmp_path / f"{name}.nii.gz", array) for name, array in
             (("f", fixed), ("m", moving), ("fl", labels), ("ml", moving_labels))}

    def refuse(*args, **kwargs):
        raise AssertionError("register() must not run after a bad argument")

    monkeypatch.setattr(jaxreg, "register", refuse)
    return tmp_path, paths


@pytest.mark.parametrize("extra, message", [
    (["--spacing", "0,1,1"], "--spacing must be"),
    (["--spacing", "nan,1,1"], "--spacing must be"),
    (["--spacing=-1,1,1"], "--spacing must be"),
    (["--spacing", "1,1"], "must give 3 sizes"),
    (["--spacing", "a,b,c"], "--spacing must be"),
    (["--option", "similarty=mi"], "unknown --option similarty; valid options: "),
    (["--option", "spacing=(1,1,1)"], "--spacing SX,SY,SZ"),
    (["--fixed-labels", "FL"], "--fixed-labels needs --moving-labels"),
])
def test_register_errors_before_any_work(inputs, capsys, extra, message):
    tmp, paths = inputs
    extra = [paths["fl"] if a == "FL" else a for a in extra]
    out = tmp / "out"
    code = cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--out", str(out), "--no-progress",
                     *extra])
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    if "valid options" in message:
        assert "similarity" in lines[0] and "levels" in lines[0]
    assert not out.exists() and not [p for p in tmp.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("affine, shape, message", [
    (np.diag([1.0, 1.0, 1.0, 1.0]), (16, 16, 16),
     "--moving-labels must share the moving image's shape and affine; got the same shape (16, 16, 16) but affine "
     "[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] vs the moving image's "
     "[[0, 0, 2, -10], [-1.5, 0, 0, 20], [0, 1.5, 0, -5], [0, 0, 0, 1]]."),
    (AFFINE, (8, 16, 16), "--moving-labels must share the moving image's shape and affine; got shape (8, 16, 16) "
                          "vs the moving image's (16, 16, 16)."),
])
def test_labels_on_another_grid_name_what_differs(inputs, capsys, affine, shape, message):
    tmp, paths = inputs
    labels = _save(tmp / "other.nii.gz", np.zeros(shape, np.int16), affine)
    code = cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--out", str(tmp / "out"),
                     "--no-progress", "--moving-labels", labels])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_register_help_lists_the_outputs_without_markup():
    out = subprocess.run([sys.executable, "-m", "jaxreg.cli", "register", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("warped.nii.gz", "disp.nii.gz", "inverse_disp.nii.gz", "warped_labels.nii.gz", "transform/", "itk/",
                 "overview.png", "info.json"):
        assert f"* {name}" in out.stdout, name
    assert ":func:" not in out.stdout and "``" not in out.stdout


def test_register_refuses_an_existing_non_empty_out(inputs, capsys):
    tmp, paths = inputs
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli.main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--out", str(out), "--no-progress"])
    assert code == 1 and "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


@pytest.fixture
def ddf_run(tmp_path):
    """A transform folder without a velocity (the ddf path), and images on its two grids."""
    fixed, moving, _, _ = _pair()
    run = tmp_path / "run"
    run.mkdir()
    deformation = np.full((16, 16, 16, 3), 0.5, np.float32)
    tx.save_transform(run / "out" / "transform", tx.Transform(np.eye(4), deformation, None, (16, 16, 16), AFFINE,
                                                                (16, 16, 16), AFFINE))
    return run, _save(run / "f.nii.gz", fixed), _save(run / "m.nii.gz", moving)


@pytest.mark.parametrize("case, message", [
    ("other_grid", "must lie on the transform's moving grid"),
    ("other_affine", "must lie on the transform's moving grid"),
    ("wrong_kind", "not a jaxreg transform"),
    ("wrong_shape", "fixed grid"),
    ("missing", "no jaxreg transform"),
    ("bad_out", "must end in .nii"),
])
def test_apply_errors_are_one_line_and_write_nothing(ddf_run, tmp_path, capsys, case, message):
    run, f, m = ddf_run
    image, transform, out = m, str(run / "out"), tmp_path / "y.nii.gz"
    args = []
    if case == "other_grid":
        image = _save(tmp_path / "small.nii.gz", np.zeros((8, 8, 8), np.float32))
    elif case == "other_affine":
        image = _save(tmp_path / "moved.nii.gz", nib.load(m).get_fdata(), np.diag([1.0, 1.0, 1.0, 1.0]))
    elif case in ("wrong_kind", "wrong_shape"):
        folder = tmp_path / "t"
        folder.mkdir()
        description = json.loads((run / "out" / "transform" / "transform.json").read_text())
        if case == "wrong_kind":
            description["format"] = "ants"
        else:
            description["fixed"]["shape"] = [16, 16, 12]
        (folder / "transform.json").write_text(json.dumps(description))
        (folder / "deformation.nii.gz").write_bytes((run / "out" / "transform" / "deformation.nii.gz").read_bytes())
        transform = str(folder)
    elif case == "missing":
        transform = str(tmp_path / "nothing")
    elif case == "bad_out":
        out = tmp_path / "y.png"
    code = cli.main(["apply", "--transform", transform, "--image", image, "--out", str(out), *args])
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".y")]


def test_apply_help_from_the_console(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxreg.cli", "apply", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--transform" in out.stdout and "--inverse" in out.stdout, out.stderr
