"""The built-in synthetic dataset: procedural image pairs with a ground-truth deformation.

Everything is generated from a PRNG key (same key → identical pair), in 2-D or 3-D, in JAX
(cheap enough to make pairs on the fly at 64³ on a CPU). Three anatomies:

* ``"brain"``: a head-shaped mask split into many smooth, irregular structures (labels
  1..``num_labels``), like a parcellated brain;
* ``"cardiac"``: concentric rings — blood pool (LV = 3), myocardium (Myo = 2) and a
  crescent (RV = 1), the ACDC label convention — with the ES (moving) frame contracted;
* ``"lung"``: two lungs (label 1, 2) with bright vessel-like blobs, a breathing-like
  deformation (mostly along axis 0), and corresponding keypoints.

Every pair follows the pull convention of the library: the returned ``ddf`` lives on the
fixed grid and ``warp(moving, ddf) ≈ fixed`` (exactly for the labels, by construction:
``fixed_labels = warp(moving_labels, ddf, order=0)``). The deformation is a smooth random
stationary velocity field integrated by scaling and squaring (diffeomorphic) plus, for the
cardiac and lung anatomies, a physiological motion. Intensities: a per-label mean, a smooth
texture that moves with the anatomy, and, drawn independently for each image, a
multiplicative bias field and Gaussian noise.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxreg import _random as random
from jaxreg import spatial

__all__ = ["ANATOMIES", "random_velocity_deformation", "smooth_noise", "synthetic_pair"]

ANATOMIES = ("brain", "cardiac", "lung")


def smooth_noise(key: jax.Array, shape: Sequence[int], *, channels: int = 1, scale: float = 8.0) -> jax.Array:
    """Smooth random field: white noise low-pass filtered with a Gaussian in Fourier space.

    Drawn on a grid ``~scale / 2`` times coarser (periodic there) and cubic-upsampled.

    Args:
      key: PRNG key.
      shape: spatial shape ``S``.
      channels: number of independent fields.
      scale: Gaussian standard deviation in voxels; larger is smoother.

    Returns:
      ``(*S, channels)`` float32 with zero mean and unit standard deviation per channel.
    """
    shape = tuple(int(n) for n in shape)
    # Smooth fields are band-limited: draw them on a grid coarser by ~scale/2 (still >= 2
    # samples per std) and upsample, which keeps the FFTs small at 128³.
    factor = max(1, int(scale // 2))
    coarse = tuple(-(-n // factor) for n in shape)
    axes = tuple(range(len(shape)))
    white = random.normal(key, (*coarse, channels))
    freqs = jnp.meshgrid(*[jnp.fft.fftfreq(n) for n in coarse], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    sigma = scale / factor  # in coarse voxels
    envelope = jnp.exp(-2.0 * (jnp.pi * sigma) ** 2 * k2)[..., None]  # FT of a Gaussian of std sigma
    field = jnp.real(jnp.fft.ifftn(jnp.fft.fftn(white, axes=axes) * envelope, axes=axes))
    if factor > 1:
        field = jax.image.resize(field, (*shape, channels), method="cubic")
    field = field - jnp.mean(field, axis=axes)
    return field / jnp.maximum(jnp.std(field, axis=axes), 1e-12)


def random_velocity_deformation(
    key: jax.Array, shape: Sequence[int], *, max_disp: float, scale: float | None = None
) -> jax.Array:
    """A random smooth diffeomorphic displacement (scaling and squaring of a velocity).

    Args:
      key: PRNG key.
      shape: spatial shape ``S`` (2 or 3 axes).
      max_disp: largest velocity magnitude per component, in voxels (the displacement is of
        the same order).
      scale: smoothness of the velocity (Gaussian std in voxels); default ``min(S) / 10``.

    Returns:
      ``(*S, ndim)`` displacement in voxels.
    """
    scale = min(shape) / 10 if scale is None else scale
    v = smooth_noise(key, shape, channels=len(shape), scale=scale)
    v = v * (max_disp / jnp.maximum(jnp.max(jnp.abs(v)), 1e-6))
    return spatial.integrate_velocity(v, steps=7)


def _normalised_coordinates(shape):
    """Coordinates in [-1, 1] per axis, ``(*S, ndim)``."""
    grid = spatial.identity_grid(shape)
    return 2.0 * grid / (jnp.asarray(shape, jnp.float32) - 1) - 1.0


def _brain_labels(key, shape, num_labels):
    x = _normalised_coordinates(shape)
    k_shape, k_parts = jax.random.split(key)
    # A head: an ellipsoid with a wobbly surface.
    wobble = 0.08 * smooth_noise(k_shape, shape, scale=min(shape) / 8)[..., 0]
    head = jnp.sum((x / 0.8) ** 2, axis=-1) < (1.0 + wobble) ** 2
    # Structures: argmax of smooth random fields, so every label is a smooth blob.
    fields = smooth_noise(k_parts, shape, channels=num_labels, scale=min(shape) / 12)
    return jnp.where(head, jnp.argmax(fields, axis=-1) + 1, 0).astype(jnp.int32)


def _cardiac_labels(shape, radius_scale=1.0):
    x = _normalised_coordinates(shape)
    # Rings in the last two axes (the short-axis plane), a tube along the first axis in 3-D.
    r_lv = jnp.sqrt(jnp.sum(x[..., -2:] ** 2, axis=-1))
    rv_centre = jnp.asarray([0.0, -0.45])
    r_rv = jnp.sqrt(jnp.sum((x[..., -2:] - rv_centre) ** 2, axis=-1))
    blood, wall = 0.25 * radius_scale, 0.40 * radius_scale
    labels = jnp.where(r_rv < 0.42, 1, 0)  # RV crescent (overwritten by the LV below)
    labels = jnp.where(r_lv < wall, 2, labels)  # myocardium
    labels = jnp.where(r_lv < blood, 3, labels)  # LV blood pool
    return labels.astype(jnp.int32)


def _lung_labels(shape):
    x = _normalised_coordinates(shape)
    ndim = len(shape)
    radii = jnp.asarray([0.8] + [0.55] * (ndim - 2) + [0.33])  # tall, narrow ellipsoids

    def lung(side):
        centre = jnp.asarray([0.0] * (ndim - 1) + [0.42 * side])
        return jnp.sum(((x - centre) / radii) ** 2, axis=-1) < 1

    left, right = lung(-1), lung(1)
    return jnp.where(left, 1, jnp.where(right, 2, 0)).astype(jnp.int32)


def _physiological_motion(anatomy, shape, amount):
    """A deterministic motion field (voxels, pull) for the anatomy; ``amount`` in [0, 1]."""
    x = _normalised_coordinates(shape)
    half = (jnp.asarray(shape, jnp.float32) - 1) / 2
    if anatomy == "cardiac":
        # ES (moving) is contracted: a fixed voxel at radius r reads the moving image at a
        # smaller radius, i.e. the pull field points towards the centre in the ring plane.
        r = jnp.sqrt(jnp.sum(x[..., -2:] ** 2, axis=-1, keepdims=True))
        inward = -0.3 * amount * x[..., -2:] * jnp.exp(-((r / 0.6) ** 2))
        motion = jnp.concatenate([jnp.zeros_like(x[..., :-2]), inward], axis=-1)
        return motion * half
    if anatomy == "lung":
        # Breathing: the lungs stretch along axis 0 (diaphragm), a little in the others.
        along = -0.12 * amount * (x[..., :1] + 1.0) ** 2 / 2
        across = 0.04 * amount * x[..., 1:]
        return jnp.concatenate([along, across], axis=-1) * half
    return jnp.zeros_like(x)


def _intensities(key, labels, texture, num_labels):
    """Per-label means in [0.2, 1] (background 0) plus a smooth texture inside the anatomy."""
    means = jnp.concatenate([jnp.zeros(1), jax.random.uniform(key, (num_labels + 1,), minval=0.2, maxval=1.0)])
    return means[labels] + 0.05 * texture * (labels > 0)


def _corrupt(key_bias, key_noise, image, noise_std):
    bias = 1.0 + 0.1 * smooth_noise(key_bias, image.shape, scale=min(image.shape) / 4)[..., 0]
    return image * bias + noise_std * random.normal(key_noise, image.shape)


@functools.partial(jax.jit, static_argnames=("shape", "anatomy", "num_labels", "num_points"))
def _pair(key, *, shape, anatomy, max_disp, motion, noise_std, num_labels, num_points):
    k_anat, k_tex, k_int, k_def, k_fix, k_mov, k_pts = jax.random.split(key, 7)
    if anatomy == "brain":
        moving_labels = _brain_labels(k_anat, shape, num_labels)
    elif anatomy == "cardiac":
        moving_labels = _cardiac_labels(shape)
    else:
        moving_labels = _lung_labels(shape)
    n_intensity = max(num_labels, 3)
    texture = smooth_noise(k_tex, shape, scale=2.0)[..., 0]
    clean = _intensities(k_int, moving_labels, texture, n_intensity)
    if anatomy == "lung":
        # Bright vessel-like blobs inside the lungs carry the texture that keypoints track.
        blobs = jnp.maximum(smooth_noise(k_tex, shape, scale=1.5)[..., 0] - 1.5, 0.0)
        clean = jnp.where(moving_labels > 0, 0.15 + 0.8 * blobs, 0.6)
    # Ground truth: physiology composed with a random diffeomorphism (both smooth).
    random_part = random_velocity_deformation(k_def, shape, max_disp=max_disp)
    ddf = spatial.compose(_physiological_motion(anatomy, shape, motion), random_part)
    fixed_labels = spatial.warp(moving_labels, ddf, order=0)
    fixed_clean = spatial.warp(clean, ddf)
    fixed = _corrupt(*jax.random.split(k_fix), fixed_clean, noise_std)
    moving = _corrupt(*jax.random.split(k_mov), clean, noise_std)
    out = dict(fixed=fixed, moving=moving, fixed_labels=fixed_labels, moving_labels=moving_labels, ddf=ddf)
    if num_points:
        # Landmarks drawn inside the fixed anatomy; their partners follow the true field.
        weights = (fixed_labels > 0).reshape(-1).astype(jnp.float32)
        idx = jax.random.choice(k_pts, weights.size, (num_points,), replace=False, p=weights / jnp.sum(weights))
        fixed_points = jnp.stack(jnp.unravel_index(idx, shape), axis=-1).astype(jnp.float32)
        out["fixed_points"] = fixed_points
        out["moving_points"] = spatial.warp_points(fixed_points, ddf)
    return out


def synthetic_pair(
    key: jax.Array,
    shape: Sequence[int] = (64, 64, 64),
    *,
    anatomy: str = "brain",
    max_disp: float | None = None,
    motion: float = 1.0,
    noise_std: float = 0.03,
    num_labels: int = 12,
    num_points: int | None = None,
) -> dict[str, jax.Array]:
    """One synthetic registration pair with its ground truth.

    Args:
      key: PRNG key; the same key and options give an identical pair.
      shape: spatial shape ``S``, 2 or 3 axes, each >= 16.
      anatomy: one of ``ANATOMIES``.
      max_disp: amplitude of the random velocity in voxels; default ``min(S) / 10``.
      motion: strength of the physiological motion (cardiac contraction, breathing), 0..1.
      noise_std: standard deviation of the Gaussian noise (intensities are in ~[0, 1]).
      num_labels: structures of the brain anatomy (cardiac has 3, lung 2).
      num_points: keypoints to return; default 0, or 64 for the lung anatomy.

    Returns:
      dict of ``fixed`` and ``moving`` ``(*S)`` float32 images, ``fixed_labels`` and
      ``moving_labels`` ``(*S)`` int32, ``ddf`` ``(*S, ndim)`` (pull, voxels; fixed grid) and,
      with keypoints, ``fixed_points``/``moving_points`` ``(N, ndim)`` voxel coordinates with
      ``moving_points = fixed_points + ddf(fixed_points)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 16:
        raise ValueError(f"`shape` must be 2 or 3 sides, each >= 16; got {shape}.")
    if anatomy not in ANATOMIES:
        raise ValueError(f"`anatomy` must be one of {ANATOMIES}; got {anatomy!r}.")
    if not 0.0 <= motion <= 1.0:
        raise ValueError(f"`motion` must be in [0, 1]; got {motion!r}.")
    if num_labels < 1:
        raise ValueError(f"`num_labels` must be >= 1; got {num_labels!r}.")
    if num_points is None:
        num_points = 64 if anatomy == "lung" else 0
    max_disp = min(shape) / 10 if max_disp is None else float(max_disp)
    return _pair(
        key,
        shape=shape,
        anatomy=anatomy,
        max_disp=max_disp,
        motion=float(motion),
        noise_std=float(noise_std),
        num_labels=int(num_labels) if anatomy == "brain" else 3,
        num_points=int(num_points),
    )
