"""The unrolled baselines (``jaxreg.deq.unroll``) against python loops written from their equations.

The references build every step from the update network's ``apply`` (the one shared piece),
``jax.grad`` of ``jaxreg.losses.lncc``, ``jax.image.resize`` and ``scipy.ndimage.zoom`` (for
carrying fields between levels), never from the module's own helpers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import ndimage

from jaxreg import losses, methods, spatial
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.models.voxelmorph import registration_loss

SMALL = {"encoder": (4, 8), "decoder": (8, 8, 4)}  # the U-Net needs sides divisible by 4
LOSS = {"similarity": "lncc", "window": 5, "weight": 0.1}
SIDE = 24  # levels of 6, 12, 24: the 6² level is padded to 8² for the U-Net


@pytest.fixture(scope="module")
def pairs():
    ps = [synthetic_pair(jax.random.key(k), (SIDE, SIDE), anatomy=a) for k, a in ((3, "brain"), (4, "cardiac"))]
    return {k: jnp.stack([jnp.asarray(p[k]) for p in ps]) for k in ("fixed", "moving")}


def _loud(params, factor=1e4):
    """Multiplies every level's last kernel (initialised at std 1e-5) so the updates are not ~0."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: v * factor if "update" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
        else v, params)


_JITTED_NETS = {}  # id(net) -> (net, jitted apply): the network is one compiled call, not op by op


def _net(method, params, level, levels):
    p = params["net"] if levels == 1 else params["net"][f"level_{level}"]
    net = method.module.net
    if id(net) not in _JITTED_NETS:
        _JITTED_NETS[id(net)] = (net, jax.jit(net.apply))

    def apply(fixed, warped, ddf, extra=None):  # one pair, padded by hand to a multiple of 4
        pad = [(0, -s % 4) for s in fixed.shape[:-1]] + [(0, 0)]
        args = [None if a is None else jnp.pad(a, pad)[None] for a in (fixed, warped, ddf, extra)]
        out = _JITTED_NETS[id(net)][1](p, *args)[0]
        return out[: fixed.shape[0], : fixed.shape[1]]

    return apply


def _normalised_gradient(fixed, moving, ddf):
    g = jax.grad(lambda u: losses.lncc(fixed, spatial.warp(moving, u), window=5, ndim=2))(ddf)
    return g / (jnp.sqrt(jnp.mean(g**2)) + 1e-12)


def _zoom_field(ddf, shape):
    """A field (voxels) onto a finer grid with scipy: linear, voxel centres aligned, vectors scaled."""
    u = np.asarray(ddf, np.float64)
    factors = [n / o for n, o in zip(shape, u.shape[:-1])]
    out = np.stack([ndimage.zoom(u[..., k], factors, order=1, mode="nearest", grid_mode=True) for k in range(2)], -1)
    return jnp.asarray(out * np.asarray(factors), jnp.float32)


def _reference(method, params, fixed, moving, *, variant, levels, steps, hidden=8):
    """Every full-resolution field φ_1..φ_N of one pair, step by step from the equations."""
    fields, u, h = [], None, None
    for level in range(levels):
        side = SIDE // 2 ** (levels - 1 - level)
        f = jax.image.resize(fixed[..., None], (side, side, 1), "linear", antialias=True)
        m = jax.image.resize(moving[..., None], (side, side, 1), "linear", antialias=True)
        if u is None:
            u, h = jnp.zeros((side, side, 2)), jnp.zeros((side, side, hidden))
        else:
            u = _zoom_field(u, (side, side))
            h = jax.image.resize(h, (side, side, hidden), "linear")
        net = _net(method, params, level, levels)
        for _ in range(steps):
            warped = spatial.warp(m, u)
            if variant == "vanilla":
                u = u + net(f, warped, u)
            elif variant == "gradirn":
                alpha = params["step_size"] if levels == 1 else params["step_size"][level]
                u = u - alpha * _normalised_gradient(f, m, u) + net(f, warped, u)
            else:  # riir: [Δφ, z, c], h' = σ(z) h + (1 − σ(z)) tanh(c)
                out = net(f, warped, u, jnp.concatenate([_normalised_gradient(f, m, u), h], -1))
                z = 1.0 / (1.0 + jnp.exp(-out[..., 2:2 + hidden]))
                h = z * h + (1.0 - z) * jnp.tanh(out[..., 2 + hidden:])
                u = u + out[..., :2]
            fields.append(u if side == SIDE else _zoom_field(u, (SIDE, SIDE)))
    return fields


def _build(variant, levels, steps=2):
    return methods.build({"name": "unroll", "variant": variant, "steps": steps, "levels": levels, **SMALL}, LOSS)


