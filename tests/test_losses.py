"""Tests of jaxreg.losses against independent references.

References are numpy/scipy brute force (explicit loops over voxels and windows, float64),
scikit-image, or closed forms. The code under test is never compared with itself.
"""

from __future__ import annotations

import functools
import itertools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi

from jaxreg import losses

jax.config.update("jax_enable_x64", False)

SHAPES = {2: (12, 11), 3: (8, 7, 6)}


# Most checks call the losses through jax.jit: compiling the whole function once is much
# faster on CPU than eager op-by-op dispatch. Non-array keyword arguments are static.
@functools.cache
def _jitted(fn, static_items):
    static = dict(static_items)
    return jax.jit(lambda args, dyn: fn(*args, **static, **dyn))


def _jcall(fn, *args, **kw):
    static = {k: v for k, v in kw.items() if not isinstance(v, (np.ndarray, jax.Array))}
    dyn = {k: v for k, v in kw.items() if k not in static}
    return _jitted(fn, tuple(sorted(static.items())))(args, dyn)


J = types.SimpleNamespace(**{n: functools.partial(_jcall, getattr(losses, n)) for n in losses.__all__})


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def smooth_random(rng, shape, sigma=1.0):
    """A smooth-ish random image in roughly [0, 1] (float32)."""
    x = ndi.gaussian_filter(rng.random(shape), sigma)
    x = (x - x.min()) / (x.max() - x.min())
    return x.astype(np.float32)


