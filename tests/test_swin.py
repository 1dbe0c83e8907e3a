"""Swin pieces (windows, masks, relative positions, joint conditional attention) and DiffuseReg's denoiser.

References are independent: brute-force numpy loops over windows and token pairs, closed-form
neighbourhood rules, and influence maps (which output tokens change when one input token is
perturbed) predicted from window geometry alone.

Model parameters are drawn with numpy on the tree shapes from ``jax.eval_shape(module.init)``:
flax's own initialisation compiles every initializer separately (~30 s for the denoiser on a
slow CPU), and its final conv has std 1e-3, which would make every output difference tiny.
"""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxreg.models.denoiser import IMAGE_TOKENS, Denoiser
from jaxreg.models.swin import (
    JointWindowAttention,
    SwinBlock,
    effective_window,
    joint_mask,
    relative_position_index,
    shift_mask,
    window_partition,
    window_reverse,
)

# ----------------------------------------------------------------------------- helpers


def _random_params(module, *args, seed=0):
    """Parameters of ``module`` with the tree flax would build, filled with O(1) random values."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":  # fan-in scaled, so activations stay O(1) through the net
            value = rng.standard_normal(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:  # biases, relative-position tables, time bias, null token
            value = 0.3 * rng.standard_normal(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _windows_of(grid, window):
    """Window origins (C order over the window counts) and token offsets (C order in a window)."""
    counts = [g // w for g, w in zip(grid, window)]
    return list(np.ndindex(*counts)), list(np.ndindex(*window))


def _rel_change(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a)


# ----------------------------------------------------------------------------- 1. windows


@pytest.mark.parametrize("grid,window", [((4, 6), (2, 3)), ((8, 4), (4, 4)), ((4, 6, 4), (2, 3, 2)), ((2, 4, 6), (2, 2, 3))])
def test_window_partition_matches_loop_and_round_trips(grid, window):
    rng = np.random.default_rng(0)
    b, c = 2, 3
    x = rng.standard_normal((b, *grid, c)).astype(np.float32)
    origins, offsets = _windows_of(grid, window)
    expected = np.empty((b * len(origins), math.prod(window), c), np.float32)
    for bi in range(b):
        for wi, origin in enumerate(origins):
            for ti, off in enumerate(offsets):
                idx = tuple(o * w + d for o, w, d in zip(origin, window, off))
                expected[bi * len(origins) + wi, ti] = x[(bi, *idx)]
    got = window_partition(jnp.asarray(x), window)
    assert got.shape == expected.shape
    assert_array_equal(np.asarray(got), expected)
    assert_array_equal(window_partition(x, window), expected)  # numpy in works too
    assert_array_equal(np.asarray(window_reverse(got, window, grid)), x)
    w = rng.standard_normal(expected.shape).astype(np.float32)
    assert_array_equal(np.asarray(window_partition(window_reverse(jnp.asarray(w), window, grid), window)), w)


# ----------------------------------------------------------------------------- 2. shift mask


def _shift_mask_reference(grid, window, shift):
    """Token at shifted index p came from (p + shift) mod g; a pair may attend iff true neighbours."""
    origins, offsets = _windows_of(grid, window)
    n = len(offsets)
    out = np.zeros((len(origins), n, n), bool)
    for wi, origin in enumerate(origins):
        orig = [tuple((o * w + d + s) % g for o, w, d, s, g in zip(origin, window, off, shift, grid)) for off in offsets]
        for p, q in itertools.product(range(n), range(n)):
            out[wi, p, q] = all(abs(a - b) < w for a, b, w in zip(orig[p], orig[q], window))
    return out


@pytest.mark.parametrize(
    "grid,window,shift",
    [
        ((8, 8), (4, 4), (2, 2)),
        ((8, 12), (4, 4), (2, 2)),
        ((6, 9), (3, 3), (1, 1)),
        ((8, 8), (4, 4), (1, 3)),  # shifts other than half a window
        ((8, 8), (4, 4), (2, 0)),  # one axis unshifted
        ((4, 8), (4, 4), (0, 2)),  # the window covers axis 0 whole
        ((4, 8, 8), (2, 4, 4), (1, 2, 2)),
        ((6, 4, 6), (3, 2, 3), (1, 1, 1)),
        ((4, 4, 8), (2, 4, 4), (1, 0, 2)),
    ],
)
def test_shift_mask_matches_neighbour_rule(grid, window, shift):
    expected = _shift_mask_reference(grid, window, shift)
    got = shift_mask(grid, window, shift)
    assert got.dtype == bool and got.shape == expected.shape
    assert_array_equal(got, expected)
    assert got.any(-1).all()  # every token attends at least to itself


@pytest.mark.parametrize("grid,window", [((8, 8), (4, 4)), ((4, 6), (2, 3)), ((4, 8, 8), (2, 4, 4))])
def test_shift_mask_without_shift_allows_all(grid, window):
    n_w = math.prod(g // w for g, w in zip(grid, window))
    got = shift_mask(grid, window, (0,) * len(grid))
    assert got.shape == (n_w, math.prod(window), math.prod(window))
    assert got.all()


# ----------------------------------------------------------------------------- 3. joint mask


@pytest.mark.parametrize("tile", [True, False])
@pytest.mark.parametrize("time_token", [True, False])
def test_joint_mask_matches_loop(tile, time_token):
    rng = np.random.default_rng(1)
    n_w, n, groups = 3, 4, 3
    base = rng.random((n_w, n, n)) < 0.5
    t = int(time_token)
    size = t + groups * n
    expected = np.zeros((n_w, size, size), bool)
    for w in range(n_w):
        for i, j in itertools.product(range(size), range(size)):
            if time_token and (i == 0 or j == 0):
                expected[w, i, j] = True
                continue
            (g1, p), (g2, q) = divmod(i - t, n), divmod(j - t, n)
            field_pair = g1 == groups - 1 and g2 == groups - 1
            expected[w, i, j] = base[w, p, q] if (tile or field_pair) else True
    got = joint_mask(base, groups=groups, time_token=time_token, tile=tile)
    assert got.shape == (n_w, size, size)
    assert_array_equal(got, expected)


def test_joint_mask_on_real_shift_mask():
    base = shift_mask((8, 8), (4, 4), (2, 2))
    n = base.shape[1]
    got = joint_mask(base)
    assert got.shape == (4, 1 + 3 * n, 1 + 3 * n)
    assert got[:, 0].all() and got[:, :, 0].all()
    for g1, g2 in itertools.product(range(3), range(3)):
        assert_array_equal(got[:, 1 + g1 * n:1 + (g1 + 1) * n, 1 + g2 * n:1 + (g2 + 1) * n], base)
    assert not got.all()  # the last windows really are masked


# ----------------------------------------------------------------------------- 4. relative positions


@pytest.mark.parametrize("window", [(3,), (2, 3), (4, 4), (2, 3, 4)])
def test_relative_position_index(window):
    offsets = list(np.ndindex(*window))
    n = len(offsets)
    sides = [2 * w - 1 for w in window]
    expected = np.zeros((n, n), np.int64)
    for p, q in itertools.product(range(n), range(n)):
        flat = 0
        for a, b, w, side in zip(offsets[p], offsets[q], window, sides):
            flat = flat * side + (a - b + w - 1)
        expected[p, q] = flat
    got = relative_position_index(window)
    assert got.shape == (n, n)
    assert_array_equal(got, expected)
    # closed-form properties: every offset has its own entry, all entries used, zero offset in the middle
    assert len(np.unique(got)) == math.prod(sides) and got.min() == 0 and got.max() == math.prod(sides) - 1
    assert (np.diag(got) == (math.prod(sides) - 1) // 2).all()


def _joint_attention_reference(params, field, conditions, time, grid, window, shift, heads):
    """JointWindowAttention by brute force: a loop over windows, heads, field queries and keys.

    The bias of a (query, key) pair is looked up in the table at the key's group-free window
    position: offset = coords(query) − coords(key) per axis, shifted by w − 1 and flattened in
    C order over the (2w − 1) sides; the time key gets the per-head time bias. The mask is the
    true-neighbour rule of the shifted grid (:func:`_shift_mask_reference`) for every
    condition/field key, and the time key is always allowed.
    """
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    field = np.asarray(field, np.float64)
    keys_in = ([np.asarray(time, np.float64)] if time is not None else []) + [np.asarray(c, np.float64) for c in
                                                                                conditions] + [field]
    tokens = np.concatenate(keys_in, axis=1)
    bw, n, c = field.shape
    d = c // heads
    offsets = list(np.ndindex(*window))
    sides = [2 * w - 1 for w in window]
    allowed = _shift_mask_reference(grid, window, shift)  # (nW, N, N)
    n_w = allowed.shape[0]
    lead = 1 if time is not None else 0
    q = field @ p["query"]["kernel"] + p["query"]["bias"]
    kv = tokens @ p["key_value"]["kernel"] + p["key_value"]["bias"]
    k, v = kv[..., :c], kv[..., c:]
    out = np.zeros((bw, n, c))
    for b in range(bw):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for i in range(n):
                logits = np.empty(tokens.shape[1])
                for j in range(tokens.shape[1]):
                    logit = q[b, i, sl] @ k[b, j, sl] / math.sqrt(d)
                    if j < lead:
                        logit += p["time_bias"][h]
                    else:
                        pos = (j - lead) % n  # the key's place in its window, whatever its group
                        flat = 0
                        for a, bb, w, side in zip(offsets[i], offsets[pos], window, sides):
                            flat = flat * side + (a - bb + w - 1)
                        logit += p["relative_bias"][flat, h]
                        if not allowed[b % n_w, i, pos]:
                            logit = -np.inf
                    logits[j] = logit
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                out[b, i, sl] = weights @ v[b, :, sl]
    return out @ p["out"]["kernel"] + p["out"]["bias"]


@pytest.mark.parametrize("window,grid,time_token,shifted", [
    ((2, 2, 2), (4, 4, 4), True, True),
    ((2, 2, 2), (4, 4, 4), False, False),
    ((2, 3, 4), (4, 6, 8), True, True),  # unequal sides: a swapped axis order would show
])
def test_joint_attention_tiled_bias_matches_loop(window, grid, time_token, shifted):
    """Values of the relative-position bias tiled over [moving | fixed | field] keys (plus the time bias),
    through the whole attention, against a loop over token pairs; O(1) tables so the bias dominates."""
    heads, c = 2, 4
    shift = tuple(w // 2 if shifted and g > w else 0 for g, w in zip(grid, window))
    n_w, n = math.prod(g // w for g, w in zip(grid, window)), math.prod(window)
    rng = np.random.default_rng(21)
    field, mov, fix = (jnp.asarray(rng.standard_normal((n_w, n, c)), jnp.float32) for _ in range(3))
    time = jnp.asarray(rng.standard_normal((n_w, 1, c)), jnp.float32) if time_token else None
    mask = None
    if any(shift):  # the field rows of the joint mask, built here from the neighbour rule
        base = _shift_mask_reference(grid, window, shift)
        rows = np.tile(base, (1, 1, 3))
        mask = np.concatenate([np.ones((n_w, n, 1), bool), rows], axis=2) if time_token else rows
        assert not mask.all()
    module = JointWindowAttention(heads, window)
    shapes = jax.eval_shape(module.init, jax.random.key(0), field, [mov, fix], time, mask)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.5, jnp.float32), shapes)
    params["params"]["relative_bias"] = jnp.asarray(rng.standard_normal((math.prod(2 * w - 1 for w in window), heads)) * 2,
                                                    jnp.float32)
    got = np.asarray(module.apply(params, field, [mov, fix], time, mask))
    want = _joint_attention_reference(params, field, [mov, fix], time, grid, window, shift, heads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 5. effective window


def test_effective_window():
    assert effective_window((4, 8, 8), (2, 4, 4), True) == ((2, 4, 4), (1, 2, 2))
    assert effective_window((4, 8, 8), (2, 4, 4), False) == ((2, 4, 4), (0, 0, 0))
    assert effective_window((2, 4, 4), (2, 4, 4), True) == ((2, 4, 4), (0, 0, 0))  # window covers all: no shift
    assert effective_window((1, 8, 2), (2, 4, 4), True) == ((1, 4, 2), (0, 2, 0))  # clipped to the grid
    assert effective_window((16, 16), (4, 4), True) == ((4, 4), (2, 2))
    with pytest.raises(ValueError, match="divisible"):
        effective_window((6, 8), (4, 4), True)
    with pytest.raises(ValueError, match="window"):
        effective_window((8, 8), (4, 4, 4), True)


# ----------------------------------------------------------------------------- 6. SwinBlock locality

_GRID, _WIN, _C = (8, 8), (4, 4), 8


def _influence(grid, window, shift, s, masked):
    """Which output tokens may depend on the input token at ``s`` (geometry only).

    Same (shifted) window: ``floor(((r − shift) mod g) / w)`` equal on every axis; with
    ``masked`` also true neighbours: ``|r − s| < w`` on every axis (not across the wrap-around).
    """
    out = np.zeros(grid, bool)
    for r in np.ndindex(*grid):
        same = all(((a - sh) % g) // w == ((b - sh) % g) // w for a, b, sh, g, w in zip(r, s, shift, grid, window))
        near = all(abs(a - b) < w for a, b, w in zip(r, s, window))
        out[r] = same and (near or not masked)
    return out


@pytest.fixture(scope="module")
def swin_inputs():
    rng = np.random.default_rng(2)
    x, mov, fix = (jnp.asarray(rng.standard_normal((1, *_GRID, _C)), jnp.float32) for _ in range(3))
    time = jnp.asarray(rng.standard_normal((1, _C)), jnp.float32)
    return x, mov, fix, time


# perturbed positions: a corner (wraps to the last shifted window), an interior token, an edge token
_POSITIONS = [(0, 0), (3, 4), (7, 2), (4, 7)]


@pytest.mark.parametrize("shift,tile", [(False, True), (True, True), (True, False)])
def test_swin_block_locality(swin_inputs, shift, tile):
    x, mov, fix, time = swin_inputs
    block = SwinBlock(heads=2, window=_WIN, shift=shift, tile_mask=tile)
    params = block.init(jax.random.key(3), x, [mov, fix], time)
    apply = jax.jit(block.apply)
    base = np.asarray(apply(params, x, [mov, fix], time))[0]
    shifts = (2, 2) if shift else (0, 0)
    kick = jnp.asarray(np.random.default_rng(13).standard_normal(_C) * 3, jnp.float32)
    for which, s in itertools.product(("moving", "fixed", "field"), _POSITIONS):
        bump = jnp.zeros_like(x).at[(0, *s)].set(kick)  # not constant over channels: LayerNorm would cancel it
        args = {"moving": (x, [mov + bump, fix]), "fixed": (x, [mov, fix + bump]), "field": (x + bump, [mov, fix])}[which]
        out = np.asarray(apply(params, *args, time))[0]
        changed = np.abs(out - base).max(-1)
        # field tokens are always masked against the wrap-around; conditions only if the mask is tiled
        expected = _influence(_GRID, _WIN, shifts, s, masked=tile or which == "field")
        assert (changed[~expected] <= 1e-6).all(), (which, s, np.argwhere(changed > 1e-6))
        assert (changed[expected] > 1e-4).all(), (which, s, changed)
    if shift:  # the geometry really has wrap-around pairs in a shared window
        assert _influence(_GRID, _WIN, shifts, (0, 0), masked=False).sum() > _influence(_GRID, _WIN, shifts, (0, 0), masked=True).sum()
    out = np.asarray(apply(params, x, [mov, fix], time + 1.0))[0]
    assert (np.abs(out - base).max(-1) > 1e-4).all()  # the time token is seen in every window


def test_swin_block_locality_3d_and_batch():
    """3-D shifted block, batch of 2: a perturbation of sample 0 never reaches sample 1."""
    grid, c = (4, 4, 8), 4
    rng = np.random.default_rng(4)
    x, mov, fix = (jnp.asarray(rng.standard_normal((2, *grid, c)), jnp.float32) for _ in range(3))
    time = jnp.asarray(rng.standard_normal((2, c)), jnp.float32)
    block = SwinBlock(heads=2, window=(2, 2, 8), shift=True)  # covers axis 2 whole: shifted on axes 0, 1 only
    params = block.init(jax.random.key(5), x, [mov, fix], time)
    apply = jax.jit(block.apply)
    base = np.asarray(apply(params, x, [mov, fix], time))
    win, shifts = effective_window(grid, (2, 2, 8), True)
    assert shifts == (1, 1, 0)
    kick = jnp.asarray(np.random.default_rng(14).standard_normal(c) * 3, jnp.float32)
    for s in [(0, 0, 0), (3, 1, 5), (2, 3, 7)]:
        bump = jnp.zeros_like(x).at[(0, *s)].set(kick)  # not constant over channels: LayerNorm would cancel it
        out = np.asarray(apply(params, x, [mov, fix + bump], time))
        changed = np.abs(out - base).max(-1)
        expected = _influence(grid, win, shifts, s, masked=True)
        assert (changed[0][~expected] <= 1e-6).all() and (changed[0][expected] > 1e-4).all(), s
        assert (changed[1] == 0).all()
    out = np.asarray(apply(params, x, [mov, fix], time.at[1].add(1.0)))
    changed = np.abs(out - base).max(-1)
    assert (changed[0] == 0).all() and (changed[1] > 1e-4).all()


# ----------------------------------------------------------------------------- 7. denoiser


def _denoiser_inputs(shape, batch, seed):
    rng = np.random.default_rng(seed)
    nd = len(shape)
    x_t = jnp.asarray(rng.standard_normal((batch, *shape, nd)), jnp.float32)
    fixed, moving = (jnp.asarray(rng.uniform(-1, 1, (batch, *shape, 1)), jnp.float32) for _ in range(2))
    t = jnp.asarray(rng.integers(0, 2000, batch), jnp.int32)
    return x_t, t, fixed, moving


@pytest.fixture(scope="module")
def denoiser_2d():
    model = Denoiser(features=8, depths=(2, 2), heads=(2, 2), window=(4, 4), patch=2)
    x_t, t, fixed, moving = _denoiser_inputs((32, 32), 2, seed=6)
    cond = jnp.ones((2,))
    params = _random_params(model, x_t, t, fixed, moving, cond)
    return jax.jit(model.apply), params, (x_t, t, fixed, moving, cond)


def test_denoiser_2d_shape_and_conditioning(denoiser_2d):
    apply, params, (x_t, t, fixed, moving, cond) = denoiser_2d
    eps = np.asarray(apply(params, x_t, t, fixed, moving, cond))
    assert eps.shape == (2, 32, 32, 2) and np.isfinite(eps).all()
    other = jnp.asarray(np.random.default_rng(7).uniform(-1, 1, fixed.shape), jnp.float32)
    assert _rel_change(eps, apply(params, x_t, t, other, moving, cond)) > 1e-3  # fixed image is seen
    assert _rel_change(eps, apply(params, x_t, t, fixed, other, cond)) > 1e-3  # moving image is seen
    assert _rel_change(eps, apply(params, x_t, t + 500, fixed, moving, cond)) > 1e-3  # t is seen
    assert _rel_change(eps, apply(params, x_t + 0.5, t, fixed, moving, cond)) > 1e-3  # x_t is seen
    # samples are independent: changing sample 1's fixed image leaves sample 0 alone
    out = np.asarray(apply(params, x_t, t, fixed.at[1].set(other[1]), moving, cond))
    assert_allclose(out[0], eps[0], rtol=1e-5, atol=1e-6 * np.abs(eps).max())
    assert _rel_change(eps[1], out[1]) > 1e-3


def test_denoiser_distinguishes_fixed_from_moving(denoiser_2d):
    """ε̂(f, m) must differ from ε̂(m, f): the field that warps m onto f is not the one that warps f onto m.

    Swapping the two images must change the prediction (the paper's target, a pull field from
    moving to fixed, is roughly inverted by the swap); a denoiser symmetric in the pair cannot
    represent it.
    """
    apply, params, (x_t, t, fixed, moving, cond) = denoiser_2d
    eps = np.asarray(apply(params, x_t, t, fixed, moving, cond))
    assert _rel_change(eps, apply(params, x_t, t, moving, fixed, cond)) > 1e-3


def test_denoiser_condition_dropout(denoiser_2d):
    apply, params, (x_t, t, fixed, moving, _) = denoiser_2d
    rng = np.random.default_rng(8)
    fixed2, moving2 = (jnp.asarray(rng.uniform(-1, 1, fixed.shape), jnp.float32) for _ in range(2))
    scale = 1e-6 * float(np.abs(np.asarray(apply(params, x_t, t, fixed, moving, jnp.ones(2)))).max())
    drop = jnp.zeros((2,))
    a = np.asarray(apply(params, x_t, t, fixed, moving, drop))
    b = np.asarray(apply(params, x_t, t, fixed2, moving2, drop))
    assert_allclose(a, b, rtol=1e-5, atol=scale)  # dropped: images are not seen
    assert _rel_change(a, apply(params, x_t, t + 500, fixed, moving, drop)) > 1e-3  # but t still is
    mixed = jnp.asarray([1.0, 0.0])
    a = np.asarray(apply(params, x_t, t, fixed, moving, mixed))
    b = np.asarray(apply(params, x_t, t, fixed2, moving2, mixed))
    assert _rel_change(a[0], b[0]) > 1e-3  # kept sample sees its images
    assert_allclose(a[1], b[1], rtol=1e-5, atol=scale)  # dropped sample does not


def test_denoiser_3d_shape_and_conditioning():
    model = Denoiser(features=8, depths=(1, 1), heads=(2, 2), window=(2, 4, 4), patch=2)
    x_t, t, fixed, moving = _denoiser_inputs((8, 16, 16), 1, seed=9)
    params = _random_params(model, x_t, t, fixed, moving)
    apply = jax.jit(model.apply)
    eps = np.asarray(apply(params, x_t, t, fixed, moving))
    assert eps.shape == (1, 8, 16, 16, 3) and np.isfinite(eps).all()
    assert _rel_change(eps, apply(params, x_t, t, fixed[:, ::-1], moving)) > 1e-3
    assert _rel_change(eps, apply(params, x_t, t, fixed, moving[:, :, ::-1])) > 1e-3
    assert _rel_change(eps, apply(params, x_t, t + 300, fixed, moving)) > 1e-3


# A single-stage 2-D net (8×8 tokens, 4×4 windows, block 1 shifted) keeps the ablation runs cheap.
_SMALL = {"features": 8, "depths": (2,), "heads": (2,), "window": (4, 4), "patch": 2}


def _zero_input_channels(params, names, first):
    """``params`` with the kernels of convolutions ``names`` zeroed on input channels ``first:``."""
    params = jax.tree.map(lambda a: a, params)  # a copy of the containers
    for path in names:
        node = params["params"]
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = node[path[-1]].at[..., first:, :].set(0.0)
    return params


def test_denoiser_ablation_fusion_input():
    """``fusion="input"``: the images enter only as input channels [x_t | fixed | moving] of the field
    embedding and of the full-resolution skip block; with those kernel slices zeroed the output does
    not depend on the images at all (layerwise fusion, zeroed alike, still does: its image encoder)."""
    model = Denoiser(fusion="input", **_SMALL)
    x_t, t, fixed, moving = _denoiser_inputs((16, 16), 1, seed=10)
    params = _random_params(model, x_t, t, fixed, moving)
    assert not any(k.startswith("image") for k in params["params"])  # no image encoder
    assert params["params"]["field_embed"]["kernel"].shape == (2, 2, 2 + 2, 8)  # ndim + fixed + moving channels
    apply = jax.jit(model.apply)
    other_f, other_m = -fixed[:, ::-1], moving[:, :, ::-1]
    eps = np.asarray(apply(params, x_t, t, fixed, moving))
    assert _rel_change(eps, apply(params, x_t, t, other_f, moving)) > 1e-2  # each image is seen ...
    assert _rel_change(eps, apply(params, x_t, t, fixed, other_m)) > 1e-2
    entries = [("field_embed", "kernel"), ("skip_input", "conv1", "kernel"), ("skip_input", "skip", "kernel")]
    blind = _zero_input_channels(params, entries, 2)
    eps = np.asarray(apply(blind, x_t, t, fixed, moving))
    np.testing.assert_allclose(apply(blind, x_t, t, other_f, other_m), eps, rtol=1e-6, atol=1e-6)  # ... only there
    layerwise = Denoiser(**_SMALL)
    params = _random_params(layerwise, x_t, t, fixed, moving)
    assert params["params"]["field_embed"]["kernel"].shape == (2, 2, 2, 8)  # the field alone
    apply = jax.jit(layerwise.apply)
    eps = np.asarray(apply(params, x_t, t, fixed, moving))
    assert _rel_change(eps, apply(params, x_t, t, other_f, other_m)) > 1e-2  # images through the encoder


def test_denoiser_ablation_conditional_mask():
    """``conditional_mask=False`` only changes shifted windows: with no shift (a window covering the token
    grid, or unshifted blocks only) it is the paper's net exactly; with a shifted block, the same
    parameters give another ε̂ (image tokens across the wrap-around are seen)."""
    x_t, t, fixed, moving = _denoiser_inputs((16, 16), 1, seed=11)
    for kwargs in ({"window": (8, 8)}, {"depths": (1,)}):  # 8×8 tokens: a window covering them; one plain block
        config = {**_SMALL, **kwargs}
        paper, ablation = Denoiser(**config), Denoiser(conditional_mask=False, **config)
        params = _random_params(paper, x_t, t, fixed, moving)
        np.testing.assert_array_equal(np.asarray(jax.jit(ablation.apply)(params, x_t, t, fixed, moving)),
                                      np.asarray(jax.jit(paper.apply)(params, x_t, t, fixed, moving)))
    paper, ablation = Denoiser(**_SMALL), Denoiser(conditional_mask=False, **_SMALL)
    params = _random_params(paper, x_t, t, fixed, moving)
    assert jax.tree.structure(params) == jax.tree.structure(_random_params(ablation, x_t, t, fixed, moving))
    eps = np.asarray(jax.jit(ablation.apply)(params, x_t, t, fixed, moving))
    assert _rel_change(eps, jax.jit(paper.apply)(params, x_t, t, fixed, moving)) > 1e-2


def test_denoiser_ablation_time_in_resblocks():
    """``time_in_resblocks=False``: t reaches the net through the stage time tokens only, so with their
    projections zeroed ε̂ no longer depends on t; with the paper's setting, zeroed alike, it still does."""
    x_t, t, fixed, moving = _denoiser_inputs((16, 16), 1, seed=12)
    model = Denoiser(time_in_resblocks=False, **_SMALL)
    params = _random_params(model, x_t, t, fixed, moving)
    with_time = _random_params(Denoiser(**_SMALL), x_t, t, fixed, moving)
    n_res = sum("time" in v for k, v in with_time["params"].items() if isinstance(v, dict) and "conv1" in v)
    assert n_res == 5  # bottleneck, skip_0, decoder_0, skip_input, decoder_input each get a projection
    assert not any("time" in v for v in params["params"].values() if isinstance(v, dict) and "conv1" in v)

    def no_time_tokens(p):
        p = jax.tree.map(lambda a: a, p)
        for name in p["params"]:
            if name.startswith("time_token_"):
                p["params"][name] = jax.tree.map(jnp.zeros_like, p["params"][name])
        return p

    apply = jax.jit(model.apply)
    eps = np.asarray(apply(params, x_t, t, fixed, moving))
    assert _rel_change(eps, apply(params, x_t, t + 500, fixed, moving)) > 1e-3  # the time tokens carry t
    blind = no_time_tokens(params)
    np.testing.assert_allclose(apply(blind, x_t, t + 500, fixed, moving), apply(blind, x_t, t, fixed, moving),
                               rtol=1e-6, atol=1e-6)
    apply = jax.jit(Denoiser(**_SMALL).apply)
    blind = no_time_tokens(with_time)
    assert _rel_change(apply(blind, x_t, t, fixed, moving), apply(blind, x_t, t + 500, fixed, moving)) > 1e-2


