"""Tests of jaxreg.evaluation.l2r against naive transcriptions of the Learn2Reg definitions.

The references below follow the official evaluation (MDL-UzL/L2R, evaluation/utils.py
and evaluation.py; DeepMind surface-distance for HD95) step by step, written with
loops, brute force and np.linalg.det rather than the vectorised code under test.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from jaxreg.evaluation import l2r

# ----------------------------------------------------------------------------- helpers


def smooth_field(rng, shape, scale, sigma=1.5):
    f = rng.normal(size=(*shape, 3))
    f = np.stack([ndimage.gaussian_filter(f[..., k], sigma) for k in range(3)], axis=-1)
    return f / np.abs(f).max() * scale


def blobs(rng, shape, n_labels):
    return ndimage.median_filter(rng.integers(0, n_labels + 1, size=shape), size=3)


def linear_field(shape, a):
    """disp(x) = A x, so the Jacobian of x + disp(x) is I + A everywhere."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    return grid @ np.asarray(a, float).T


# -------------------------------------------------------------- reference definitions


def ref_warp(moving, disp):
    # official: identity = meshgrid(..., indexing='ij'); map_coordinates(moving, identity + disp^T, order=0)
    d, h, w = disp.shape[:3]
    identity = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return ndimage.map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2), order=0)


def ref_dice(fixed, moving, warped, labels):
    per = []
    for i in labels:
        if np.sum(fixed == i) == 0 or np.sum(moving == i) == 0:
            per.append(math.nan)
            continue
        inter = 0
        for f, w in zip((fixed == i).ravel(), (warped == i).ravel()):
            inter += int(f and w)
        per.append(2 * inter / (np.sum(fixed == i) + np.sum(warped == i)))
    valid = [v for v in per if not math.isnan(v)]
    return (sum(valid) / len(valid) if valid else math.nan), per


# DeepMind's neighbourhood code: voxel (o0, o1, o2) of the 2x2x2 block has bit KERNEL[o0, o1, o2].
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
SQ2, SQ3 = math.sqrt(2.0), math.sqrt(3.0)
# Marching-cubes surfel area of each class of 2x2x2 configurations (under the 48 cube
# symmetries and inside/outside exchange), in closed form, keyed by the smallest code of
# the class: corner triangle, edge quad, separated corners, pentagon, face square, ...
CLASS_AREA = {
    0: 0.0, 1: SQ3 / 8, 3: SQ2 / 2, 6: SQ3 / 4, 7: 0.5 + 3 * SQ3 / 8, 15: 1.0, 22: 3 * SQ3 / 8,
    23: 3 * SQ3 / 4, 24: SQ3 / 4, 25: SQ2 / 2 + SQ3 / 8, 27: SQ2 / 2 + SQ3 / 2, 30: 0.5 + SQ3 / 2,
    60: SQ2, 105: SQ3 / 2,
}