# ============================================================================ references
def ref_lncc(f, w, window=5, eps=1e-5, mask=None):
    """Brute-force VoxelMorph LNCC: loop over voxels, gather each zero-padded window.

    ``window``: one side or one per axis; ``mask``: voxel weights of the mean (``None``: all 1).
    """
    f = np.asarray(f, np.float64)
    w = np.asarray(w, np.float64)
    windows = (window,) * f.ndim if np.isscalar(window) else tuple(window)
    pad = [(k // 2, k // 2) for k in windows]
    fp = np.pad(f, pad)  # zero padding
    wp = np.pad(w, pad)
    n = float(np.prod(windows))
    weights = np.ones(f.shape) if mask is None else np.asarray(mask, np.float64)
    total = weighted = 0.0
    for idx in itertools.product(*(range(s) for s in f.shape)):
        sl = tuple(slice(i, i + k) for i, k in zip(idx, windows))
        a, b = fp[sl], wp[sl]
        sa, sb = a.sum(), b.sum()
        cross = (a * b).sum() - sa * sb / n
        va = max((a * a).sum() - sa * sa / n, 0.0)
        vb = max((b * b).sum() - sb * sb / n, 0.0)
        weighted += weights[idx] * cross * cross / (va * vb + eps)
        total += weights[idx]
    return 1.0 - weighted / max(total, 1.0)


def gaussian_kernel_np(window, sigma):
    r = np.arange(window) - (window - 1) / 2
    k = np.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def ref_ssim_map(f, w, data_range, window=9, sigma=1.5):
    """SSIM map with scipy.ndimage.correlate1d; scipy "mirror" == numpy "reflect"."""
    f = np.asarray(f, np.float64)
    w = np.asarray(w, np.float64)
    k = gaussian_kernel_np(window, sigma)

    def g(x):
        for ax in range(x.ndim):
            x = ndi.correlate1d(x, k, axis=ax, mode="mirror")
        return x

    mf, mw = g(f), g(w)
    vf = g(f * f) - mf * mf
    vw = g(w * w) - mw * mw
    cov = g(f * w) - mf * mw
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    return ((2 * mf * mw + c1) * (2 * cov + c2)) / ((mf**2 + mw**2 + c1) * (vf + vw + c2))


def ref_ssim(f, w, data_range=None, window=9, sigma=1.5):
    f = np.asarray(f, np.float64)
    if data_range is None:
        data_range = f.max() - f.min()
    return 1.0 - float(ref_ssim_map(f, w, data_range, window, sigma).mean())


def ref_mse(f, w):
    return float(np.mean((np.asarray(f, np.float64) - np.asarray(w, np.float64)) ** 2))


def parzen_weights_loop(x, bins, sigma):
    """Per-voxel normalised Parzen weights, explicit Python loops (float64)."""
    x = np.asarray(x, np.float64).ravel()
    lo, hi = x.min(), x.max()
    centres = [b / (bins - 1) for b in range(bins)]
    out = np.empty((x.size, bins))
    for v in range(x.size):
        s = (x[v] - lo) / max(hi - lo, 1e-12)
        ws = [math.exp(-0.5 * ((s - c) / sigma) ** 2) for c in centres]
        tot = sum(ws)
        out[v] = [wi / tot for wi in ws]
    return out


def ref_mi_loop(f, w, bins=32, sigma=None, mask=None):
    """Negative Parzen MI with an explicitly accumulated joint histogram."""
    sigma = 0.5 / (bins - 1) if sigma is None else sigma
    pf_w = parzen_weights_loop(f, bins, sigma)
    pw_w = parzen_weights_loop(w, bins, sigma)
    keep = np.ones(pf_w.shape[0], bool) if mask is None else (np.asarray(mask).ravel() != 0)
    joint = np.zeros((bins, bins))
    count = 0
    for v in range(pf_w.shape[0]):
        if keep[v]:
            joint += np.outer(pf_w[v], pw_w[v])
            count += 1
    joint /= count
    pf, pw = joint.sum(1), joint.sum(0)
    mi = 0.0
    for i in range(bins):
        for j in range(bins):
            if joint[i, j] > 0:
                mi += joint[i, j] * math.log(joint[i, j] / (pf[i] * pw[j]))
    return -mi


def ref_diffusion_loop(u):
    """(1/ndim) Σ_axes mean over voxels & components of squared forward differences."""
    u = np.asarray(u, np.float64)
    ndim = u.shape[-1]
    spatial = u.shape[:-1]
    total = 0.0
    for a in range(ndim):
        acc, cnt = 0.0, 0
        for idx in itertools.product(*(range(s) for s in spatial)):
            if idx[a] + 1 >= spatial[a]:
                continue
            nxt = list(idx)
            nxt[a] += 1
            d = u[tuple(nxt)] - u[idx]
            acc += float(np.sum(d * d))
            cnt += ndim
        total += acc / cnt
    return total / ndim


def ref_bending_loop(u):
    """Mean over interior voxels & components of Σ_{i,j} (∂i∂j u)² by explicit stencils."""
    u = np.asarray(u, np.float64)
    ndim = u.shape[-1]
    spatial = u.shape[:-1]
    acc, cnt = 0.0, 0
    for idx in itertools.product(*(range(1, s - 1) for s in spatial)):
        x = np.array(idx)

        def at(off):
            return u[tuple(x + off)]

        e = np.eye(ndim, dtype=int)
        for c in range(ndim):
            s = 0.0
            for i in range(ndim):
                for j in range(ndim):
                    if i == j:
                        d = at(e[i])[c] - 2 * at(0 * e[i])[c] + at(-e[i])[c]
                    else:
                        d = (at(e[i] + e[j])[c] - at(e[i] - e[j])[c] - at(-e[i] + e[j])[c]
                             + at(-e[i] - e[j])[c]) / 4.0
                    s += d * d
            acc += s
            cnt += 1
    return acc / cnt


def ref_diffusion_vec(u):
    u = np.asarray(u, np.float64)
    ndim = u.shape[-1]
    return sum(np.mean(np.diff(u, axis=a) ** 2) for a in range(ndim)) / ndim


def ref_bending_vec(u):
    """Vectorised float64 version of the same stencils (for finite differences)."""
    u = np.asarray(u, np.float64)
    ndim = u.shape[-1]
    n = u.shape[:-1]

    def sh(offs):
        return u[tuple(slice(1 + o, n[k] - 1 + o) for k, o in enumerate(offs))]

    total = 0.0
    for i in range(ndim):
        for j in range(ndim):
            if i == j:
                o = [0] * ndim
                p, m = list(o), list(o)
                p[i], m[i] = 1, -1
                d = sh(p) - 2 * sh(o) + sh(m)
            else:
                def off(si, sj):
                    o = [0] * ndim
                    o[i], o[j] = si, sj
                    return o
                d = (sh(off(1, 1)) - sh(off(1, -1)) - sh(off(-1, 1)) + sh(off(-1, -1))) / 4
            total += np.mean(d * d)
    return total


def ref_soft_dice(a, b, eps=1e-6):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ax = tuple(range(a.ndim - 1))
    return 1.0 - float(np.mean(2 * (a * b).sum(ax) / np.maximum((a + b).sum(ax), eps)))


def ref_mi_vec(f, w, bins=32, sigma=None):
    sigma = 0.5 / (bins - 1) if sigma is None else sigma
    c = np.linspace(0, 1, bins)

    def pz(x):
        x = np.asarray(x, np.float64).ravel()
        x = (x - x.min()) / (x.max() - x.min())
        ww = np.exp(-0.5 * ((x[:, None] - c) / sigma) ** 2)
        return ww / ww.sum(1, keepdims=True)

    joint = pz(f).T @ pz(w) / np.asarray(f).size
    pf, pw = joint.sum(1), joint.sum(0)
    nz = joint > 0
    return -float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pf, pw)[nz])))


