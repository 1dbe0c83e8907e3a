"""Stored programs (``jaxreg._programs.stored_jit``): the results of ``jax.jit``, loaded instead of traced.

The reference is JAX's own ``jax.jit`` of the same function. A "later process" is a new
:class:`StoredJit` of the function (empty in-memory table) over the same folder; the counts
say whether it traced and exported the program or loaded it from disk.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import _programs
from jaxreg._programs import StoredJit


def adam_steps(carry, target, weight, *, steps, scale):
    """``steps`` Adam steps on ``weight · ‖params − target‖²`` from ``carry = (params, state)``
    (a tree with optax NamedTuples; ``weight`` may be ``None``)."""
    opt = optax.adam(0.1)

    def step(carry, _):
        params, state = carry
        w = 1.0 if weight is None else weight
        loss, grad = jax.value_and_grad(lambda p: jnp.sum(w * (p - target) ** 2))(params)
        updates, state = opt.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), loss

    carry, losses = jax.lax.scan(step, carry, None, length=steps)
    return carry, losses * scale


@pytest.fixture
def folder(tmp_path, monkeypatch):
    # (JAX's own cache folder is left alone: the test process keeps compiling into it)
    monkeypatch.setattr(_programs, "folder", lambda: tmp_path / _programs.FOLDER)
    before = dict(_programs.COUNTS)
    yield tmp_path / _programs.FOLDER
    _programs.COUNTS.update(before)


def _counts():
    return dict(_programs.COUNTS)


def _arguments(n=5, seed=0):
    rng = np.random.default_rng(seed)
    params = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
    return (params, optax.adam(0.1).init(params)), target


def test_matches_jax_jit_and_a_later_process_loads_it(folder):
    carry, target = _arguments()
    expected = jax.jit(adam_steps, static_argnames=("steps", "scale"))(carry, target, None, steps=7, scale=2.0)
    start = _counts()
    got = StoredJit(adam_steps, ("steps", "scale"))(carry, target, None, steps=7, scale=2.0)
    assert _counts()["exported"] == start["exported"] + 1 and _counts()["loaded"] == start["loaded"]
    assert len(list(folder.glob("*" + _programs.SUFFIX))) == 1
    chex_equal = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)  # noqa: E731
    jax.tree_util.tree_map(chex_equal, got, expected)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)  # optax states come back

    later = StoredJit(adam_steps, ("steps", "scale"))  # a later process: nothing in memory
    again = later(carry, target, None, steps=7, scale=2.0)
    assert _counts()["exported"] == start["exported"] + 1 and _counts()["loaded"] == start["loaded"] + 1
    jax.tree_util.tree_map(chex_equal, again, expected)


def test_static_values_and_shapes_are_separate_programs(folder):
    carry, target = _arguments()
    fn = StoredJit(adam_steps, ("steps", "scale"))
    fn(carry, target, None, steps=3, scale=1.0)
    fn(carry, target, None, steps=4, scale=1.0)
    fn(carry, target, jnp.float32(2.0), steps=3, scale=1.0)  # a weight where there was None
    bigger, target6 = _arguments(6)
    out = fn(bigger, target6, None, steps=3, scale=1.0)
    assert len(list(folder.glob("*" + _programs.SUFFIX))) == 4
    reference = jax.jit(adam_steps, static_argnames=("steps", "scale"))(bigger, target6, None, steps=3, scale=1.0)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(reference[1]), rtol=1e-6)


def test_static_arguments_by_position_or_name(folder):
    def pad(image, shape, *, edge=False):
        return jnp.pad(image, [(0, s - n) for s, n in zip(shape, image.shape)], mode="edge" if edge else "constant")

    fn = StoredJit(pad, ("shape", "edge"))
    image = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(fn(image, (3, 4), edge=True)), np.pad(np.arange(6.0).reshape(2, 3),
                                                                               [(0, 1), (0, 1)], mode="edge"))
    np.testing.assert_array_equal(np.asarray(fn(image, shape=(3, 4))), np.pad(np.arange(6.0).reshape(2, 3),
                                                                              [(0, 1), (0, 1)]))


def test_a_broken_file_is_exported_again(folder):
    carry, target = _arguments()
    StoredJit(adam_steps, ("steps", "scale"))(carry, target, None, steps=5, scale=1.0)
    (path,) = folder.glob("*" + _programs.SUFFIX)
    path.write_bytes(path.read_bytes()[:100])  # a write cut short by a crash (not possible through
    start = _counts()                          # the rename, but a disk can still lose a file's tail)
    got = StoredJit(adam_steps, ("steps", "scale"))(carry, target, None, steps=5, scale=1.0)
    assert _counts()["exported"] == start["exported"] + 1
    reference = jax.jit(adam_steps, static_argnames=("steps", "scale"))(carry, target, None, steps=5, scale=1.0)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(reference[1]), rtol=1e-6)
    assert len(path.read_bytes()) > 100  # replaced by a whole program
    assert not list(folder.glob("*.tmp"))


def test_edited_source_is_a_new_program(folder, monkeypatch):
    carry, target = _arguments()
    StoredJit(adam_steps, ("steps", "scale"))(carry, target, None, steps=5, scale=1.0)
    monkeypatch.setattr(_programs, "_source_digest", lambda: "an edited jaxreg")
    start = _counts()
    StoredJit(adam_steps, ("steps", "scale"))(carry, target, None, steps=5, scale=1.0)
    assert _counts()["exported"] == start["exported"] + 1
    assert len(list(folder.glob("*" + _programs.SUFFIX))) == 2


def test_under_jit_vmap_and_grad_it_is_plain_jit(folder):
    fn = StoredJit(lambda x, *, power: jnp.sum(x ** power), ("power",))
    x = jnp.arange(1.0, 4.0)
    assert float(jax.grad(lambda x: fn(x, power=3))(x)[2]) == pytest.approx(3 * 3.0 ** 2)  # d/dx x³ = 3x²
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda r: fn(r, power=2))(jnp.stack([x, 2 * x]))), [14.0, 56.0])
    assert float(jax.jit(lambda x: fn(x, power=1))(x)) == 6.0
    assert not folder.exists()  # nothing traced from outside was stored


def test_the_folder_is_beside_the_compilation_cache():
    cache = jax.config.jax_compilation_cache_dir  # the test run's cache (tests/conftest.py)
    assert cache and _programs.folder() == Path(cache) / _programs.FOLDER


def test_without_a_cache_folder_nothing_is_stored(monkeypatch):
    monkeypatch.setattr(_programs, "folder", lambda: None)
    start = _counts()
    fn = StoredJit(lambda x: x * 2.0)
    np.testing.assert_array_equal(np.asarray(fn(jnp.ones(3))), [2.0, 2.0, 2.0])
    assert _counts() == start
