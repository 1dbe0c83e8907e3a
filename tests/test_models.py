"""VoxelMorph U-Net and one-shot model: architecture, initial identity, a loss it can minimise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import methods
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.models.voxelmorph import VoxelMorph, registration_loss


def _conv_params(k, cin, cout):
    return k * cin * cout + cout


def _expected_param_count(ndim, cin=2):
    """Parameters of the VoxelMorph architecture as the paper describes it, counted by hand."""
    k = 3**ndim
    enc, dec = [16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]
    total, width = 0, cin
    for features in enc:
        total += _conv_params(k, width, features)
        width = features
    skips = enc[::-1]
    for level, features in enumerate(dec[:4]):
        total += _conv_params(k, width, features)
        width = features + skips[level]  # upsample, then concatenate the skip
    for features in dec[4:]:
        total += _conv_params(k, width, features)
        width = features
    return total + _conv_params(k, width, ndim)  # the flow layer


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
def test_voxelmorph_architecture_and_identity_start(shape):
    model = VoxelMorph()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *shape, 1)), jnp.float32)
    params = model.init(jax.random.key(0), x, x)
    assert sum(p.size for p in jax.tree.leaves(params)) == _expected_param_count(len(shape))
    ddf = model.apply(params, x, x[::-1])
    assert ddf.shape == (2, *shape, len(shape))
    assert float(jnp.max(jnp.abs(ddf))) < 0.05  # starts near the identity


def test_voxelmorph_input_errors():
    model = VoxelMorph()
    x = jnp.zeros((1, 24, 32, 1))
    with pytest.raises(ValueError, match="divisible by 16"):
        model.init(jax.random.key(0), x, x)
    with pytest.raises(ValueError, match="same shape"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 32, 32, 2)))
    with pytest.raises(ValueError, match="model.name"):
        methods.build({"name": "transmorph"}, {})
    with pytest.raises(ValueError, match="similarity"):
        methods.build({"name": "voxelmorph"}, {"similarity": "ncc"})


def test_registration_loss_closed_form():
    rng = np.random.default_rng(1)
    f, m = rng.normal(size=(8, 9)), rng.normal(size=(8, 9))
    loss, parts = registration_loss(jnp.asarray(f), jnp.asarray(m), jnp.zeros((8, 9, 2)), similarity="mse", weight=3.0)
    np.testing.assert_allclose(float(parts["similarity"]), np.mean((f - m) ** 2), rtol=1e-5)
    assert float(parts["regularization"]) == 0.0 and float(loss) == pytest.approx(float(parts["similarity"]))
    shift = jnp.ones((8, 9, 2)) * 0.5  # a constant field has no diffusion energy
    _, parts = registration_loss(jnp.asarray(f), jnp.asarray(m), shift, similarity="mse")
    assert float(parts["regularization"]) == pytest.approx(0.0, abs=1e-12)


def _dice(a, b, labels):
    return np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels])


def test_voxelmorph_learns_to_register_a_pair():
    """A few Adam steps on one synthetic pair: loss falls and label overlap rises (numpy Dice)."""
    import optax
    from scipy import ndimage

    pair = {k: np.asarray(v) for k, v in synthetic_pair(jax.random.key(2), (32, 32), anatomy="cardiac").items()}
    module, _, loss_fn, _ = methods.build({"name": "voxelmorph"}, {"similarity": "mse", "weight": 0.01})
    batch = {"fixed": jnp.asarray(pair["fixed"])[None], "moving": jnp.asarray(pair["moving"])[None]}
    params = module.init(jax.random.key(0), batch["fixed"][..., None], batch["moving"][..., None])
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    ddf = np.asarray(module.apply(params, batch["fixed"][..., None], batch["moving"][..., None]))[0]
    grid = np.indices((32, 32)).astype(np.float64)
    warped = ndimage.map_coordinates(pair["moving_labels"], grid + np.moveaxis(ddf, -1, 0), order=0, mode="nearest")
    before = _dice(pair["moving_labels"], pair["fixed_labels"], (1, 2, 3))
    after = _dice(warped, pair["fixed_labels"], (1, 2, 3))
    assert losses[-1] < 0.7 * losses[0]
    assert after > before + 0.05, (before, after)