# ============================================================================ lncc
@pytest.mark.parametrize("ndim,shape,window", [(2, (12, 11), 5), (2, (9, 10), 3),
                                               (3, (8, 7, 6), 5), (3, (6, 6, 6), 3)])
def test_lncc_matches_bruteforce(rng, ndim, shape, window):
    f = smooth_random(rng, shape)
    w = (0.5 * f + 0.5 * smooth_random(rng, shape)).astype(np.float32)
    got = float(J.lncc(f, w, window=window))
    np.testing.assert_allclose(got, ref_lncc(f, w, window), rtol=1e-4, atol=1e-5)


def test_lncc_eps_changes_result_as_reference(rng):
    f = smooth_random(rng, (8, 8, 8))
    w = smooth_random(rng, (8, 8, 8))
    got = float(J.lncc(f, w, eps=1.0))
    np.testing.assert_allclose(got, ref_lncc(f, w, 5, eps=1.0), rtol=1e-4, atol=1e-5)
    # eps large enough to matter: the result must differ from the default-eps one.
    assert abs(ref_lncc(f, w, 5, eps=1.0) - ref_lncc(f, w, 5)) > 1e-3


def test_lncc_multichannel_is_mean_over_channels(rng):
    shape = (7, 8, 6)
    f = np.stack([smooth_random(rng, shape) for _ in range(2)], -1)
    w = np.stack([smooth_random(rng, shape) for _ in range(2)], -1)
    expected = np.mean([ref_lncc(f[..., c], w[..., c]) for c in range(2)])
    np.testing.assert_allclose(float(J.lncc(f, w)), expected, rtol=1e-4, atol=1e-5)
    # 2-D with channels needs ndim=2.
    f2 = np.stack([smooth_random(rng, (10, 9)) for _ in range(3)], -1)
    w2 = np.stack([smooth_random(rng, (10, 9)) for _ in range(3)], -1)
    expected2 = np.mean([ref_lncc(f2[..., c], w2[..., c]) for c in range(3)])
    np.testing.assert_allclose(float(J.lncc(f2, w2, ndim=2)), expected2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "cf,cw,shape",
    [
        (0.0, 0.0, (8, 8)),
        (1.0, 1.0, (8, 8)),
        (0.7, 0.3, (6, 6, 6)),
        (0.5, 0.5, (8, 8, 8)),
        (100.0, 100.0, (8, 8)),
        (30.0, 30.0, (6, 6, 6)),
        (1000.0, 1000.0, (8, 8, 8)),
    ],
)
def test_lncc_constant_images_finite_in_unit_interval(cf, cw, shape):
    f = np.full(shape, cf, np.float32)
    w = np.full(shape, cw, np.float32)
    loss = float(J.lncc(f, w))
    assert np.isfinite(loss)
    assert 0.0 <= loss <= 1.0 + 1e-6
    np.testing.assert_allclose(loss, ref_lncc(f, w), atol=1e-4)


def test_lncc_ct_like_constant_background():
    """CT-like volume: air background at -1000 HU around a textured block."""
    rng = np.random.default_rng(0)
    f = np.full((16, 16, 16), -1000.0, np.float32)
    f[8:14, 4:12, 4:12] = rng.normal(40, 20, (6, 8, 8))
    w = f.copy()
    w[8:14, 4:12, 4:12] += rng.normal(0, 5, (6, 8, 8)).astype(np.float32)
    loss = float(J.lncc(f, w))
    assert 0.0 <= loss <= 1.0
    np.testing.assert_allclose(loss, ref_lncc(f, w), atol=1e-3)  # reference: 0.141


def test_lncc_bright_plateau_keeps_real_local_variance():
    """A textured plateau at 1000 beside zeros: real variance of ~4 must not be called round-off."""
    rng = np.random.default_rng(1)
    f = np.zeros((24, 24), np.float32)
    f[:, 12:] = 1000 + 2 * rng.normal(size=(24, 12))
    w = (f + 0.5 * rng.normal(size=f.shape)).astype(np.float32)
    # float32 cannot do better than ~2e-2 here (a plain float32 transcription is off by 0.016).
    np.testing.assert_allclose(float(J.lncc(f, w)), ref_lncc(f, w), atol=2.5e-2)