def _params(method, pairs, variant, levels):
    params = _loud(method.init(jax.random.key(1), pairs))
    if variant == "gradirn":
        params["step_size"] = jnp.float32(0.7) if levels == 1 else jnp.asarray([0.9, 0.6, 0.3])
    return params


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "riir", "gradirn"])
@pytest.mark.parametrize("levels", [1, 3])
def test_predict_follows_the_equations(pairs, variant, levels):
    method = _build(variant, levels)
    params = _params(method, pairs, variant, levels)
    ddf = np.asarray(jax.jit(method.predict)(params, pairs["fixed"], pairs["moving"]))
    assert ddf.shape == (2, SIDE, SIDE, 2)
    for b in range(2):
        expected = np.asarray(_reference(method, params, pairs["fixed"][b], pairs["moving"][b], variant=variant,
                                         levels=levels, steps=2)[-1])
        assert np.abs(expected).max() > 0.05  # the updates are not ~0
        np.testing.assert_allclose(ddf[b], expected, rtol=0, atol=1e-3 * np.abs(expected).max())  # rounding through kinks of linear warps


def test_gradirn_takes_the_gradient_at_phi_t(pairs):
    """One step from φ₀ = 0 is −α·ĝ(0) + f_θ(φ₀): the gradient at φ_t, not at φ_t + f_θ."""
    method = _build("gradirn", 1, steps=1)
    params = _params(method, pairs, "gradirn", 1)
    fixed, moving = pairs["fixed"][0], pairs["moving"][0]
    zero = jnp.zeros((SIDE, SIDE, 2))
    net = _net(method, params, 0, 1)(fixed[..., None], moving[..., None], zero)
    at_phi_t = -0.7 * _normalised_gradient(fixed[..., None], moving[..., None], zero) + net
    after_net = net - 0.7 * _normalised_gradient(fixed[..., None], moving[..., None], net)
    out = np.asarray(method.predict(params, pairs["fixed"][:1], pairs["moving"][:1])[0])
    # 5e-4: float32 rounding through the kinks of a linear warp (one voxel of 1152 was 1.07e-4 off
    # at |value| 4.02); the other reading is more than 20x that far.
    np.testing.assert_allclose(out, np.asarray(at_phi_t), rtol=0, atol=5e-4)
    assert np.abs(out - np.asarray(after_net)).max() > 1e-2  # the two readings differ here


@pytest.mark.slow
@pytest.mark.parametrize("levels", [1, 3])
def test_riir_loss_weights_every_step_including_the_last(pairs, levels):
    method = _build("riir", levels)
    params = _params(method, pairs, "riir", levels)
    loss, metrics = jax.jit(method.loss_fn)(params, pairs, None)
    per_pair = []
    for b in range(2):
        fixed, moving = pairs["fixed"][b][..., None], pairs["moving"][b][..., None]
        fields = _reference(method, params, pairs["fixed"][b], pairs["moving"][b], variant="riir", levels=levels, steps=2)
        n = len(fields)
        assert n == 2 * levels
        values = [float(registration_loss(fixed, moving, u, **LOSS)[0]) for u in fields]
        weights = [10.0 ** ((t - 1) / (n - 1)) for t in range(1, n + 1)]  # w_N = 10: the last state counts most
        per_pair.append(sum(w * v for w, v in zip(weights, values)) / sum(weights))
    np.testing.assert_allclose(float(loss), np.mean(per_pair), rtol=1e-4)


# gradirn in the second tier: the first tier's 10 minutes (19.4 s in .ci/run)
@pytest.mark.parametrize("variant", ["vanilla", pytest.param("gradirn", marks=pytest.mark.slow)])
def test_final_state_loss(pairs, variant):
    method = _build(variant, 3)
    params = _params(method, pairs, variant, 3)
    loss, _ = jax.jit(method.loss_fn)(params, pairs, None)
    expected = []
    for b in range(2):
        u = _reference(method, params, pairs["fixed"][b], pairs["moving"][b], variant=variant, levels=3, steps=2)[-1]
        expected.append(float(registration_loss(pairs["fixed"][b][..., None], pairs["moving"][b][..., None], u,
                                                 **LOSS)[0]))
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-4)


@pytest.mark.slow
def test_levels_have_their_own_networks_and_all_get_gradients(pairs):
    method = _build("gradirn", 3)
    params = _params(method, pairs, "gradirn", 3)
    assert set(params["net"]) == {"level_0", "level_1", "level_2"} and params["step_size"].shape == (3,)
    grads = jax.grad(lambda p: method.loss_fn(p, pairs, None)[0])(params)
    for level in range(3):
        assert float(jnp.linalg.norm(ravel_pytree(grads["net"][f"level_{level}"])[0])) > 0
    assert np.all(np.abs(np.asarray(grads["step_size"])) > 0)


def test_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        _build("vanilla", 0)
