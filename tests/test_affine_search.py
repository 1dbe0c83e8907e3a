"""The affine stage's start for large misalignments: ``init="search"`` (principal axes and a grid of rotations).

References: scipy's ``Rotation`` for the exponential and logarithm maps of rotations, numpy's
eigendecomposition for principal axes, and known rotations of a synthetic object
(``scipy.ndimage.affine_transform``) for the recovery.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxreg import _rotations as rotations
from jaxreg.optimize_affine import optimize_affine
from test_optimize_affine import _about_centre, _grid, _moving_for, _textured_object

AXIS = np.array([1.0, 0.4, -0.2]) / np.linalg.norm([1.0, 0.4, -0.2])


# ----------------------------------------------------------------------------- the maps
def _rotvecs():
    rng = np.random.default_rng(0)
    random = Rotation.random(20, random_state=1).as_rotvec()
    unit = rng.normal(size=(6, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    near_pi = unit * np.array([np.pi, np.pi - 1e-4, np.pi - 0.05, 1e-7, 0.3, 2.0])[:, None]
    return np.concatenate([random, near_pi, np.eye(3) * np.pi, np.zeros((1, 3))])


def test_rotation_is_scipys_rotation_of_a_rotation_vector():
    for w in _rotvecs():
        np.testing.assert_allclose(np.asarray(rotations.rotation(jnp.asarray(w, jnp.float32), 3)),
                                   Rotation.from_rotvec(w).as_matrix(), atol=2e-6)


def test_rotation_vector_is_the_logarithm():
    for w in _rotvecs():
        matrix = Rotation.from_rotvec(w).as_matrix()
        got = np.asarray(rotations.rotation_vector(jnp.asarray(matrix, jnp.float32)), np.float64)
        # the same rotation (at 180° ω and −ω both are), with scipy's angle in [0, π]
        np.testing.assert_allclose(Rotation.from_rotvec(got).as_matrix(), matrix, atol=2e-5)
        assert np.linalg.norm(got) == pytest.approx(Rotation.from_matrix(matrix).magnitude(), abs=2e-4)
        if np.linalg.norm(w) < np.pi - 1e-2:
            np.testing.assert_allclose(got, Rotation.from_matrix(matrix).as_rotvec(), atol=2e-5)
    for angle in (0.0, 0.4, -2.5, np.pi - 1e-3):
        c, s = np.cos(angle), np.sin(angle)
        got = rotations.rotation_vector(jnp.asarray([[c, -s], [s, c]], jnp.float32))
        assert float(got[0]) == pytest.approx(angle, abs=1e-5)


def test_principal_rotations_map_the_fixed_axes_onto_the_moving_axes():
    truth = Rotation.from_rotvec(np.deg2rad(70.0) * AXIS).as_matrix()
    cov_fixed = np.diag([9.0, 4.0, 1.0])
    cov_moving = truth @ cov_fixed @ truth.T
    candidates = np.asarray(rotations.principal_rotations(jnp.asarray(cov_fixed, jnp.float32),
                                                          jnp.asarray(cov_moving, jnp.float32)), np.float64)
    assert candidates.shape == (4, 3)
    errors = []
    for w in candidates:
        r = Rotation.from_rotvec(w).as_matrix()
        np.testing.assert_allclose(r @ cov_fixed @ r.T, cov_moving, atol=1e-4)  # each one maps the axes
        errors.append(np.rad2deg(Rotation.from_matrix(r @ truth.T).magnitude()))
    assert min(errors) < 0.01, errors  # and one of them is the rotation
    # the eigenvalues are numpy's: the four differ by 180° turns about the principal axes
    assert sorted(np.round(errors[:]).tolist())[1] == pytest.approx(180.0, abs=0.5)


def test_the_coarse_grid_leaves_no_rotation_further_than_27_degrees():
    grid = Rotation.from_rotvec(rotations.coarse_grid(3).astype(np.float64))
    assert np.allclose(rotations.coarse_grid(3)[0], 0.0) and np.allclose(rotations.fine_grid(3)[0], 0.0)
    for r in Rotation.random(300, random_state=2):
        assert np.min((grid * r.inv()).magnitude()) < np.deg2rad(27.0)
    angles = np.rad2deg(rotations.coarse_grid(2)[:, 0])
    assert np.max(np.diff(np.sort(np.append(angles, 360.0)))) == pytest.approx(15.0, abs=1e-3)


# ----------------------------------------------------------------------------- recovery
@pytest.fixture(scope="module")
def volume():
    return _textured_object((20, 20, 20))


def _errors(result, truth, inside):
    points = np.vstack([_grid(inside.shape)[:, inside], np.ones(inside.sum())])
    voxels = np.linalg.norm((result.matrix @ points - truth @ points)[:-1], axis=0).max()
    n = inside.ndim
    residual = result.matrix[:n, :n] @ truth[:n, :n].T
    degrees = (np.rad2deg(Rotation.from_matrix(residual).magnitude()) if n == 3
               else abs(np.rad2deg(np.arctan2(residual[1, 0], residual[0, 0]))))
    return degrees, voxels


@pytest.mark.parametrize("degrees", [30.0, 60.0, 90.0])
def test_search_recovers_large_3d_rotations_within_2_degrees_and_1_voxel(volume, degrees):
    fixed, inside = volume
    truth = _about_centre(Rotation.from_rotvec(np.deg2rad(degrees) * AXIS).as_matrix(), (1.0, -1.5, 0.5), fixed.shape)
    moving = _moving_for(fixed, truth)
    angle, voxels = _errors(optimize_affine(fixed, moving, transform="rigid", init="search"), truth, inside)
    assert angle < 2.0 and voxels < 1.0, (angle, voxels)
    if degrees == 90.0:  # the centre-of-mass start alone stays in another basin
        angle, voxels = _errors(optimize_affine(fixed, moving, transform="rigid", init="com"), truth, inside)
        assert angle > 10.0 and voxels > 3.0, (angle, voxels)


def test_search_recovers_a_2d_rotation_of_150_degrees_with_the_affine_transform():
    fixed, inside = _textured_object((40, 36))
    a = np.deg2rad(150.0)
    truth = _about_centre(np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]), (1.0, -2.0), fixed.shape)
    moving = _moving_for(fixed, truth)
    angle, voxels = _errors(optimize_affine(fixed, moving, transform="affine", init="search"), truth, inside)
    assert angle < 2.0 and voxels < 1.0, (angle, voxels)


def _turned_2d(fixed, degrees):
    a = np.deg2rad(degrees)
    return _moving_for(fixed, _about_centre(np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]), (0, 0),
                                            fixed.shape))


def test_search_in_a_batch_gives_each_pair_its_own_start():
    fixed, _ = _textured_object((24, 20))
    movings = [_turned_2d(fixed, d) for d in (0.0, 120.0)]
    # One step of a vanishing size: the matrices are the starts the search chose.
    options = {"transform": "rigid", "init": "search", "steps": 1, "learning_rate": 1e-9}
    together = optimize_affine(np.stack([fixed, fixed]), np.stack(movings), batch=True, **options)
    for k, moving in enumerate(movings):
        alone = optimize_affine(fixed, moving, **options)
        # float rounding only (a batched eigendecomposition of the principal axes differs in ~1e-5)
        np.testing.assert_allclose(together.matrix[k], alone.matrix, atol=2e-3)
    assert not np.allclose(together.matrix[0], together.matrix[1], atol=0.1)


def test_search_under_jit_equals_the_eager_start():
    """Under ``jit`` the search is traced into the caller's program (no stored program): same start."""
    from jaxreg import register_traceable

    fixed, _ = _textured_object((24, 20))
    moving = _turned_2d(fixed, 80.0)
    options = {"affine": "rigid", "affine_options": {"init": "search", "steps": 5}, "levels": (1,), "steps": (1,)}
    traced = jax.jit(lambda f, m: register_traceable(f, m, **options).matrix)(fixed, moving)
    eager = register_traceable(fixed, moving, **options).matrix
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-4)