@pytest.mark.parametrize("shape", [(12, 12), (8, 8, 8)])
def test_lncc_identical_images_near_zero(rng, shape):
    x = rng.random(shape).astype(np.float32)  # windowed variance is far above eps
    assert float(J.lncc(x, x)) < 1e-4
    # A different image is clearly worse (the test can fail).
    assert float(J.lncc(x, rng.random(shape).astype(np.float32))) > 0.3


def test_lncc_high_intensity_offset_matches_reference(rng):
    """Intensities around 1000 (CT-like): float32 cancellation must stay small."""
    f = (1000 + 10 * rng.random((8, 8, 8))).astype(np.float32)
    w = (1000 + 10 * rng.random((8, 8, 8))).astype(np.float32)
    np.testing.assert_allclose(float(J.lncc(f, w)), ref_lncc(f, w), atol=2e-3)


@pytest.mark.parametrize("shape,window", [((12, 9), (5, 3)), ((8, 7, 6), (5, 3, 1)), ((7, 6, 5), (1, 3, 5))])
def test_lncc_per_axis_window_matches_bruteforce(rng, shape, window):
    f = smooth_random(rng, shape)
    w = (0.5 * f + 0.5 * smooth_random(rng, shape)).astype(np.float32)
    np.testing.assert_allclose(float(J.lncc(f, w, window=window)), ref_lncc(f, w, window), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 11), (8, 7, 6)])
def test_lncc_mask_is_the_weighted_mean_of_the_bruteforce_cc(rng, shape):
    f = smooth_random(rng, shape)
    w = (0.5 * f + 0.5 * smooth_random(rng, shape)).astype(np.float32)
    binary = rng.random(shape) > 0.5
    soft = rng.random(shape).astype(np.float32)
    for mask in (binary, soft):
        np.testing.assert_allclose(float(J.lncc(f, w, mask=mask)), ref_lncc(f, w, 5, mask=mask), rtol=1e-4, atol=1e-5)
    # An all-ones mask is no mask; a mask over half the image is not the plain mean.
    np.testing.assert_allclose(float(J.lncc(f, w, mask=np.ones(shape))), float(J.lncc(f, w)), atol=1e-6)
    assert abs(ref_lncc(f, w, 5, mask=binary) - ref_lncc(f, w, 5)) > 1e-4
    # The gradient flows through the masked loss.
    g = jax.grad(lambda x: J.lncc(f, x, mask=binary))(jnp.asarray(w))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_lncc_bad_inputs():
    with pytest.raises(ValueError, match="fixed"):
        losses.lncc(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="window"):
        losses.lncc(np.zeros((8, 8)), np.zeros((8, 8)), window=4)
    with pytest.raises(ValueError, match="one per spatial axis"):
        losses.lncc(np.zeros((8, 8)), np.zeros((8, 8)), window=(3, 3, 3))
    with pytest.raises(ValueError, match="window"):
        losses.lncc(np.zeros((8, 8)), np.zeros((8, 8)), window=(3, 2))
    with pytest.raises(ValueError, match="mask"):
        losses.lncc(np.zeros((8, 8)), np.zeros((8, 8)), mask=np.ones((8, 9)))


# ============================================================================ ssim
@pytest.mark.parametrize("shape", [(16, 15), (12, 11, 10)])
def test_ssim_matches_scipy_reference(rng, shape):
    f = smooth_random(rng, shape)
    w = (0.6 * f + 0.4 * rng.random(shape)).astype(np.float32)
    np.testing.assert_allclose(float(J.ssim(f, w)), ref_ssim(f, w), rtol=1e-4, atol=2e-6)


def test_ssim_explicit_data_range_and_window(rng):
    f = (2 * smooth_random(rng, (14, 13)) - 1).astype(np.float32)
    w = (2 * smooth_random(rng, (14, 13)) - 1).astype(np.float32)
    got = float(J.ssim(f, w, data_range=2.0, window=7, sigma=1.0))
    np.testing.assert_allclose(got, ref_ssim(f, w, 2.0, window=7, sigma=1.0), rtol=1e-4, atol=2e-6)
    # The range really enters the constants: another data_range gives another value.
    assert abs(ref_ssim(f, w, 2.0, 7, 1.0) - ref_ssim(f, w, 20.0, 7, 1.0)) > 1e-3


