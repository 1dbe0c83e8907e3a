"""ACDC: write a synthetic database, read it back through the public reader.

Every expected value comes from the NIfTI files themselves (read with ``jaxreg.io``),
scipy, or a closed form, never from the reader under test.
"""

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxreg import io
from jaxreg.data import acdc, preprocess, sources, tfds_builders
from jaxreg.data.learn2reg import SPLITS

FILE_SHAPE = (40, 36, 8)  # (X, Y, Z) as written
FILE_SPACING = (1.5625, 1.5625, 10.0)
TRAIN = ("patient001", "patient002", "patient003", "patient004")
TEST = ("patient101", "patient102")
TO_DHW = (2, 0, 1)
OFF = {"spacing": None, "shape": None, "out_range": None}
SMALL = {"spacing": (3.0, 3.0, 12.0), "shape": (8, 32, 32)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # Inside a "database" folder, as the challenge download unpacks.
    base = tmp_path_factory.mktemp("acdc") / "database"
    return acdc.write_acdc(base, num_train=4, num_test=2, shape=FILE_SHAPE, spacing=FILE_SPACING, seed=1)


def _rotation():
    a, b = np.deg2rad(30.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def rotated(root, tmp_path_factory):
    """A copy of the database whose files carry a rotated and translated affine."""
    copy = shutil.copytree(root, tmp_path_factory.mktemp("acdc_rotated") / "database")
    affine = np.eye(4)
    affine[:3, :3] = _rotation() @ np.diag(FILE_SPACING)
    affine[:3, 3] = [-31.0, 12.5, 47.0]
    for path in copy.glob("*/patient*/*.nii.gz"):
        io.save_nifti(path, io.load_nifti(path).array, affine)
    return copy


def _folder(base, patient):
    return base / ("training" if int(patient[7:]) <= 100 else "testing") / patient


def _frame(base, patient, phase):
    """The frame number of a phase, parsed here from the Info.cfg text."""
    lines = (_folder(base, patient) / "Info.cfg").read_text().splitlines()
    fields = dict(line.split(": ", 1) for line in lines if line)
    return int(fields[phase])


def _files(base, key):
    """(image, labels) NIfTI volumes of a frame key, straight from the files."""
    patient, phase = key.split("/")
    stem = _folder(base, patient) / f"{patient}_frame{_frame(base, patient, phase):02d}"
    return io.load_nifti(f"{stem}.nii.gz"), io.load_nifti(f"{stem}_gt.nii.gz")


def _source_coords(file_affine, out_affine, shape):
    """File voxel coordinates (*shape, 3) of every output voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    step = np.linalg.inv(file_affine) @ out_affine
    return idx @ step[:3, :3].T + step[:3, 3]


# --- splits and Info.cfg -----------------------------------------------------------


def test_splits_and_pairs(root):
    ds = acdc.open_acdc(root, num_val=1)
    assert ds.patients("train") == TRAIN[:3]
    assert ds.patients("val") == TRAIN[3:]  # the last training patient
    assert ds.patients("test") == TEST  # the testing/ folder
    assert ds.pairs("train") == (("patient001/ED", "patient001/ES"), ("patient002/ED", "patient002/ES"),
                                 ("patient003/ED", "patient003/ES"))
    assert ds.pairs("val") == (("patient004/ED", "patient004/ES"),)
    assert ds.pairs("test") == (("patient101/ED", "patient101/ES"), ("patient102/ED", "patient102/ES"))
    for patient in (*TRAIN, *TEST):
        assert ds.folder(patient) == _folder(root, patient)
    none = acdc.open_acdc(root, num_val=0)
    assert none.patients("train") == TRAIN and none.patients("val") == none.pairs("val") == ()
    assert acdc.open_acdc(root, num_val=4).patients("train") == ()
    # The folder that holds database/ opens the same database.
    parent = acdc.open_acdc(root.parent, num_val=1)
    assert parent.root == root and {s: parent.pairs(s) for s in SPLITS} == {s: ds.pairs(s) for s in SPLITS}


def test_read_info_real_style(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    info = acdc.read_info(path)
    assert info == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}
    assert [type(info[k]) for k in ("ED", "ES", "NbFrame", "Height", "Weight", "Group")] == [int] * 3 + [float] * 2 + [str]


def test_written_info_matches_frame_files(root):
    ds = acdc.open_acdc(root)
    for patient in (*TRAIN, *TEST):
        folder = _folder(root, patient)
        info = ds.info(patient)
        assert info == acdc.read_info(folder / "Info.cfg")
        images = sorted(p.name for p in folder.glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz"))
        labels = sorted(p.name for p in folder.glob("*_gt.nii.gz"))
        numbers = sorted(int(name[len(patient) + 6:len(patient) + 8]) for name in images)
        assert numbers == sorted({info["ED"], info["ES"]}) and info["ED"] != info["ES"]
        assert images == [f"{patient}_frame{n:02d}.nii.gz" for n in numbers]
        assert labels == [f"{patient}_frame{n:02d}_gt.nii.gz" for n in numbers]
        assert info["ES"] <= info["NbFrame"] and info["Group"] in {"NOR", "MINF", "DCM", "HCM", "RV"}


# --- preprocessing -------------------------------------------------------------------


def test_no_preprocessing_equals_files(root):
    ds = acdc.open_acdc(root, **OFF)
    pair = ds.load_pair("patient002/ED", "patient002/ES")
    assert pair["ids"] == "patient002_ED_ES"
    for side, key in (("fixed", "patient002/ED"), ("moving", "patient002/ES")):
        image, labels = _files(root, key)
        np.testing.assert_array_equal(pair[side], image.array.transpose(TO_DHW))
        np.testing.assert_array_equal(pair[f"{side}_labels"], labels.array.transpose(TO_DHW))
        assert pair[side].dtype == np.float32 and pair[f"{side}_labels"].dtype == np.int32
        assert pair[side].shape == (8, 40, 36)
    # Output voxel (d, h, w) sits at the world point of file voxel (h, w, d).
    file_affine = _files(root, "patient002/ED")[0].affine
    for d, h, w in ((0, 0, 0), (3, 17, 5), (7, 39, 35)):
        np.testing.assert_allclose(pair["affine"] @ [d, h, w, 1], file_affine @ [h, w, d, 1])
    np.testing.assert_allclose(pair["spacing"], [10.0, 1.5625, 1.5625])
    np.testing.assert_allclose(pair["moving_spacing"], [10.0, 1.5625, 1.5625])
    # Across patients: both names in the id; a testing patient loads from testing/.
    cross = ds.load_pair("patient001/ED", "patient002/ES")
    assert cross["ids"] == "patient001_ED_patient002_ES"
    np.testing.assert_array_equal(cross["moving"], pair["moving"])
    test = ds.load_image("patient101/ES")
    np.testing.assert_array_equal(test["image"], _files(root, "patient101/ES")[0].array.transpose(TO_DHW))


def test_crop_and_pad_only(root):
    # D kept (8), H cropped 40 -> 31 (4 off the start, 5 off the end), W padded 36 -> 43
    # (4 before, 3 after).
    out_shape = (8, 31, 43)
    ds = acdc.open_acdc(root, spacing=None, shape=out_shape, out_range=None)
    for key in ("patient003/ED", "patient003/ES"):
        image, labels = _files(root, key)
        out = ds.load_image(key)
        assert out["image"].shape == out["labels"].shape == out_shape
        src = _source_coords(image.affine, out["affine"], out_shape)
        idx = np.rint(src).astype(int)
        np.testing.assert_allclose(src, idx, atol=1e-9)  # no resampling: whole voxels
        # Centre crop / pad: file x = h + 4, y = w - 4, z = d.
        d, h, w = np.meshgrid(*[np.arange(s) for s in out_shape], indexing="ij")
        np.testing.assert_array_equal(idx, np.stack([h + 4, w - 4, d], -1))
        inside = np.all((idx >= 0) & (idx < np.array(FILE_SHAPE)), axis=-1)
        assert inside.sum() == 8 * 31 * 36 and (~inside).sum() == 8 * 31 * 7
        x, y, z = idx[inside].T
        np.testing.assert_array_equal(out["image"][inside], image.array[x, y, z])
        np.testing.assert_array_equal(out["labels"][inside], labels.array[x, y, z])
        np.testing.assert_array_equal(out["image"][~inside], image.array.min())
        np.testing.assert_array_equal(out["labels"][~inside], 0)


def _check_full(base, key, percentiles):
    out_range = (-1.0, 1.0)
    ds = acdc.open_acdc(base, **SMALL, out_range=out_range, percentiles=percentiles)
    raw = acdc.open_acdc(base, **SMALL, out_range=None).load_image(key)
    out = ds.load_image(key)
    image, labels = _files(base, key)
    shape = SMALL["shape"]
    assert out["image"].shape == out["labels"].shape == raw["image"].shape == shape
    assert out["image"].dtype == np.float32 and out["labels"].dtype == np.int32
    assert set(np.unique(out["labels"])) == {0, 1, 2, 3} == set(np.unique(labels.array))
    np.testing.assert_array_equal(out["labels"], raw["labels"])
    np.testing.assert_array_equal(out["affine"], raw["affine"])

    # Intensities fill out_range exactly.
    low, high = out_range
    assert out["image"].min() >= low - 1e-6 and out["image"].max() <= high + 1e-6
    assert abs(out["image"].min() - low) <= 1e-6 and abs(out["image"].max() - high) <= 1e-6
    # ... by the linear map that sends min/max (or the percentiles) to its ends, clipping beyond.
    values = raw["image"].astype(np.float64)
    lo, hi = (values.min(), values.max()) if percentiles is None else np.percentile(values, percentiles)
    rescaled = np.clip((values - lo) / (hi - lo) * (high - low) + low, low, high)
    np.testing.assert_allclose(out["image"], rescaled, atol=1e-5)
    if percentiles is not None:  # about 1% of the voxels clipped at each end
        assert np.mean(out["image"] <= low + 1e-6) >= 0.009 and np.mean(out["image"] >= high - 1e-6) >= 0.009

    # Spacing: the file's extent over the new voxel count, (X, Y, Z) -> (D, H, W).
    file_spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    extent = np.array(FILE_SHAPE) * file_spacing
    counts = np.rint(extent / np.array(SMALL["spacing"]))
    np.testing.assert_array_equal(counts, [21, 19, 7])  # round(62.5/3), round(56.25/3), round(80/12)
    expected = (extent / counts)[list(TO_DHW)]
    np.testing.assert_allclose(out["spacing"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["spacing"], preprocess.spacing_of(out["affine"]), rtol=1e-12)

    # Each structure's centroid stays at the same world point (within one output voxel).
    inv_out = np.linalg.inv(out["affine"])
    for label in (1, 2, 3):
        file_centroid = np.argwhere(labels.array == label).mean(0)
        world = image.affine @ [*file_centroid, 1]
        out_centroid = np.argwhere(out["labels"] == label).mean(0)
        np.testing.assert_array_less(np.abs((inv_out @ world)[:3] - out_centroid), 1.0)

    # The raw resampled image is linear interpolation of the file at the mapped points.
    src = _source_coords(image.affine, out["affine"], shape)
    interior = np.all((src >= 0) & (src <= np.array(FILE_SHAPE) - 1), axis=-1)
    assert interior.sum() == 7 * 21 * 19  # the resampled grid; the rest is padding
    reference = ndimage.map_coordinates(image.array.astype(np.float64), src[interior].T, order=1, mode="nearest")
    np.testing.assert_allclose(raw["image"][interior], reference, atol=1e-5)
    np.testing.assert_array_equal(raw["image"][~interior], raw["image"][interior].min())
    np.testing.assert_array_equal(raw["labels"][~interior], 0)
    # ... and the labels are nearest-neighbour samples of the file's at the same points,
    # except where a point falls halfway between two voxels (here x = 19.5, y = 17.5, z = 3.5)
    # and either neighbour is right.
    tie = np.any(np.abs(src - np.floor(src) - 0.5) < 1e-3, axis=-1)
    assert 0 < (interior & tie).sum() < 0.5 * interior.sum()
    clear = interior & ~tie
    nearest = ndimage.map_coordinates(labels.array, src[clear].T, order=0, mode="nearest")
    np.testing.assert_array_equal(raw["labels"][clear], nearest)


@pytest.mark.parametrize("layout", ["plain", "rotated"])
@pytest.mark.parametrize("percentiles", [None, (1.0, 99.0)])
def test_full_preprocessing(root, rotated, layout, percentiles):
    base = root if layout == "plain" else rotated
    if layout == "rotated":  # the rewritten affine really is oblique
        affine = io.load_nifti(base / "training/patient001/patient001_frame01.nii.gz").affine
        assert abs(affine[1, 0]) > 0.5 and abs(affine[0, 3] + 31.0) < 1e-4
    for key in ("patient001/ED", "patient101/ES"):
        _check_full(base, key, percentiles)


def test_ground_truth_optional(root, tmp_path):
    copy = shutil.copytree(root, tmp_path / "database")
    es = _frame(copy, "patient001", "ES")
    (copy / "training/patient001" / f"patient001_frame{es:02d}_gt.nii.gz").unlink()
    ds = acdc.open_acdc(copy, **SMALL)
    pair = ds.load_pair("patient001/ED", "patient001/ES")
    assert "fixed_labels" not in pair and "moving_labels" not in pair
    assert pair["fixed"].shape == pair["moving"].shape == SMALL["shape"]
    assert "labels" not in ds.load_image("patient001/ES") and "labels" in ds.load_image("patient001/ED")
    assert "fixed_labels" in ds.load_pair("patient002/ED", "patient002/ES")


# --- the public files' header ----------------------------------------------------------
# The ACDC download stores sform_code 2 with an sform of diag(-1, -1, 1) (no voxel size),
# qform_code 0, and the voxel size only in pixdim; ITK reads such a frame as
# diag(-sx, -sy, sz), which is the affine of the "equivalent" copy.


def _rewrite_all(base, write):
    for path in sorted(base.glob("*/patient*/*.nii.gz")):
        image = nib.load(path)
        write(path, np.asarray(image.dataobj))


@pytest.fixture(scope="module")
def public_header(root, tmp_path_factory):
    """A copy of the database whose frames carry the public ACDC header."""
    copy = shutil.copytree(root, tmp_path_factory.mktemp("acdc_public") / "database")

    def write(path, array):
        header = nib.Nifti1Header()
        header.set_data_dtype(array.dtype)
        header.set_data_shape(array.shape)
        header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
        header["qform_code"] = 0
        header.set_zooms(FILE_SPACING)
        nib.save(nib.Nifti1Image(array, None, header), path)

    _rewrite_all(copy, write)
    return copy


@pytest.fixture(scope="module")
def equivalent(root, tmp_path_factory):
    """A copy whose sform holds the same geometry with its voxel size (sform and pixdim agree)."""
    copy = shutil.copytree(root, tmp_path_factory.mktemp("acdc_equivalent") / "database")
    affine = np.diag([-FILE_SPACING[0], -FILE_SPACING[1], FILE_SPACING[2], 1.0])
    _rewrite_all(copy, lambda path, array: io.save_nifti(path, array, affine))
    return copy


def _quiet_load(dataset, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", io.NiftiGeometryWarning)
        return dataset.load_image(key)


def test_public_header_is_what_the_files_say(public_header):
    path = public_header / "training/patient001/patient001_frame01.nii.gz"
    header = nib.load(path).header
    assert int(header["sform_code"]) == 2 and int(header["qform_code"]) == 0
    np.testing.assert_array_equal(header.get_sform(), np.diag([-1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(header["pixdim"][1:4], np.float32(FILE_SPACING))
    with pytest.warns(io.NiftiGeometryWarning, match="patient001_frame01.nii.gz.*using pixdim"):
        volume = io.load_nifti(path)
    np.testing.assert_allclose(preprocess.spacing_of(volume.affine), FILE_SPACING)


def test_public_header_resampled_by_hand(public_header):
    out = _quiet_load(acdc.open_acdc(public_header, shape=None, out_range=None), "patient002/ES")
    # File 40 x 36 x 8 at 1.5625 x 1.5625 x 10 mm (extent 62.5 x 56.25 x 80 mm) to 1.5 x 1.5 x 3.15 mm:
    # round(41.67) = 42, round(37.5) = 38, round(25.4) = 25 voxels; (D, H, W) = (Z, X, Y).
    # (Read with nibabel's 1 mm voxels it would be round(8 / 3.15) = 3 slices of 2.67 mm.)
    assert out["image"].shape == out["labels"].shape == (25, 42, 38)
    np.testing.assert_allclose(out["spacing"], [80 / 25, 62.5 / 42, 56.25 / 38], rtol=1e-12)


@pytest.mark.parametrize("options", [{}, {"shape": None, "out_range": None}, SMALL, OFF])
def test_public_header_reads_as_its_itk_geometry(public_header, equivalent, options):
    public, reference = acdc.open_acdc(public_header, **options), acdc.open_acdc(equivalent, **options)
    for key in ("patient001/ED", "patient101/ES"):
        out, expected = _quiet_load(public, key), reference.load_image(key)
        assert set(out) == set(expected)
        np.testing.assert_array_equal(out["image"], expected["image"])
        np.testing.assert_array_equal(out["labels"], expected["labels"])
        np.testing.assert_allclose(out["affine"], expected["affine"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(out["spacing"], expected["spacing"], rtol=1e-12)


def test_public_header_reaches_tfds_and_pipeline_records(public_header, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", io.NiftiGeometryWarning)
        tfds_builders.prepare("acdc", data_dir=tmp_path / "tfds", manual_dir=public_header)
        folder = sources.FolderPairs(acdc.open_acdc(public_header), "test")[0]
    stored = tfds_builders.TfdsPairs("acdc", "test", data_dir=tmp_path / "tfds")[0]
    # Resampled as above (25, 42, 38), then cropped/padded to (32, 128, 128): spacing unchanged.
    for record in (stored, folder):
        assert record["fixed"].shape == (32, 128, 128)
        for key in ("spacing", "moving_spacing"):
            np.testing.assert_allclose(record[key], [80 / 25, 62.5 / 42, 56.25 / 38], rtol=1e-12)
        np.testing.assert_allclose(preprocess.spacing_of(record["affine"]), record["spacing"], rtol=1e-12)
    np.testing.assert_array_equal(stored["affine"], folder["affine"])


# --- errors --------------------------------------------------------------------------


def test_open_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        acdc.open_acdc(tmp_path / "nowhere")
    (tmp_path / "no_training" / "testing" / "patient101").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no_training.*training"):
        acdc.open_acdc(tmp_path / "no_training")
    (tmp_path / "empty_training" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="patientNNN"):
        acdc.open_acdc(tmp_path / "empty_training")
    for bad in (-1, 5):
        with pytest.raises(ValueError, match=rf"`num_val`.*\[0, 4\].*{bad}"):
            acdc.open_acdc(root, num_val=bad)
    with pytest.raises(ValueError, match="`spacing`"):
        acdc.open_acdc(root, spacing=(1.5, 0.0, 3.0))
    with pytest.raises(ValueError, match="`shape`"):
        acdc.open_acdc(root, shape=(8, 32))
    with pytest.raises(ValueError, match="`out_range`"):
        acdc.open_acdc(root, out_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="`percentiles`"):
        acdc.open_acdc(root, out_range=None, percentiles=(1.0, 99.0))
    with pytest.raises(ValueError, match="`percentiles`"):
        acdc.open_acdc(root, percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="num_train"):
        acdc.write_acdc(tmp_path / "w", num_train=0)
    with pytest.raises(ValueError, match="`shape`"):
        acdc.write_acdc(tmp_path / "w", shape=(8, 36, 8))


def test_key_and_split_errors(root):
    ds = acdc.open_acdc(root, **OFF)
    with pytest.raises(ValueError, match="`split`.*'validation'"):
        ds.pairs("validation")
    with pytest.raises(ValueError, match="`split`"):
        ds.patients("training")
    with pytest.raises(ValueError, match=r"'patient001/ED'.*got 'patient001'"):
        ds.load_image("patient001")
    with pytest.raises(ValueError, match=r"'patient001/ED'.*got 'ED/patient001'"):
        ds.load_image("ED/patient001")
    with pytest.raises(ValueError, match=r"phase.*\('ED', 'ES'\).*'XX'"):
        ds.load_pair("patient001/ED", "patient001/XX")
    # An unknown patient has no folder: the error names where it was looked for.
    with pytest.raises(FileNotFoundError, match=r"training/patient099.*testing"):
        ds.load_pair("patient099/ED", "patient099/ES")
    with pytest.raises(FileNotFoundError, match="patient099"):
        ds.info("patient099")


def test_read_info_errors(tmp_path):
    path = tmp_path / "Info.cfg"
    with pytest.raises(FileNotFoundError, match="Info.cfg"):
        acdc.read_info(path)
    path.write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(ValueError, match=r"ES frame.*'ES: <frame>'.*\['ED', 'Group'\]"):
        acdc.read_info(path)
    path.write_text("ED: 1\nES 12\n")
    with pytest.raises(ValueError, match=r"line 2 .*'Name: value'.*'ES 12'"):
        acdc.read_info(path)
    path.write_text("ED: one\nES: 12\n")
    with pytest.raises(ValueError, match="ED must be an integer; got 'one'"):
        acdc.read_info(path)
    path.write_text("ED: 1\nES: 12\nHeight: tall\n")
    with pytest.raises(ValueError, match="Height must be a number"):
        acdc.read_info(path)
    path.write_text("ED: 0\nES: 12\n")
    with pytest.raises(ValueError, match="1-based"):
        acdc.read_info(path)


def test_missing_files_and_shape_mismatch(root, tmp_path):
    copy = shutil.copytree(root, tmp_path / "database")
    ds = acdc.open_acdc(copy, **OFF)
    # A frame named by Info.cfg but absent.
    es = _frame(copy, "patient002", "ES")
    frame = copy / "training/patient002" / f"patient002_frame{es:02d}.nii.gz"
    frame.unlink()
    with pytest.raises(FileNotFoundError, match=f"ES frame {es}.*patient002/patient002_frame{es:02d}.nii.gz"):
        ds.load_pair("patient002/ED", "patient002/ES")
    # A missing Info.cfg.
    (copy / "training/patient003/Info.cfg").unlink()
    with pytest.raises(FileNotFoundError, match="patient003/Info.cfg"):
        ds.load_image("patient003/ED")
    with pytest.raises(FileNotFoundError, match="patient003/Info.cfg"):
        ds.info("patient003")
    # An Info.cfg without ES.
    (copy / "training/patient004/Info.cfg").write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(ValueError, match="ES"):
        ds.load_pair("patient004/ED", "patient004/ES")
    # ES frame of another size: refused without crop/pad, fine with it.
    es = _frame(copy, "patient001", "ES")
    stem = copy / "training/patient001" / f"patient001_frame{es:02d}"
    affine = np.diag([*FILE_SPACING, 1.0])
    io.save_nifti(f"{stem}.nii.gz", np.zeros((40, 36, 7), np.float32), affine)
    io.save_nifti(f"{stem}_gt.nii.gz", np.zeros((40, 36, 7), np.uint8), affine)
    with pytest.raises(ValueError, match=r"same shape.*\(8, 40, 36\).*\(7, 40, 36\)"):
        ds.load_pair("patient001/ED", "patient001/ES")
    cropped = acdc.open_acdc(copy, spacing=None, shape=(8, 40, 36), out_range=None)
    pair = cropped.load_pair("patient001/ED", "patient001/ES")
    assert pair["fixed"].shape == pair["moving"].shape == (8, 40, 36)
    # Labels whose shape differs from their frame.
    io.save_nifti(f"{stem}_gt.nii.gz", np.zeros((40, 36, 8), np.uint8), affine)
    with pytest.raises(ValueError, match=r"_gt.nii.gz must have the image's shape \(40, 36, 7\)"):
        ds.load_image("patient001/ES")