def _layer_norm_reference(p, x):
    x = np.asarray(x, np.float64)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _patch_embed_reference(p, images, patch):
    """A ``patch``-strided patch embedding in numpy: each patch's pixels (row-major, then channels) times the kernel."""
    images = np.asarray(images, np.float64)
    b, h, w, c = images.shape
    patches = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = np.asarray(p["kernel"], np.float64)
    return patches.reshape(b, h // patch, w // patch, -1) @ kernel.reshape(-1, kernel.shape[-1]) + np.asarray(p["bias"])


def _plain_swin_block_reference(p, x, window, heads):
    """An unshifted Swin block without conditions in numpy: x + attn(LN(x)) per window, then + MLP(LN(·))
    (tanh GELU); the attention is :func:`_joint_attention_reference` with no conditions and no time."""
    x = np.asarray(x, np.float64)
    b, *grid, c = x.shape
    (wh, ww), (gh, gw) = window, grid
    h = _layer_norm_reference(p["norm1"], x)
    win = h.reshape(b, gh // wh, wh, gw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)
    att = _joint_attention_reference({"params": p["attention"]}, win, [], None, grid, window, (0, 0), heads)
    att = att.reshape(b, gh // wh, gw // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(x.shape)
    x = x + att
    y = _layer_norm_reference(p["norm2"], x) @ np.asarray(p["mlp_in"]["kernel"]) + np.asarray(p["mlp_in"]["bias"])
    y = 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    return x + y @ np.asarray(p["mlp_out"]["kernel"]) + np.asarray(p["mlp_out"]["bias"])


def _image_tokens_seen(model, params, *args):
    """The [moving, fixed] token grids each field block was called with (flax method interception).

    Under ``jit`` (one compiled program instead of an op-by-op run): the intercepted arguments
    are returned as outputs of the jitted function.
    """
    def run(params, *args):
        seen = {}

        def spy(next_fun, args_, kwargs, context):
            if context.method_name == "__call__" and str(context.module.name).startswith("field_stage"):
                seen[context.module.name] = list(args_[1])
            return next_fun(*args_, **kwargs)

        with nn.intercept_methods(spy):
            out = model.apply(params, *args)
        return seen, out

    seen, out = jax.jit(run)(params, *args)
    return {k: [np.asarray(c, np.float64) for c in v] for k, v in seen.items()}, np.asarray(out)


def test_denoiser_image_tokens_wiring():
    """``image_tokens``: field block b of a stage attends to the image tokens *entering* image block b
    (``"input"``, the official code and the default) or *leaving* it (``"output"``). Checked against a
    numpy patch embedding and a numpy Swin block: field block 0 sees the embedded images (input) or
    image block 0's output; field block 1 sees image block 0's output (input). End to end, in a
    one-stage net the last image block then feeds nothing but the unused merge: perturbing it leaves
    the "input" net's ε̂ exactly unchanged and changes the "output" net's."""
    assert Denoiser().image_tokens == "input" and IMAGE_TOKENS == ("input", "output")
    x_t, t, fixed, moving = _denoiser_inputs((16, 16), 1, seed=15)
    nets = {w: Denoiser(image_tokens=w, **_SMALL) for w in IMAGE_TOKENS}
    params = _random_params(nets["input"], x_t, t, fixed, moving)
    assert jax.tree.structure(params) == jax.tree.structure(_random_params(nets["output"], x_t, t, fixed, moving))
    p = params["params"]
    embedded = _patch_embed_reference(p["image_embed"], np.concatenate([moving, fixed]), 2)  # [moving; fixed]
    after0 = _plain_swin_block_reference(p["image_stage0_block0"], embedded, (4, 4), heads=2)
    assert _rel_change(embedded, after0) > 0.1  # the two candidates are far apart
    seen = {w: _image_tokens_seen(nets[w], params, x_t, t, fixed, moving) for w in IMAGE_TOKENS}
    expected = {("input", 0): embedded, ("input", 1): after0, ("output", 0): after0}
    for (wiring, block), want in expected.items():
        got = seen[wiring][0][f"field_stage0_block{block}"]
        for group, tokens in enumerate(got):  # moving, then fixed
            assert_allclose(tokens, want[group:group + 1], rtol=1e-4, atol=1e-4, err_msg=f"{wiring} block {block}")
    # "output", block 1: image block 1's output, which is neither of the above
    got = np.concatenate(seen["output"][0]["field_stage0_block1"])
    assert _rel_change(after0, got) > 0.1 and _rel_change(embedded, got) > 0.1
    eps = {w: seen[w][1] for w in IMAGE_TOKENS}
    assert _rel_change(eps["input"], eps["output"]) > 1e-2  # the same parameters, two networks

    kicked = jax.tree.map(lambda a: a, params)
    kicked["params"]["image_stage0_block1"] = jax.tree.map(lambda a: a + 0.5, p["image_stage0_block1"])
    for wiring, net in nets.items():
        out = np.asarray(jax.jit(net.apply)(kicked, x_t, t, fixed, moving))
        base = np.asarray(jax.jit(net.apply)(params, x_t, t, fixed, moving))
        if wiring == "input":
            assert_array_equal(out, base)
        else:
            assert _rel_change(base, out) > 1e-2


@pytest.mark.parametrize(
    "kwargs,shape,fixed_shape,match",
    [
        ({}, (36, 32), None, "divisible"),  # 36 = 4·9: divisible by patch·2 but not patch·2**2
        ({}, (32, 30), None, "divisible"),
        ({}, (32, 32), (1, 32, 16, 1), "fixed and moving"),  # fixed off the grid of x_t
        ({"heads": (2,)}, (32, 32), None, "heads"),
        ({"heads": (2, 2, 2)}, (32, 32), None, "heads"),
        ({"window": (2, 4, 4)}, (32, 32), None, "window"),
        ({"fusion": "concat"}, (32, 32), None, "fusion"),
        ({"image_tokens": "after"}, (32, 32), None, "image_tokens"),
    ],
)
def test_denoiser_bad_inputs(kwargs, shape, fixed_shape, match):
    model = Denoiser(**{"features": 8, "depths": (2, 2), "heads": (2, 2), "window": (4, 4), "patch": 2, **kwargs})
    x_t = jax.ShapeDtypeStruct((1, *shape, 2), jnp.float32)
    img = jax.ShapeDtypeStruct((1, *shape, 1), jnp.float32)
    fixed = jax.ShapeDtypeStruct(fixed_shape, jnp.float32) if fixed_shape else img
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), x_t, t, fixed, img)


def test_denoiser_fixed_moving_mismatch():
    model = Denoiser(**_SMALL)
    x_t = jax.ShapeDtypeStruct((1, 16, 16, 2), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    with pytest.raises(ValueError, match="fixed and moving"):
        jax.eval_shape(model.init, jax.random.key(0), x_t, t, jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32),
                       jax.ShapeDtypeStruct((1, 16, 16, 2), jnp.float32))
    with pytest.raises(ValueError, match="x_t"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32), t,
                       jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32), jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32))