def test_ssim_multichannel_and_identity(rng):
    f = np.stack([smooth_random(rng, (12, 12)) for _ in range(2)], -1)
    w = np.stack([smooth_random(rng, (12, 12)) for _ in range(2)], -1)
    # data_range=None uses the range of the whole sample (all channels).
    L = float(f.max() - f.min())
    expected = np.mean([ref_ssim(f[..., c], w[..., c], L) for c in range(2)])
    np.testing.assert_allclose(float(J.ssim(f, w, ndim=2)), expected, rtol=1e-4, atol=2e-6)
    assert abs(float(J.ssim(f, f, ndim=2))) < 1e-5


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_ssim_cross_check_skimage_interior(rng, shape):
    """scikit-image's Gaussian SSIM (truncate 3.5 → 11 taps for σ=1.5, scipy "reflect"
    border = numpy "symmetric") equals ours with window=11 wherever the border plays no
    part (≥ 5 voxels inside). The border voxels are taken from the scipy reference."""
    from skimage.metrics import structural_similarity

    f = rng.random(shape)
    w = 0.6 * f + 0.4 * rng.random(shape)
    L = float(f.max() - f.min())
    mssim, smap = structural_similarity(
        f, w, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=L, full=True)
    inner = tuple(slice(5, -5) for _ in shape)
    ours_ref = ref_ssim_map(f, w, L, window=11, sigma=1.5)
    # The independent reference agrees with scikit-image in the interior...
    np.testing.assert_allclose(ours_ref[inner], smap[inner], atol=1e-10)
    np.testing.assert_allclose(ours_ref[inner].mean(), mssim, atol=1e-10)
    # ...and the borders really differ (different padding), so the crop is needed.
    assert np.abs(ours_ref - smap).max() > 1e-3
    combined = ours_ref.copy()
    combined[inner] = smap[inner]
    got = float(J.ssim(f.astype(np.float32), w.astype(np.float32), window=11, sigma=1.5))
    np.testing.assert_allclose(got, 1.0 - combined.mean(), rtol=1e-4, atol=2e-6)


def test_ssim_constant_images_are_finite():
    """data_range=None on a constant fixed image: L falls back to 1 instead of 0/0."""
    f = jnp.zeros((12, 12))
    loss, grad = jax.jit(jax.value_and_grad(lambda w: losses.ssim(f, w)))(jnp.zeros((12, 12)))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))
    w = jnp.full((12, 12), 0.5)
    # Closed form with L = 1: means 0 and 0.5, no variance: 1 - C1 / (0.25 + C1).
    c1 = 0.01**2
    assert float(jax.jit(losses.ssim)(f, w)) == pytest.approx(1 - c1 / (0.25 + c1), rel=1e-5)


def test_ssim_bad_inputs():
    with pytest.raises(ValueError, match="fixed"):
        losses.ssim(np.zeros((12, 12)), np.zeros((12, 13)))
    with pytest.raises(ValueError, match="window"):
        losses.ssim(np.zeros((12, 12)), np.zeros((12, 12)), window=8)
    with pytest.raises(ValueError, match="sigma"):
        losses.ssim(np.zeros((12, 12)), np.zeros((12, 12)), sigma=0.0)


# ============================================================================ mse
@pytest.mark.parametrize("shape", [(5,), (6, 7), (4, 5, 6), (4, 5, 6, 2)])
def test_mse_closed_form(rng, shape):
    f = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(float(J.mse(f, w)), ref_mse(f, w), rtol=1e-5)
    # By hand: a constant offset c gives c².
    assert abs(float(J.mse(f, f + np.float32(0.5))) - 0.25) < 1e-5


def test_mse_bad_shapes():
    with pytest.raises(ValueError, match="fixed"):
        losses.mse(np.zeros((4, 4)), np.zeros((4, 5)))


# ============================================================================ mutual information
@pytest.mark.parametrize("shape,bins", [((12, 11), 16), ((7, 6, 5), 8)])
def test_mi_matches_loop_reference(rng, shape, bins):
    f = smooth_random(rng, shape)
    w = (np.sqrt(f) + 0.2 * rng.random(shape)).astype(np.float32)
    np.testing.assert_allclose(float(J.mutual_information(f, w, bins=bins)),
                               ref_mi_loop(f, w, bins), rtol=1e-4, atol=1e-5)


def test_mi_custom_sigma_matches_loop_reference(rng):
    f = smooth_random(rng, (10, 10))
    w = (1 - f**2 + 0.1 * rng.random((10, 10))).astype(np.float32)
    got = float(J.mutual_information(f, w, bins=10, sigma=0.15))
    np.testing.assert_allclose(got, ref_mi_loop(f, w, 10, sigma=0.15), rtol=1e-4, atol=1e-5)