def class_of(code):
    block = (code // KERNEL) % 2
    codes = set()
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((0, 1), repeat=3):
            b = block.transpose(perm)
            for ax in range(3):
                if flips[ax]:
                    b = np.flip(b, ax)
            c = int((b * KERNEL).sum())
            codes |= {c, 255 - c}
    return min(codes)


def ref_surfels(mask):
    """Border corners (as coordinates of the 2x2x2 block's upper voxel) and their areas."""
    padded = np.pad(mask, 1)
    points, areas = [], []
    for idx in np.ndindex(*(n - 1 for n in padded.shape)):
        code = 0
        for o in itertools.product((0, 1), repeat=3):
            if padded[idx[0] + o[0], idx[1] + o[1], idx[2] + o[2]]:
                code += KERNEL[o]
        if code not in (0, 255):
            points.append(idx)
            areas.append(CLASS_AREA[class_of(code)])
    return np.array(points, float).reshape(-1, 3), np.array(areas)


def ref_percentile_distance(points, areas, other_points, percent):
    if len(points) == 0:
        return math.inf
    if len(other_points) == 0:
        distances = np.full(len(points), math.inf)
    else:
        distances = np.sqrt(((points[:, None, :] - other_points[None, :, :]) ** 2).sum(-1)).min(axis=1)
    pairs = np.array(sorted(zip(distances, areas)))  # by distance, then area
    cumulative = np.cumsum(pairs[:, 1]) / np.sum(pairs[:, 1])
    idx = np.searchsorted(cumulative, percent / 100.0)  # first index reaching the percentile
    return pairs[min(idx, len(pairs) - 1), 0]


def ref_robust_hd(mask_a, mask_b, percent=95.0):
    pa, aa = ref_surfels(mask_a)
    pb, ab = ref_surfels(mask_b)
    return max(ref_percentile_distance(pa, aa, pb, percent), ref_percentile_distance(pb, ab, pa, percent))


def ref_hd95(fixed, moving, warped, labels):
    per = []
    for i in labels:
        if np.sum(fixed == i) == 0 or np.sum(moving == i) == 0:
            per.append(math.nan)
        else:
            per.append(ref_robust_hd(fixed == i, warped == i))
    return np.nanmean(per), per


def ref_jacdet(disp):
    """Loop over the cropped voxels: J[c, a] = delta + (u_c(x + e_a) - u_c(x - e_a)) / 2, det by LU."""
    d, h, w = disp.shape[:3]
    out = np.zeros((d - 4, h - 4, w - 4))
    for i, j, k in np.ndindex(*out.shape):
        x = np.array([i + 2, j + 2, k + 2])
        jac = np.eye(3)
        for a in range(3):
            e = np.eye(3, dtype=int)[a]
            jac[:, a] += (disp[tuple(x + e)] - disp[tuple(x - e)]) / 2
        out[i, j, k] = np.linalg.det(jac)
    return out


def ref_sdlogj(disp, mask=None):
    log_j = np.log(np.clip(ref_jacdet(disp) + 3, 1e-9, 1e9))
    if mask is None:
        return log_j.std()
    kept = log_j[mask[2:-2, 2:-2, 2:-2] == 1]
    return np.sqrt(np.mean((kept - kept.mean()) ** 2))


def ref_tre(fixed_points, moving_points, disp, spacing_mov):
    out = []
    for p, q in zip(fixed_points, moving_points):
        u = [ndimage.map_coordinates(disp[..., c], p[:, None], order=3)[0] for c in range(3)]
        r = [(p[c] + u[c] - q[c]) * np.float32(spacing_mov[c]) for c in range(3)]
        out.append(math.sqrt(sum(v * v for v in r)))
    return np.array(out)


# ------------------------------------------------------------------------------ tests


def test_surfel_area_table_matches_class_areas_and_official_normals():
    table = l2r.surfel_area_table()
    assert table.shape == (256,)
    expected = np.array([CLASS_AREA[class_of(c)] for c in range(256)])
    np.testing.assert_allclose(table, expected, rtol=1e-14, atol=0)
    # a few entries of DeepMind's _NEIGHBOUR_CODE_TO_NORMALS: area = sum of the normals' lengths
    official_normals = {
        1: [[0.125, 0.125, 0.125]],
        3: [[-0.25, -0.25, 0.0], [0.25, 0.25, -0.0]],
        7: [[0.5, 0.0, -0.0], [0.25, 0.25, 0.25], [0.125, 0.125, 0.125]],
        15: [[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]],
        27: [[0.125, 0.125, 0.125], [0.375, 0.375, 0.375], [0.0, -0.25, 0.25], [-0.25, 0.0, 0.25]],
    }
    for code, normals in official_normals.items():
        assert table[code] == pytest.approx(sum(np.linalg.norm(n) for n in normals), rel=1e-15)


def test_warp_labels_matches_official_and_hand_shift():
    rng = np.random.default_rng(0)
    moving = blobs(rng, (9, 10, 11), 4)
    disp = smooth_field(rng, (9, 10, 11), 3.0)
    np.testing.assert_array_equal(l2r.warp_labels(moving, disp), ref_warp(moving.astype(float), disp))
    shift = np.zeros((9, 10, 11, 3))
    shift[..., 0] = 1.0  # pull from the next slice; the last slice samples outside -> 0
    warped = l2r.warp_labels(moving, shift)
    np.testing.assert_array_equal(warped[:-1], moving[1:])
    assert (warped[-1] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_hd95_match_reference_on_random_pairs(seed):
    rng = np.random.default_rng(seed)
    shape = (10, 9, 11)
    fixed, moving = blobs(rng, shape, 4), blobs(rng, shape, 4)
    moving[moving == 3] = 0  # label 3 absent from moving -> NaN
    fixed[fixed == 2] = 0  # label 2 absent from fixed -> NaN
    warped = l2r.warp_labels(moving, smooth_field(rng, shape, 2.0))
    labels = [1, 2, 3, 4, 7]  # 7 absent everywhere
    mean, per = l2r.dice(fixed, moving, warped, labels)
    ref_mean, ref_per = ref_dice(fixed, moving, warped, labels)
    np.testing.assert_allclose(per, ref_per, rtol=1e-15)
    assert np.isnan(per[1]) and np.isnan(per[2]) and np.isnan(per[4])
    assert mean == pytest.approx(ref_mean, rel=1e-15)
    mean, per = l2r.hd95(fixed, moving, warped, labels)
    ref_mean, ref_per = ref_hd95(fixed, moving, warped, labels)
    np.testing.assert_array_equal(per, ref_per)
    assert mean == ref_mean


def test_hd95_matches_bruteforce_on_noisy_masks():
    rng = np.random.default_rng(5)
    for trial in range(12):
        shape = tuple(int(v) for v in rng.integers(2, 8, size=3))
        a = rng.uniform(size=shape) > rng.uniform(0.2, 0.9)
        b = rng.uniform(size=shape) > rng.uniform(0.2, 0.9)
        a.flat[0] = True
        fixed, warped = a.astype(int), b.astype(int)
        got = l2r.hd95(fixed, fixed, warped, [1])[1][0]
        assert got == ref_robust_hd(a, b), (trial, shape)


def test_hd95_hand_cases():
    fixed = np.zeros((8, 8, 8), int)
    fixed[2, 3, 3] = 1
    warped = np.zeros_like(fixed)
    warped[5, 3, 3] = 1  # 3 voxels away: 8 equal corner surfels at distance 2 or 3
    assert l2r.hd95(fixed, fixed, warped, [1]) == (3.0, [3.0])
    assert l2r.hd95(fixed, fixed, fixed, [1]) == (0.0, [0.0])
    # warped label empty although present in moving -> inf, and the mean is inf too
    mean, per = l2r.hd95(fixed, fixed, np.zeros_like(fixed), [1])
    assert per == [math.inf] and mean == math.inf
    # absent in fixed or moving -> NaN; all NaN -> NaN mean
    mean, per = l2r.hd95(fixed, np.zeros_like(fixed), fixed, [1])
    assert np.isnan(per[0]) and np.isnan(mean)
    mean, per = l2r.dice(fixed, fixed, np.zeros_like(fixed), [1])
    assert per == [0.0] and mean == 0.0


def test_percentile_is_first_index_reaching_it():
    # searchsorted(cumulative_area, 0.95) with its default side: cumulative 19/20 == 0.95 picks
    # the 19th distance, not the 20th
    distances, areas = np.arange(1.0, 21.0), np.ones(20)
    assert l2r._surface._robust_distance(distances, areas, 95.0) == 19.0
    assert l2r._surface._robust_distance(distances[::-1].copy(), areas, 95.0) == 19.0  # sorted first
    assert l2r._surface._robust_distance(np.array([]), np.array([]), 95.0) == math.inf
    empty = np.zeros((3, 3, 3), bool)
    assert l2r._surface.directed_percentile_hd(empty, empty, 95.0) == math.inf  # DeepMind: no surfels on either side


def test_hd95_uses_unit_spacing_and_surfel_areas():
    # a 3x3x3 cube against the same cube grown by one voxel on one face: the percentile
    # depends on the surfel areas, not on counts
    fixed = np.zeros((9, 9, 9), int)
    fixed[3:6, 3:6, 3:6] = 1
    warped = np.zeros_like(fixed)
    warped[3:7, 3:6, 3:6] = 1
    got = l2r.hd95(fixed, fixed, warped, [1])[1][0]
    assert got == ref_robust_hd(fixed == 1, warped == 1) == 1.0


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdlogj_matches_reference(with_mask):
    rng = np.random.default_rng(1)
    disp = smooth_field(rng, (9, 8, 10), 4.0, sigma=1.0)  # strong enough to fold
    assert (l2r.jacobian_determinant(disp) <= 0).any()
    np.testing.assert_allclose(l2r.jacobian_determinant(disp), ref_jacdet(disp), rtol=1e-12, atol=1e-12)
    mask = (rng.uniform(size=disp.shape[:3]) > 0.4).astype(float) if with_mask else None
    assert l2r.log_jac_det_std(disp, mask=mask) == pytest.approx(ref_sdlogj(disp, mask), rel=1e-12)
    assert l2r.num_foldings(disp) == 0.0  # official count is taken after +3 and the clip


def test_sdlogj_closed_forms():
    zero = np.zeros((7, 8, 9, 3))
    np.testing.assert_array_equal(l2r.jacobian_determinant(zero), np.ones((3, 4, 5)))
    assert abs(l2r.log_jac_det_std(zero)) < 1e-14  # every voxel is log(1 + 3) = log 4
    # linear fields: central differences are exact, det J = det(I + A) inside the crop
    a = np.array([[0.2, 0.1, 0.0], [0.0, -0.3, 0.05], [0.1, 0.0, 0.4]])
    j = l2r.jacobian_determinant(linear_field((7, 8, 9), a))
    np.testing.assert_allclose(j, np.linalg.det(np.eye(3) + a), rtol=1e-12)
    # folding: det = -1 -> log(2); det = -4 -> clip(-1) = 1e-9
    fold = linear_field((7, 7, 7), np.diag([-2.0, 0.0, 0.0]))
    np.testing.assert_allclose(l2r.jacobian_determinant(fold), -1.0)
    assert l2r.num_foldings(fold) == 0.0
    half = np.concatenate([linear_field((7, 7, 7), np.diag([-5.0, 0, 0])), zero[:7, :7, :7]], axis=1)
    log_j = np.log(np.clip(ref_jacdet(half) + 3, 1e-9, 1e9))
    assert log_j.min() == pytest.approx(math.log(1e-9))
    assert l2r.log_jac_det_std(half) == pytest.approx(log_j.std(), rel=1e-12)


def test_sdlogj_mask_keeps_only_ones():
    rng = np.random.default_rng(2)
    disp = smooth_field(rng, (8, 8, 8), 1.0)
    mask = np.ones((8, 8, 8))
    assert l2r.log_jac_det_std(disp, mask=mask) == pytest.approx(l2r.log_jac_det_std(disp), rel=1e-13)
    mask[:, :4] = 0
    log_j = np.log(np.clip(ref_jacdet(disp) + 3, 1e-9, 1e9))[:, 2:]  # x1 = 4, 5 kept
    assert l2r.log_jac_det_std(disp, mask=mask) == pytest.approx(log_j.std(), rel=1e-12)
    assert l2r.log_jac_det_std(disp, mask=mask.astype(bool)) == l2r.log_jac_det_std(disp, mask=mask)
    assert math.isnan(l2r.log_jac_det_std(disp, mask=np.zeros((8, 8, 8))))
    mask[:, :4] = 2  # official MaskedArray(log_j, 1 - mask): any value other than 1 is masked out
    assert l2r.log_jac_det_std(disp, mask=mask) == pytest.approx(log_j.std(), rel=1e-12)


def test_tre_matches_reference_and_uses_cubic_interpolation():
    rng = np.random.default_rng(3)
    shape = (10, 12, 11)
    disp = smooth_field(rng, shape, 3.0)
    fp = rng.uniform(1, np.array(shape) - 2, size=(15, 3))
    mp = fp + rng.normal(size=(15, 3))
    spacing = (0.7, 1.5, 2.0)
    mean, per = l2r.tre(fp, mp, disp, moving_spacing=spacing)
    np.testing.assert_allclose(per, ref_tre(fp, mp, disp, spacing), rtol=1e-13)
    assert mean == pytest.approx(per.mean(), rel=1e-15)
    # a trilinear version gives different values at off-grid points
    lin = np.stack([ndimage.map_coordinates(disp[..., c], fp.T, order=1) for c in range(3)], axis=1)
    lin_tre = np.linalg.norm((fp + lin - mp) * np.float32(spacing), axis=1)
    assert np.abs(lin_tre - per).max() > 1e-3


def test_tre_zero_field_by_hand():
    disp = np.zeros((6, 6, 6, 3))
    fp = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    mp = np.array([[2.0, 4.0, 3.0], [2.0, 2.0, 2.0]])
    # (fixed - moving) * moving spacing = (-1 * 2, -2 * 0.5, 0) -> sqrt(5); second pair 0
    mean, per = l2r.tre(fp, mp, disp, moving_spacing=(2.0, 0.5, 1.0))
    np.testing.assert_allclose(per, [math.sqrt(5.0), 0.0], rtol=1e-15)
    assert mean == pytest.approx(math.sqrt(5.0) / 2)


def test_upsample_disp_matches_2021_evaluator():
    rng = np.random.default_rng(4)
    half = rng.normal(size=(4, 5, 6, 3)).astype(np.float16)
    # 2021: np.load(...)['arr_0'].astype('float32'); np.array([zoom(d[i], 2, order=2) for i in range(3)])
    cf = np.moveaxis(half, -1, 0).astype("float32")
    expected = np.moveaxis(np.array([ndimage.zoom(cf[i], 2, order=2) for i in range(3)]), 0, -1)
    got = l2r.upsample_disp(half)
    assert got.shape == (8, 10, 12, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    const = np.full((3, 4, 5, 3), 1.25)
    np.testing.assert_allclose(l2r.upsample_disp(const), 1.25, rtol=1e-6)  # vectors are not rescaled


def test_evaluate_pair_and_aggregate():
    rng = np.random.default_rng(6)
    shape = (9, 9, 9)
    disp = smooth_field(rng, shape, 2.0)
    fixed, moving = blobs(rng, shape, 3), blobs(rng, shape, 3)
    fp = rng.uniform(1, 7, size=(5, 3))
    mp = fp + 1.0
    res = l2r.evaluate_pair(
        disp, fixed_labels=fixed, moving_labels=moving, labels=[1, 2, 3],
        fixed_points=fp, moving_points=mp, moving_spacing=(1.0, 1.0, 1.0),
    )
    assert set(res) == {"LogJacDetStd", "num_foldings", "DSC", "HD95", "TRE"}
    warped = ref_warp(moving.astype(float), disp)
    assert res["DSC"]["detailed"] == pytest.approx(ref_dice(fixed, moving, warped, [1, 2, 3])[1], nan_ok=True)
    assert res["HD95"]["mean"] == ref_hd95(fixed, moving, warped, [1, 2, 3])[0]
    assert res["TRE"]["detailed"] == pytest.approx(list(ref_tre(fp, mp, disp, (1, 1, 1))), rel=1e-13)
    assert res["LogJacDetStd"]["mean"] == pytest.approx(ref_sdlogj(disp), rel=1e-12)
    only_jac = l2r.evaluate_pair(disp)
    assert set(only_jac) == {"LogJacDetStd", "num_foldings"}
    values = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    agg = l2r.aggregate(values, metric="tre")
    assert agg["mean"] == pytest.approx(0.42) and agg["std"] == pytest.approx(values.std())
    assert agg["30"] == pytest.approx(0.48)  # 70th percentile (linear) for tre / sdlogj
    assert l2r.aggregate(values, metric="dice")["30"] == pytest.approx(0.24)  # 30th for dice / hd95


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: l2r.dice(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), [1]), "fixed_labels"),
        (lambda: l2r.dice(np.full((3, 3, 3), 0.5), np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), [1]), "fixed_labels"),
        (lambda: l2r.hd95(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), [1]), "warped_labels"),
        (lambda: l2r.dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), [1.5]), "labels"),
        (lambda: l2r.warp_labels(np.zeros((3, 3, 3)), np.zeros((3, 3, 3, 2))), "disp"),
        (lambda: l2r.log_jac_det_std(np.full((6, 6, 6, 3), np.nan)), "disp"),
        (lambda: l2r.jacobian_determinant(np.zeros((4, 6, 6, 3))), "disp"),
        (lambda: l2r.log_jac_det_std(np.zeros((6, 6, 6, 3)), mask=np.ones((6, 6, 5))), "mask"),
        (lambda: l2r.tre(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((4, 4, 4, 3)), moving_spacing=(1, 1, 1)),
         "moving_points"),
        (lambda: l2r.tre(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((4, 4, 4, 3)), moving_spacing=(1, 1, 1)),
         "fixed_points"),
        (lambda: l2r.tre(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((4, 4, 4, 3)), moving_spacing=(1, 0, 1)),
         "moving_spacing"),
        (lambda: l2r.upsample_disp(np.zeros((4, 4, 3))), "disp"),
        (lambda: l2r.aggregate([1.0], metric="ncc"), "metric"),
        (lambda: l2r.evaluate_pair(np.zeros((6, 6, 6, 3)), fixed_labels=np.zeros((6, 6, 6))), "labels"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`?{name}`?"):
        call()
