"""``jaxreg._random``: the flat draws give jax.random's (and flax's initialisers') values of the shaped draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import _random

SHAPES = [(7,), (5, 7, 3), (16, 16, 16, 3), (2, 4, 6, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normal_equals_jax_random(shape, dtype):
    key = jax.random.key(7)
    np.testing.assert_array_equal(np.asarray(_random.normal(key, shape, dtype), np.float32),
                                  np.asarray(jax.random.normal(key, shape, dtype), np.float32))
    assert _random.normal(key, shape, dtype).dtype == dtype


def test_equal_under_jit_and_vmap_over_keys():
    keys = jax.random.split(jax.random.key(3), 4)
    shape = (6, 5, 3)
    ours = jax.jit(jax.vmap(lambda k: _random.normal(k, shape)))(keys)
    theirs = jax.vmap(lambda k: jax.random.normal(k, shape))(keys)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # Different keys, different draws: the comparison is not of constants.
    assert not np.array_equal(np.asarray(ours[0]), np.asarray(ours[1]))


@pytest.mark.parametrize("shape", [(3, 3, 3, 2, 16), (3, 3, 16, 32), (2, 2, 2, 8, 4), (16, 48)])
def test_initializers_equal_flax_defaults(shape):
    key = jax.random.key(11)
    np.testing.assert_array_equal(np.asarray(_random.lecun_normal(key, shape)),
                                  np.asarray(jax.nn.initializers.lecun_normal()(key, shape)))
    np.testing.assert_array_equal(np.asarray(_random.normal_initializer(1e-3)(key, shape)),
                                  np.asarray(jax.nn.initializers.normal(1e-3)(key, shape)))


def test_conv_modules_initialise_as_flax_does():
    import flax.linen as nn

    from jaxreg.models.conv import Conv, ConvTranspose

    x = jnp.ones((1, 8, 8, 8, 3))
    for ours, theirs, kwargs in [(Conv, nn.Conv, {"kernel_size": (3, 3, 3)}),
                                 (ConvTranspose, nn.ConvTranspose, {"kernel_size": (2, 2, 2), "strides": (2, 2, 2)})]:
        a = ours(5, **kwargs).init(jax.random.key(2), x)["params"]["kernel"]
        b = theirs(5, **kwargs).init(jax.random.key(2), x)["params"]["kernel"]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