def test_mi_hard_binning_equals_entropy():
    """Values on the bin centres with a tiny σ: the Parzen histogram is exact and
    MI(x, x) is the Shannon entropy of the histogram of x."""
    bins = 8
    rng = np.random.default_rng(7)
    k = rng.integers(0, bins, size=(10, 10, 10))
    k.flat[0], k.flat[1] = 0, bins - 1  # make the range exactly [0, bins-1]
    x = (k / (bins - 1)).astype(np.float32)
    counts = np.bincount(k.ravel(), minlength=bins) / k.size
    entropy = -np.sum(counts[counts > 0] * np.log(counts[counts > 0]))
    got = -float(J.mutual_information(x, x, bins=bins, sigma=1e-3))
    np.testing.assert_allclose(got, entropy, rtol=1e-4)


def test_mi_self_is_bounded_by_marginal_entropy_and_beats_others(rng):
    bins = 16
    x = rng.random((16, 16, 8)).astype(np.float32)
    sigma = 0.5 / (bins - 1)
    p = parzen_weights_loop(x, bins, sigma).mean(0)
    h = -np.sum(p * np.log(p))
    mi_self = -float(J.mutual_information(x, x, bins=bins))
    mi_other = -float(J.mutual_information(x, rng.random(x.shape).astype(np.float32), bins=bins))
    assert mi_self <= h + 1e-4  # MI(x, x) <= H(Parzen marginal)
    assert mi_self > 0.3 * h
    assert mi_self > 20 * mi_other


def test_mi_independent_images_near_zero(rng):
    x = rng.random((32, 32, 32)).astype(np.float32)
    y = rng.random((32, 32, 32)).astype(np.float32)
    mi = -float(J.mutual_information(x, y, bins=16))
    assert -1e-6 <= mi < 5e-3


def test_mi_invariant_to_intensity_inversion(rng):
    f = smooth_random(rng, (16, 16))
    w = (f**2 + 0.1 * rng.random((16, 16))).astype(np.float32)
    a = float(J.mutual_information(f, w))
    b = float(J.mutual_information(f, (5.0 - 3.0 * w).astype(np.float32)))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert a < -0.3  # a clearly dependent pair


def test_mi_mask_restricts_voxels(rng):
    shape = (12, 12)
    f = smooth_random(rng, shape)
    w = (f**2 + 0.1 * rng.random(shape)).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:9, 3:11] = True
    # Put each image's global min and max inside the mask so that the min-max scaling
    # is the same whether or not the outside voxels are seen.
    for img in (f, w):
        img[3, 4], img[5, 6] = img.min() - 0.5, img.max() + 0.5
    # Scramble the outside voxels of w within its range: with a mask they must not count.
    w2 = w.copy()
    outside = ~mask
    w2[outside] = rng.permutation(w[outside])[::-1]
    got = float(J.mutual_information(f, w, mask=mask, bins=16))
    got2 = float(J.mutual_information(f, w2, mask=mask.astype(np.float32), bins=16))
    only = float(J.mutual_information(f[mask], w[mask], bins=16))
    np.testing.assert_allclose(got, only, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got2, only, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, ref_mi_loop(f, w, 16, mask=mask), rtol=1e-4, atol=1e-5)
    # Without the mask the result differs (the mask does something).
    assert abs(float(J.mutual_information(f, w2, bins=16)) - got) > 1e-3


def test_mi_bad_inputs():
    with pytest.raises(ValueError, match="fixed"):
        losses.mutual_information(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="bins"):
        losses.mutual_information(np.zeros((4, 4)), np.zeros((4, 4)), bins=1)
    with pytest.raises(ValueError, match="mask"):
        losses.mutual_information(np.zeros((4, 4)), np.zeros((4, 4)), mask=np.ones((4, 5)))


