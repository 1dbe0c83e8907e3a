"""Tests of jaxreg.optimize against independent numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from jaxreg import optimize as optimize_module
from jaxreg.optimize import OptimizeResult, optimize

SHAPE = (64, 64)
FAST = {"levels": (2, 1), "steps": (60, 40)}  # small 2-D problems need no coarser level


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))


def _scipy_warp(image, ddf, order=1):
    """Pull warp with scipy: out(x) = image(x + ddf(x)), edge clamped."""
    coords = _grid(image.shape) + np.moveaxis(np.asarray(ddf, np.float64), -1, 0)
    return ndi.map_coordinates(image, coords, order=order, mode="nearest")


def _np_jacobian_det_2d(ddf):
    d0 = np.gradient(ddf[..., 0], axis=(0, 1))
    d1 = np.gradient(ddf[..., 1], axis=(0, 1))
    return (1 + d0[0]) * (1 + d1[1]) - d0[1] * d1[0]


def _np_dice(a, b):
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def make_pair():
    """A textured moving image with two discs, and fixed(x) = moving(x + u(x)) for a known u."""
    rng = np.random.default_rng(0)
    x = _grid(SHAPE)
    texture = ndi.gaussian_filter(rng.normal(size=SHAPE), 2.0)
    texture /= texture.std()
    discs = ((x[0] - 24) ** 2 + (x[1] - 26) ** 2 < 10**2) | ((x[0] - 44) ** 2 + (x[1] - 42) ** 2 < 8**2)
    moving = (0.3 * texture + 2.0 * discs + 1.0).astype(np.float32)
    # Smooth displacement, up to 2.5 voxels.
    u = np.stack([
        2.5 * np.sin(2 * np.pi * x[1] / 64) * np.cos(np.pi * x[0] / 64),
        2.0 * np.cos(2 * np.pi * x[0] / 64) * np.sin(np.pi * x[1] / 64),
    ], axis=-1)
    fixed = _scipy_warp(moving, u).astype(np.float32)
    fixed_labels = _scipy_warp(discs.astype(np.float64), u, order=0) > 0.5
    return fixed, moving, u, fixed_labels, discs


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def svf_result(pair):
    fixed, moving, *_ = pair
    return optimize(fixed, moving, **FAST)


@pytest.mark.xdist_group("test_optimize.svf_result")  # one worker builds the module fixture once
def test_recovers_known_displacement(pair, svf_result):
    _, _, u, _, _ = pair
    ddf = np.asarray(svf_result.ddf)
    assert isinstance(svf_result, OptimizeResult)
    assert ddf.shape == (*SHAPE, 2) and svf_result.velocity.shape == (*SHAPE, 2)
    inner = (slice(8, -8), slice(8, -8))  # the edge-clamped border is not identifiable
    error = np.linalg.norm(ddf[inner] - u[inner], axis=-1)
    size = np.linalg.norm(u[inner], axis=-1)
    assert np.mean(error) < 0.25 * np.mean(size), (np.mean(error), np.mean(size))
    assert np.median(error) < 0.5


@pytest.mark.xdist_group("test_optimize.svf_result")  # one worker builds the module fixture once
def test_raises_dice_and_lowers_mse(pair, svf_result):
    fixed, moving, _, fixed_labels, moving_labels = pair
    ddf = np.asarray(svf_result.ddf)
    warped_labels = _scipy_warp(moving_labels.astype(np.float64), ddf, order=0) > 0.5
    before, after = _np_dice(fixed_labels, moving_labels), _np_dice(fixed_labels, warped_labels)
    assert after > before + 0.05 and after > 0.95, (before, after)
    mse_before = np.mean((fixed - moving) ** 2)
    mse_after = np.mean((fixed - _scipy_warp(moving, ddf)) ** 2)
    assert mse_after < 0.3 * mse_before, (mse_before, mse_after)


@pytest.mark.xdist_group("test_optimize.svf_result")  # one worker builds the module fixture once
def test_svf_does_not_fold(svf_result):
    ddf = np.asarray(svf_result.ddf)
    assert np.all(_np_jacobian_det_2d(ddf) > 0)


@pytest.mark.xdist_group("test_optimize.svf_result")  # one worker builds the module fixture once
def test_result_bookkeeping(svf_result):
    assert svf_result.steps == FAST["steps"] and svf_result.levels == FAST["levels"]
    assert isinstance(svf_result.losses, np.ndarray) and svf_result.losses.shape == (sum(FAST["steps"]),)
    assert np.all(np.isfinite(svf_result.losses))
    # Within a level the loss goes down.
    first = svf_result.losses[: FAST["steps"][0]]
    assert first[-1] < first[0]


def test_identical_images_give_near_zero_field(pair):
    fixed = pair[0]
    result = optimize(fixed, fixed.copy(), **FAST)
    size = np.linalg.norm(np.asarray(result.ddf), axis=-1)
    assert np.mean(size) < 0.05 and np.max(size) < 0.3, (np.mean(size), np.max(size))


@pytest.mark.parametrize("options", [
    {"transform": "ddf", "similarity": "mse"},
    {"similarity": "mi", "bins": 16},
    {"regularizer": "bending", "weight": 0.5},
])
def test_other_options_improve_alignment(pair, options):
    fixed, moving, *_ = pair
    result = optimize(fixed, moving, levels=(1,), steps=(80,), **options)
    assert (result.velocity is None) == (options.get("transform") == "ddf")
    mse_before = np.mean((fixed - moving) ** 2)
    mse_after = np.mean((fixed - _scipy_warp(moving, np.asarray(result.ddf))) ** 2)
    assert mse_after < 0.5 * mse_before, (options, mse_before, mse_after)


def test_mask_excludes_corrupted_region(pair):
    """A bright square pasted into the moving image pulls the field unless it is masked out."""
    fixed, moving, u, *_ = pair
    corrupted = moving.copy()
    corrupted[2:20, 40:60] = 8.0
    mask = np.ones(SHAPE, bool)
    mask[:26, 34:] = False
    masked = optimize(fixed, corrupted, fixed_mask=mask, **FAST)
    region = (slice(10, 22), slice(30, 40))  # just beside the square, inside the mask
    err_masked = np.mean(np.linalg.norm(np.asarray(masked.ddf)[region] - u[region], axis=-1))
    unmasked = optimize(fixed, corrupted, **FAST)
    err_unmasked = np.mean(np.linalg.norm(np.asarray(unmasked.ddf)[region] - u[region], axis=-1))
    assert err_masked < err_unmasked, (err_masked, err_unmasked)


def test_3d_smoke():
    rng = np.random.default_rng(1)
    fixed = ndi.gaussian_filter(rng.normal(size=(16, 16, 16)), 1.5).astype(np.float32)
    moving = np.roll(fixed, 1, axis=0)
    result = optimize(fixed, moving[..., None], levels=(1,), steps=(30,))
    assert result.ddf.shape == (16, 16, 16, 3) and result.velocity.shape == (16, 16, 16, 3)
    assert result.losses.shape == (30,) and np.all(np.isfinite(np.asarray(result.ddf)))
    # moving(x) = fixed(x - e0), so fixed(x) = moving(x + e0): the field points along +axis 0.
    assert np.mean(np.asarray(result.ddf)[4:-4, 4:-4, 4:-4, 0]) > 0.3


@pytest.mark.xdist_group("test_optimize.svf_result")  # one worker builds the module fixture once
def test_second_call_does_not_recompile(pair, svf_result):
    fixed, moving, *_ = pair
    before = optimize_module._level_chunk._cache_size()  # svf_result compiled FAST's levels
    # New data, another weight and learning rate: all arguments, no new program.
    optimize(moving, fixed + 1.0, **FAST, weight=0.2, learning_rate=0.02)
    assert optimize_module._level_chunk._cache_size() == before


def test_callback_reports_increasing_steps(pair):
    fixed, moving, *_ = pair
    calls = []
    optimize(fixed, moving, **FAST, callback=lambda *a: calls.append(a))
    compiled = optimize_module._level_chunk._cache_size()
    levels = [c[0] for c in calls]
    assert levels == sorted(levels) and set(levels) == {0, 1}
    for level, n in enumerate(FAST["steps"]):
        # One report after each compiled chunk of 10 steps: its last step.
        steps = [c[1] for c in calls if c[0] == level]
        assert steps == list(range(9, n, 10))
    assert all(isinstance(c[2], float) and np.isfinite(c[2]) for c in calls)
    # Another callback object reuses the compiled loop.
    again = []
    optimize(fixed, moving, **FAST, callback=lambda *a: again.append(a))
    assert optimize_module._level_chunk._cache_size() == compiled and len(again) == len(calls)


def _image(shape=SHAPE):
    return np.random.default_rng(2).random(shape).astype(np.float32)


@pytest.mark.parametrize("kwargs, name", [
    ({"fixed": np.full(SHAPE, np.nan, np.float32)}, "fixed"),
    ({"moving": np.where(_image() > 0.5, np.inf, 0).astype(np.float32)}, "moving"),
    ({"moving": _image((64, 60))}, "moving"),
    ({"moving": _image((64, 64, 64))}, "moving"),
    ({"fixed": np.zeros(SHAPE, np.float32)}, "fixed"),
    ({"fixed": _image((64,))}, "fixed"),
    ({"fixed_mask": np.ones((64, 63))}, "fixed_mask"),
    ({"fixed_mask": np.zeros(SHAPE)}, "fixed_mask"),
    ({"transform": "bspline"}, "transform"),
    ({"similarity": "ncc"}, "similarity"),
    ({"regularizer": "l1"}, "regularizer"),
    ({"levels": (2, 1), "steps": (10,)}, "levels"),
    ({"levels": (2, 1), "steps": (10, 0)}, "steps"),
    ({"levels": (0,), "steps": (10,)}, "levels"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"weight": -1.0}, "weight"),
    ({"levels": (32, 1), "steps": (5, 5)}, "levels"),
    ({"window": 4}, "window"),
    ({"callback": 3}, "callback"),
])
def test_bad_input_raises(kwargs, name):
    args = {"fixed": _image(), "moving": _image()} | kwargs
    fixed, moving = args.pop("fixed"), args.pop("moving")
    with pytest.raises(ValueError, match=f"`{name}`"):
        optimize(fixed, moving, **args)


def test_first_order_svf_gradient_path(pair, monkeypatch):
    """Large levels use d exp(v)/dv ≈ I; force it here on the small pair."""
    monkeypatch.setattr(optimize_module, "EXACT_GRADIENT_MAX_VOXELS", 0)
    fixed, moving, u, *_ = pair
    ddf = np.asarray(optimize(fixed, moving, **FAST).ddf)
    inner = (slice(8, -8), slice(8, -8))
    error = np.linalg.norm(ddf[inner] - u[inner], axis=-1)
    assert np.mean(error) < 0.3 * np.mean(np.linalg.norm(u[inner], axis=-1))
    assert np.all(_np_jacobian_det_2d(ddf) > 0)


@pytest.mark.parametrize("shape", [(160, 192, 144), (32, 128, 128), (256, 256), (32, 32), (16, 16, 16), (40, 300)])
def test_auto_levels_follow_their_rule_by_brute_force(shape):
    """Coarsest 2**K: the largest K with max/2**K >= 16 and min/2**K >= 4; finest 1 up to 2**18 voxels, else 2."""
    from jaxreg.optimize import auto_levels

    k = max(k for k in range(12) if max(shape) / 2**k >= 16 and min(shape) / 2**k >= 4 or k == 0)
    finest = 1 if np.prod(shape) <= 2**18 or k == 0 else 2
    expected = [2**j for j in range(k, -1, -1) if 2**j >= finest]
    assert list(auto_levels(shape)) == expected
