"""Rotations for the affine stage's start: the exponential and logarithm maps, principal axes, search grids. Private.

Rotations of ``ndim``-D points in array axis order: an angle (2-D, ``[[cos, −sin], [sin, cos]]``)
or a rotation vector ``ω`` = axis × angle in radians (3-D, ``exp([ω]×)`` by Rodrigues' formula,
right-handed).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


def rotation(w: jax.Array, ndim: int) -> jax.Array:
    """The rotation matrix of angle ``w[0]`` (2-D) or of the rotation vector ``w`` (3-D)."""
    if ndim == 2:
        c, s = jnp.cos(w[0]), jnp.sin(w[0])
        return jnp.array([[c, -s], [s, c]])
    t2 = jnp.sum(w * w)
    small = t2 < 1e-8
    safe = jnp.where(small, 1.0, t2)
    th = jnp.sqrt(safe)
    a = jnp.where(small, 1.0 - t2 / 6.0, jnp.sin(th) / th)
    b = jnp.where(small, 0.5 - t2 / 24.0, (1.0 - jnp.cos(th)) / safe)
    k = jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    return jnp.eye(3) + a * k + b * (k @ k)


def rotation_vector(r: jax.Array) -> jax.Array:
    """The inverse of :func:`rotation`: ``(1,)`` angle of a 2-D rotation matrix, or the ``(3,)``
    rotation vector (angle in ``[0, π]``) of a 3-D one, through the unit quaternion (stable at
    every angle, 180° included)."""
    if r.shape == (2, 2):
        return jnp.arctan2(r[1, 0], r[0, 0])[None]
    diagonal = jnp.array([jnp.trace(r), r[0, 0], r[1, 1], r[2, 2]])
    # The quaternion from its largest component (Shepperd): w, x, y or z.
    s = jnp.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], r.dtype)
    big = 0.5 * jnp.sqrt(jnp.maximum(1.0 + s @ jnp.array([r[0, 0], r[1, 1], r[2, 2]]), 1e-12))
    anti = jnp.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 4w·(x, y, z)
    sym = jnp.array([r[0, 1] + r[1, 0], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1]])  # 4(xy, xz, yz)
    candidates = jnp.stack([
        jnp.array([big[0], anti[0] / (4 * big[0]), anti[1] / (4 * big[0]), anti[2] / (4 * big[0])]),
        jnp.array([anti[0] / (4 * big[1]), big[1], sym[0] / (4 * big[1]), sym[1] / (4 * big[1])]),
        jnp.array([anti[1] / (4 * big[2]), sym[0] / (4 * big[2]), big[2], sym[2] / (4 * big[2])]),
        jnp.array([anti[2] / (4 * big[3]), sym[1] / (4 * big[3]), sym[2] / (4 * big[3]), big[3]]),
    ])
    q = candidates[jnp.argmax(diagonal)]
    q = q * jnp.where(q[0] < 0, -1.0, 1.0)  # w ≥ 0: the angle in [0, π]
    v = q[1:]
    norm = jnp.sqrt(jnp.sum(v * v))
    angle = 2.0 * jnp.arctan2(norm, q[0])
    return jnp.where(norm < 1e-12, 2.0 * v, v * (angle / jnp.maximum(norm, 1e-12)))


def principal_rotations(cov_fixed: jax.Array, cov_moving: jax.Array) -> jax.Array:
    """Rotations that map the principal axes of the fixed image onto the moving image's.

    ``cov_*``: ``(ndim, ndim)`` second moments (mm²) of the intensities about their centres of
    mass. With ``cov = U Λ Uᵀ`` (axes by increasing variance), ``R = U_m D U_fᵀ`` for every sign
    pattern ``D`` with ``det R = +1`` (an axis has no direction): 2 candidates in 2-D, 4 in 3-D.

    Returns:
      ``(2 or 4, 1 or 3)``: their angles or rotation vectors (:func:`rotation_vector`).
    """
    ndim = cov_fixed.shape[0]
    _, uf = jnp.linalg.eigh(cov_fixed)
    _, um = jnp.linalg.eigh(cov_moving)
    sign = jnp.sign(jnp.linalg.det(uf) * jnp.linalg.det(um))
    out = []
    for head in itertools.product((1.0, -1.0), repeat=ndim - 1):
        last = sign * math.prod(head)  # det D · det U_m · det U_f = +1
        d = jnp.concatenate([jnp.asarray(head, cov_fixed.dtype), last[None]])
        out.append(rotation_vector(um @ jnp.diag(d) @ uf.T))
    return jnp.stack(out)


def coarse_grid(ndim: int) -> np.ndarray:
    """Rotations every 30° (3-D: rotation vectors on a cubic grid of 30° inside the ball of 180°,
    ~900; 2-D: angles every 15°, 24), the identity first. ``(K, 1 or 3)`` radians, float32."""
    step = math.radians(30.0 if ndim == 3 else 15.0)
    if ndim == 2:
        return (step * np.arange(24, dtype=np.float64))[:, None].astype(np.float32)
    k = np.arange(-6, 7, dtype=np.float64)
    grid = step * np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.linalg.norm(grid, axis=1) <= math.pi + 1e-9]
    order = np.argsort(np.linalg.norm(grid, axis=1), kind="stable")  # the identity first
    return grid[order].astype(np.float32)


def fine_grid(ndim: int) -> np.ndarray:
    """Offsets around the best coarse rotation: every 7.5° within ±15° per component (3-D: 125),
    every 3° within ±15° (2-D: 11); the zero offset first. ``(K, 1 or 3)`` radians, float32."""
    if ndim == 2:
        k = math.radians(3.0) * np.array([0, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5], np.float64)
        return k[:, None].astype(np.float32)
    k = math.radians(7.5) * np.arange(-2, 3, dtype=np.float64)
    grid = np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)
    order = np.argsort(np.linalg.norm(grid, axis=1), kind="stable")
    return grid[order].astype(np.float32)