# ============================================================================ diffusion
def grid(shape):
    return np.stack(np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape),
                                indexing="ij"), -1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffusion_linear_field_closed_form(rng, ndim):
    shape = SHAPES[ndim]
    A = rng.normal(size=(ndim, ndim))
    b = rng.normal(size=ndim)
    u = (grid(shape) @ A.T + b).astype(np.float32)  # u_c(x) = Σ_a A_ca x_a + b_c
    np.testing.assert_allclose(float(J.diffusion(u)), np.sum(A**2) / ndim**2, rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffusion_random_field_vs_loop(rng, ndim):
    u = rng.normal(size=(*SHAPES[ndim], ndim)).astype(np.float32)
    np.testing.assert_allclose(float(J.diffusion(u)), ref_diffusion_loop(u), rtol=1e-5)


# ============================================================================ bending energy
@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_single_quadratic(ndim):
    shape = SHAPES[ndim]
    x = grid(shape)
    a = 0.3
    u = np.zeros((*shape, ndim))
    u[..., 0] = a * x[..., 0] ** 2  # ∂0∂0 u0 = 2a, everything else 0
    np.testing.assert_allclose(float(J.bending_energy(u.astype(np.float32))),
                               (2 * a) ** 2 / ndim, rtol=1e-4)
    b = -0.7
    v = np.zeros((*shape, ndim))
    v[..., 1] = b * x[..., 0] * x[..., 1]  # ∂0∂1 v1 = ∂1∂0 v1 = b: counted twice
    np.testing.assert_allclose(float(J.bending_energy(v.astype(np.float32))),
                               2 * b**2 / ndim, rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_general_quadratic(rng, ndim):
    shape = SHAPES[ndim]
    x = grid(shape) - np.array(shape) / 2.0
    Q = rng.normal(size=(ndim, ndim, ndim)) * 0.1
    Q = (Q + Q.transpose(0, 2, 1)) / 2  # Q[c] symmetric
    u = np.einsum("...i,cij,...j->...c", x, Q, x) + x @ rng.normal(size=(ndim, ndim))
    # ∂i∂j u_c = 2 Q[c, i, j]; mean over components of Σ_ij (2Q)².
    expected = 4 * np.sum(Q**2) / ndim
    np.testing.assert_allclose(float(J.bending_energy(u.astype(np.float32))), expected, rtol=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_affine_is_zero(rng, ndim):
    shape = SHAPES[ndim]
    A = rng.normal(size=(ndim, ndim))
    u = (grid(shape) @ A.T + rng.normal(size=ndim)).astype(np.float32)
    assert abs(float(J.bending_energy(u))) < 1e-8


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_random_field_vs_loop(rng, ndim):
    u = rng.normal(size=(*SHAPES[ndim], ndim)).astype(np.float32)
    np.testing.assert_allclose(float(J.bending_energy(u)), ref_bending_loop(u), rtol=1e-5)


def test_regularisers_bad_field():
    with pytest.raises(ValueError, match="ddf"):
        losses.diffusion(np.zeros((6, 6, 3), np.float32))  # 2-D grid, 3 components
    with pytest.raises(ValueError, match="ddf"):
        losses.bending_energy(np.zeros((6, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="ddf"):
        losses.bending_energy(np.zeros((6, 2, 2), np.float32))  # side < 3


# ============================================================================ soft dice
def onehot(labels, n):
    return np.eye(n, dtype=np.float32)[labels]


def test_soft_dice_identical_and_disjoint():
    lab = np.array([[0, 1, 1], [2, 2, 0]])
    a = onehot(lab, 3)
    assert abs(float(J.dice(a, a))) < 1e-6
    # Disjoint: two labels that never meet.
    b = np.zeros((2, 3, 2), np.float32)
    c = np.zeros((2, 3, 2), np.float32)
    b[0, :, 0] = 1
    b[1, :, 1] = 1
    c[1, :, 0] = 1
    c[0, :, 1] = 1
    assert abs(float(J.dice(b, c)) - 1.0) < 1e-6


def test_soft_dice_by_hand():
    # Label 1 on 4 voxels in each map, 2 shared: Dice = 2·2 / (4 + 4) = 0.5.
    a = np.zeros((3, 4, 1), np.float32)
    b = np.zeros((3, 4, 1), np.float32)
    a[0, :, 0] = 1
    b[0, 2:, 0] = 1
    b[1, :2, 0] = 1
    assert abs(float(J.dice(a, b)) - 0.5) < 1e-6
    # Two labels on a 1x4 strip: A = [0,0,1,1], B = [0,1,1,1].
    # label 0: 2·1/(2+1) = 2/3; label 1: 2·2/(2+3) = 4/5; loss = 1 − (2/3 + 4/5)/2 = 4/15.
    A = onehot(np.array([[0, 0, 1, 1]]), 2)
    B = onehot(np.array([[0, 1, 1, 1]]), 2)
    assert abs(float(J.dice(A, B)) - 4 / 15) < 1e-6
    # A label absent from both counts as Dice 0: one perfect label + one absent → 0.5.
    C = np.zeros((2, 2, 2), np.float32)
    C[..., 0] = 1
    assert abs(float(J.dice(C, C)) - 0.5) < 1e-6
    # Identical soft maps of constant probability p: Dice = 2·n·p² / (2·n·p) = p.
    P = np.full((2, 1), 0.1, np.float32)  # sums far below 1: the eps floor must not bite
    assert abs(float(J.dice(P, P)) - 0.9) < 1e-6


def test_soft_dice_probabilistic(rng):
    p = rng.random((5, 6, 3)).astype(np.float32)
    q = rng.random((5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(float(J.dice(p, q)), ref_soft_dice(p, q), rtol=1e-5)


def test_soft_dice_bad_shapes():
    with pytest.raises(ValueError, match="fixed_onehot"):
        losses.dice(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))


# ============================================================================ jit / vmap / grad
def _image_case(rng, ndim):
    shape = {2: (12, 12), 3: (8, 8, 8)}[ndim]
    f = np.stack([smooth_random(rng, shape) for _ in range(2)])
    w = np.stack([(0.5 * f[i] + 0.5 * smooth_random(rng, shape)).astype(np.float32)
                  for i in range(2)])
    return f, w


def _field_case(rng, ndim):
    shape = {2: (9, 8), 3: (6, 6, 5)}[ndim]
    return rng.normal(size=(2, *shape, ndim)).astype(np.float32)


def _onehot_case(rng, ndim):
    shape = {2: (6, 7), 3: (4, 5, 6)}[ndim]
    a = np.stack([onehot(rng.integers(0, 3, size=shape), 3) for _ in range(2)])
    b = rng.random((2, *shape, 3)).astype(np.float32)
    b /= b.sum(-1, keepdims=True)
    return a, b


# name -> (function of the sample pair / field, numpy reference, kind)
PAIR_LOSSES = {
    "lncc": (lambda f, w: losses.lncc(f, w), ref_lncc),
    "ssim": (lambda f, w: losses.ssim(f, w, data_range=1.0), lambda f, w: ref_ssim(f, w, 1.0)),
    "mse": (losses.mse, ref_mse),
    "mutual_information": (lambda f, w: losses.mutual_information(f, w, bins=12),
                           lambda f, w: ref_mi_vec(f, w, 12)),
}
FIELD_LOSSES = {
    "diffusion": (losses.diffusion, ref_diffusion_vec),
    "bending_energy": (losses.bending_energy, ref_bending_vec),
}


FD_CHECKED = {"lncc", "ssim", "mse", "diffusion", "bending_energy"}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list(PAIR_LOSSES) + list(FIELD_LOSSES) + ["dice"])
def test_loss_jit_vmap_grad(rng, name, ndim):
    """Each loss under jit, vmap (batch of 2) and grad, checked against the numpy
    references; for the smooth losses the gradient is checked, in a random direction,
    against a float64 central difference of the independent numpy reference."""
    if name in PAIR_LOSSES:
        fn, ref = PAIR_LOSSES[name]
        f, w = _image_case(rng, ndim)
        args = (f, w)
    elif name in FIELD_LOSSES:
        fn1, ref1 = FIELD_LOSSES[name]
        fn = lambda _unused, u: fn1(u)
        ref = lambda _unused, u: ref1(u)
        u = _field_case(rng, ndim)
        args = (u, u)
    else:
        fn, ref = losses.dice, ref_soft_dice
        args = _onehot_case(rng, ndim)
    expected = np.array([ref(args[0][i], args[1][i]) for i in range(2)])

    # jit of vmap over a batch of 2.
    vb = jax.jit(jax.vmap(fn))(jnp.asarray(args[0]), jnp.asarray(args[1]))
    assert vb.shape == (2,)
    np.testing.assert_allclose(np.asarray(vb), expected, rtol=1e-4, atol=1e-5)
    # jit of grad w.r.t. the second argument (warped image / field / warped one-hot):
    # value_and_grad also checks the jitted scalar value of one sample.
    x0, x1 = args[0][1], args[1][1]
    val, g = jax.jit(jax.value_and_grad(fn, argnums=1))(jnp.asarray(x0), jnp.asarray(x1))
    np.testing.assert_allclose(float(val), expected[1], rtol=1e-4, atol=1e-5)
    g = np.asarray(g, np.float64)
    assert g.shape == x1.shape
    assert np.all(np.isfinite(g))
    assert np.abs(g).max() > 0
    if name not in FD_CHECKED:
        return
    v = rng.normal(size=x1.shape)
    v /= np.linalg.norm(v)
    h = 1e-4
    x1d = x1.astype(np.float64)
    fd = (ref(x0, x1d + h * v) - ref(x0, x1d - h * v)) / (2 * h)
    assert abs(fd) > 1e-6  # the check is not vacuous
    np.testing.assert_allclose(float(np.sum(g * v)), fd, rtol=2e-3, atol=1e-6)


def test_mutual_information_rejects_non_positive_sigma():
    with pytest.raises(ValueError, match=r"`sigma`.*> 0.*0"):
        losses.mutual_information(jnp.zeros((8, 8)), jnp.zeros((8, 8)), sigma=0.0)
