"""Tests of jaxreg.metrics against independent references.

References: numpy counts, brute-force surface extraction and pairwise distances, hand
computations, and ``np.gradient`` + ``np.linalg.det``. The code is never compared with
itself.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import metrics

jax.config.update("jax_enable_x64", False)


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


def grid(shape):
    return np.stack(np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape),
                                indexing="ij"), -1)


# ============================================================================ references
def ref_dice(a, b, labels):
    out = []
    for lab in labels:
        na = int(np.count_nonzero(a == lab))
        nb = int(np.count_nonzero(b == lab))
        both = int(np.count_nonzero((a == lab) & (b == lab)))
        out.append(np.nan if na + nb == 0 else 2.0 * both / (na + nb))
    return np.array(out)


def surface_points(mask):
    """Voxels of ``mask`` with a face neighbour outside the mask or outside the image."""
    pts = []
    shape = mask.shape
    for idx in itertools.product(*(range(s) for s in shape)):
        if not mask[idx]:
            continue
        on_surface = False
        for ax in range(mask.ndim):
            for step in (-1, 1):
                nb = list(idx)
                nb[ax] += step
                if nb[ax] < 0 or nb[ax] >= shape[ax] or not mask[tuple(nb)]:
                    on_surface = True
        if on_surface:
            pts.append(idx)
    return np.array(pts, np.float64)


def ref_hd95(a, b, labels, spacing):
    spacing = np.asarray(spacing, np.float64)
    out = []
    for lab in labels:
        ma, mb = a == lab, b == lab
        if not ma.any() and not mb.any():
            out.append(np.nan)
            continue
        if not ma.any() or not mb.any():
            out.append(np.inf)
            continue
        pa = surface_points(ma) * spacing
        pb = surface_points(mb) * spacing
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        out.append(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))
    return np.array(out)


def ref_jacdet(u):
    """det(I + ∇u) with np.gradient (central inside, one-sided at the border)."""
    u = np.asarray(u, np.float64)
    nd = u.shape[-1]
    jac = np.empty(u.shape[:-1] + (nd, nd))
    for c in range(nd):
        for a in range(nd):
            jac[..., c, a] = np.gradient(u[..., c], axis=a) + (1.0 if a == c else 0.0)
    return np.linalg.det(jac)


def blobs(shape, centres_radii):
    """Integer label map of balls ``(label, centre, radius)``; later ones overwrite."""
    x = grid(shape)
    lab = np.zeros(shape, np.int32)
    for label, centre, radius in centres_radii:
        lab[np.sum((x - np.asarray(centre)) ** 2, -1) <= radius**2] = label
    return lab


def folded_field(shape, lo, hi, m):
    """Zero displacement outside the block [lo, hi)^ndim; inside it axis 0 is mirrored
    about m: x0 + u0 = 2m − x0."""
    nd = len(shape)
    x = grid(shape)
    u = np.zeros((*shape, nd))
    block = np.all((x >= lo) & (x < hi), -1)
    u[..., 0] = np.where(block, 2 * m - 2 * x[..., 0], 0.0)
    return u.astype(np.float32), block


# ============================================================================ dice
@pytest.mark.parametrize("shape", [(12, 13), (7, 8, 9)])
def test_dice_per_label_vs_numpy_count(rng, shape):
    a = rng.integers(0, 4, size=shape).astype(np.int32)
    b = np.where(rng.random(shape) < 0.7, a, rng.integers(0, 4, size=shape)).astype(np.int32)
    labels = (1, 2, 3, 0, 7)  # 7 is absent from both → NaN; 0 can be scored explicitly
    got = np.asarray(metrics.dice(a, b, labels=labels))
    assert got.dtype == np.float32 and got.shape == (5,)
    np.testing.assert_allclose(got, ref_dice(a, b, labels), rtol=1e-6)
    assert np.isnan(got[-1])


def test_dice_by_hand():
    a = np.array([[1, 1, 0], [2, 2, 2]])
    b = np.array([[1, 0, 0], [2, 2, 1]])
    # label 1: |A|=2, |B|=2, overlap 1 → 0.5; label 2: |A|=3, |B|=2, overlap 2 → 0.8
    np.testing.assert_allclose(np.asarray(metrics.dice(a, b, labels=[1, 2])), [0.5, 0.8], rtol=1e-6)


def test_dice_labels_none_picks_present_nonzero(rng):
    a = np.zeros((6, 7), np.int16)
    b = np.zeros((6, 7), np.int16)
    a[1:3, 1:4] = 5
    b[2:4, 1:4] = 5
    a[4:, :2] = 2
    b[0, 6] = 9  # only in b
    got = np.asarray(metrics.dice(a, b))
    np.testing.assert_allclose(got, ref_dice(a, b, [2, 5, 9]), rtol=1e-6)
    assert got[2] == 0.0  # present in one map only: Dice 0, not NaN
    # bool maps work too (True is label 1).
    np.testing.assert_allclose(np.asarray(metrics.dice(a == 5, b == 5)),
                               ref_dice(a == 5, b == 5, [1]), rtol=1e-6)


def test_dice_float_labels_raise():
    with pytest.raises(ValueError, match="`a`"):
        metrics.dice(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="`b`"):
        metrics.dice(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.float64), labels=[1])
    with pytest.raises(ValueError, match="`a`"):
        metrics.dice(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), labels=[1])


def test_dice_under_jit_needs_labels(rng):
    a = rng.integers(0, 3, size=(6, 6)).astype(np.int32)
    with pytest.raises(ValueError, match="labels"):
        jax.jit(metrics.dice)(a, a)


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 5)])
def test_dice_jit_vmap(rng, shape):
    a = rng.integers(0, 4, size=(2, *shape)).astype(np.int32)
    b = np.where(rng.random((2, *shape)) < 0.6, a, rng.integers(0, 4, size=(2, *shape)))
    b = b.astype(np.int32)
    labels = (1, 2, 3, 6)
    fn = jax.jit(lambda x, y: metrics.dice(x, y, labels=labels))
    np.testing.assert_allclose(np.asarray(fn(a[0], b[0])), ref_dice(a[0], b[0], labels), rtol=1e-6)
    batched = np.asarray(jax.jit(jax.vmap(lambda x, y: metrics.dice(x, y, labels=labels)))(a, b))
    assert batched.shape == (2, 4)
    np.testing.assert_allclose(batched, np.stack([ref_dice(a[i], b[i], labels) for i in range(2)]),
                               rtol=1e-6)


# ============================================================================ hd95
@pytest.mark.parametrize(
    "shape,spacing",
    [((14, 13), (1.0, 1.0)), ((14, 13), (0.7, 2.5)), ((9, 10, 8), (1.2, 0.8, 2.0))],
)
def test_hd95_vs_bruteforce(shape, spacing):
    c = np.array(shape) / 2.0
    a = blobs(shape, [(1, c - 1, 3.2), (2, c + 2.5, 2.1)])
    b = blobs(shape, [(1, c + 0.5, 2.6), (2, c + [1.0] * len(shape), 3.0)])
    b[(0,) * len(shape)] = 1  # a far-away stray voxel of label 1 in b
    labels = [1, 2]
    got = metrics.hd95(a, b, spacing=spacing, labels=labels)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref_hd95(a, b, labels, spacing), rtol=1e-9, atol=1e-9)


def test_hd95_random_maps_and_default_labels(rng):
    a = rng.integers(0, 3, size=(8, 9)).astype(np.int32)
    b = rng.integers(0, 3, size=(8, 9)).astype(np.int32)
    spacing = (1.5, 0.5)
    got = metrics.hd95(a, b, spacing=spacing)  # labels None → 1, 2
    np.testing.assert_allclose(got, ref_hd95(a, b, [1, 2], spacing), rtol=1e-9)
    # Default spacing is 1 mm.
    np.testing.assert_allclose(metrics.hd95(a, b), ref_hd95(a, b, [1, 2], (1, 1)), rtol=1e-9)


def test_hd95_by_hand():
    # Two single-voxel labels 3 voxels apart along axis 1 with spacing 2 mm: 6 mm.
    a = np.zeros((5, 6), np.int32)
    b = np.zeros((5, 6), np.int32)
    a[2, 1] = 1
    b[2, 4] = 1
    np.testing.assert_allclose(metrics.hd95(a, b, spacing=(1.0, 2.0)), [6.0])
    # Identical maps: 0.
    np.testing.assert_allclose(metrics.hd95(a, a, spacing=(1.0, 2.0)), [0.0])


def test_hd95_nan_and_inf():
    a = np.zeros((6, 6), np.int32)
    b = np.zeros((6, 6), np.int32)
    a[1:3, 1:3] = 1
    b[1:3, 2:4] = 1
    a[4, 4] = 3  # label 3 only in a
    b[0, 5] = 4  # label 4 only in b
    got = metrics.hd95(a, b, labels=[1, 3, 4, 5])
    assert np.isfinite(got[0])
    assert np.isposinf(got[1]) and np.isposinf(got[2])
    assert np.isnan(got[3])


def test_hd95_bad_inputs():
    with pytest.raises(ValueError, match="`a`"):
        metrics.hd95(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="`a`"):
        metrics.hd95(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), spacing=(1.0, 1.0, 1.0))


# ============================================================================ tre
def test_tre_constant_translation_by_hand():
    shape = (7, 8, 9)
    t = np.array([1.0, -2.0, 0.5])
    ddf = np.broadcast_to(t, (*shape, 3)).astype(np.float32)
    fixed = np.array([[1.0, 2.0, 3.0], [4.5, 0.25, 7.75], [0.0, 7.0, 8.0]], np.float32)
    moving = np.array([[2.0, 0.0, 3.5], [5.5, -1.75, 8.25], [0.0, 0.0, 0.0]], np.float32)
    spacing = (2.0, 0.5, 3.0)
    # Points 0 and 1 land exactly on their targets; point 2 lands at (1, 5, 8.5).
    expected = [0.0, 0.0, np.sqrt((1 * 2.0) ** 2 + (5 * 0.5) ** 2 + (8.5 * 3.0) ** 2)]
    got = np.asarray(metrics.tre(fixed, moving, ddf, spacing=spacing))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Default spacing: voxels.
    got1 = np.asarray(metrics.tre(fixed, moving, ddf))
    np.testing.assert_allclose(got1[2], np.sqrt(1 + 25 + 8.5**2), rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_tre_linear_field_off_grid(rng, ndim):
    shape = {2: (9, 11), 3: (7, 8, 9)}[ndim]
    A = 0.1 * rng.normal(size=(ndim, ndim))
    b = rng.normal(size=ndim)
    ddf = (grid(shape) @ A.T + b).astype(np.float32)
    # Off-grid points strictly inside the grid: linear interpolation of a linear field is
    # exact there.
    fixed = rng.uniform(0.2, np.array(shape) - 1.2, size=(6, ndim))
    moving = rng.uniform(0, np.array(shape) - 1, size=(6, ndim))
    spacing = rng.uniform(0.5, 3.0, size=ndim)
    moved = fixed + fixed @ A.T + b
    expected = np.sqrt((((moved - moving) * spacing) ** 2).sum(-1))
    got = np.asarray(metrics.tre(fixed.astype(np.float32), moving.astype(np.float32), ddf,
                                 spacing=tuple(spacing)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # jit and vmap over a batch of two fields.
    ddf2 = np.stack([ddf, -ddf])
    moved2 = fixed - (fixed @ A.T + b)
    expected2 = np.sqrt((((moved2 - moving) * spacing) ** 2).sum(-1))
    fn = jax.jit(jax.vmap(lambda u: metrics.tre(fixed.astype(np.float32),
                                                moving.astype(np.float32), u,
                                                spacing=tuple(spacing))))
    np.testing.assert_allclose(np.asarray(fn(ddf2)), np.stack([expected, expected2]),
                               rtol=1e-4, atol=1e-4)


def test_tre_bad_inputs():
    ddf = np.zeros((5, 5, 2), np.float32)
    p = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="ddf"):
        metrics.tre(p, p, np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="fixed_points"):
        metrics.tre(p, np.zeros((4, 2), np.float32), ddf)
    with pytest.raises(ValueError, match="spacing"):
        metrics.tre(p, p, ddf, spacing=(1.0, 1.0, 1.0))


# ============================================================================ jacobian
def _affine(rng, ndim, negative=False):
    A = np.eye(ndim) + 0.3 * rng.normal(size=(ndim, ndim))
    if negative:
        A[0] *= -1
    if (np.linalg.det(A) > 0) == negative:
        A[[0, 1]] = A[[1, 0]]
    return A


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("negative", [False, True])
def test_jacobian_affine_exact_everywhere(rng, ndim, negative):
    shape = {2: (9, 7), 3: (6, 7, 5)}[ndim]
    A = _affine(rng, ndim, negative)
    b = rng.normal(size=ndim)
    u = (grid(shape) @ (A - np.eye(ndim)).T + b).astype(np.float32)  # x + u = A x + b
    det = np.asarray(metrics.jacobian_determinant(u))
    assert det.shape == shape
    np.testing.assert_allclose(det, np.full(shape, np.linalg.det(A)), rtol=1e-4, atol=1e-5)
    assert (np.linalg.det(A) < 0) == negative


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_random_field_vs_np_gradient(rng, ndim):
    shape = {2: (10, 9), 3: (7, 6, 8)}[ndim]
    u = (0.4 * rng.normal(size=(*shape, ndim))).astype(np.float32)
    np.testing.assert_allclose(np.asarray(metrics.jacobian_determinant(u)), ref_jacdet(u),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_folding_fraction_known_block(ndim):
    shape = {2: (16, 16), 3: (10, 10, 10)}[ndim]
    lo, hi = 3, {2: 11, 3: 8}[ndim]
    u, block = folded_field(shape, lo, hi, m=(lo + hi - 1) / 2 + 0.3)
    ref = ref_jacdet(u)
    assert np.abs(ref).min() > 1e-3  # no determinant sits on the 0 threshold
    inner = np.zeros(shape, bool)
    inner[tuple(slice(lo + 1, hi - 1) for _ in shape)] = True
    assert np.all(ref[inner] < 0)  # the mirrored block folds
    expected = np.mean(ref <= 0)
    assert 0 < expected < 1
    got = float(metrics.folding_fraction(u))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # With a mask: only the first half along axis 1 counts.
    mask = np.zeros(shape, np.float32)
    mask[:, : shape[1] // 2] = 1
    got_m = float(metrics.folding_fraction(u, mask=mask))
    np.testing.assert_allclose(got_m, np.sum((ref <= 0) & (mask > 0)) / mask.sum(), rtol=1e-6)
    assert abs(got_m - expected) > 1e-3


def test_folding_fraction_exact_zero_det_counts():
    # Collapse axis 0 entirely: x0 + u0 = 0 → det = 0 everywhere → all "folded".
    shape = (6, 5)
    u = np.zeros((*shape, 2), np.float32)
    u[..., 0] = -grid(shape)[..., 0]
    assert float(metrics.folding_fraction(u)) == 1.0
    assert float(metrics.folding_fraction(np.zeros((*shape, 2), np.float32))) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_sdlogj_affine_zero_and_random(rng, ndim):
    shape = {2: (10, 9), 3: (7, 6, 8)}[ndim]
    A = _affine(rng, ndim)
    u = (grid(shape) @ (A - np.eye(ndim)).T + 1.5).astype(np.float32)
    assert abs(float(metrics.sdlogj(u))) < 1e-5
    v = (0.15 * rng.normal(size=(*shape, ndim))).astype(np.float32)
    det = ref_jacdet(v)
    assert det.min() > 0.05
    np.testing.assert_allclose(float(metrics.sdlogj(v)), np.std(np.log(det)), rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_sdlogj_clips_folded_voxels(ndim):
    shape = {2: (16, 16), 3: (10, 10, 10)}[ndim]
    u, _ = folded_field(shape, 3, 8, m=4.3)
    ref = ref_jacdet(u)
    assert (ref <= 0).any()
    for clip in (1e-9, 1e-3):
        expected = np.std(np.log(np.clip(ref, clip, None)))
        np.testing.assert_allclose(float(metrics.sdlogj(u, clip=clip)), expected, rtol=1e-4)


def test_jacobian_bad_inputs():
    with pytest.raises(ValueError, match="ddf"):
        metrics.jacobian_determinant(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="ddf"):
        metrics.jacobian_determinant(np.zeros((5, 5, 5, 2), np.float32))
    with pytest.raises(ValueError, match="ddf"):
        metrics.sdlogj(np.zeros((5, 5, 2), np.int32))
    with pytest.raises(ValueError, match="mask"):
        metrics.folding_fraction(np.zeros((5, 5, 2), np.float32), mask=np.ones((5, 4)))


# ============================================================================ jit / vmap
@pytest.mark.parametrize("ndim", [2, 3])
def test_field_metrics_jit_vmap(rng, ndim):
    shape = {2: (10, 9), 3: (6, 7, 5)}[ndim]
    u = (0.6 * rng.normal(size=(2, *shape, ndim))).astype(np.float32)  # some folding
    dets = [ref_jacdet(u[i]) for i in range(2)]
    assert any((d <= 0).any() for d in dets)
    mask = (rng.random((2, *shape)) < 0.5).astype(np.float32)

    jd = jax.jit(jax.vmap(metrics.jacobian_determinant))(u)
    np.testing.assert_allclose(np.asarray(jd), np.stack(dets), rtol=1e-4, atol=1e-5)

    ff = jax.jit(jax.vmap(metrics.folding_fraction))(u)
    np.testing.assert_allclose(np.asarray(ff), [np.mean(d <= 0) for d in dets], rtol=1e-6)
    ffm = jax.jit(jax.vmap(lambda x, m: metrics.folding_fraction(x, mask=m)))(u, mask)
    np.testing.assert_allclose(
        np.asarray(ffm), [np.sum((d <= 0) * m) / m.sum() for d, m in zip(dets, mask)], rtol=1e-6)

    sd = jax.jit(jax.vmap(metrics.sdlogj))(u)
    np.testing.assert_allclose(
        np.asarray(sd), [np.std(np.log(np.clip(d, 1e-9, None))) for d in dets], rtol=1e-3)

    # Single-sample jit.
    np.testing.assert_allclose(np.asarray(jax.jit(metrics.jacobian_determinant)(u[0])), dets[0],
                               rtol=1e-4, atol=1e-5)
    # Gradient of a smooth Jacobian statistic exists (training regularisers use it).
    g = jax.grad(lambda x: jnp.mean(metrics.jacobian_determinant(x) ** 2))(jnp.asarray(u[0]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_jacobian_determinant_rejects_single_voxel_axis():
    with pytest.raises(ValueError, match=r"`ddf`.*>= 2.*\(1, 4, 2\)"):
        metrics.jacobian_determinant(jnp.zeros((1, 4, 2)))
