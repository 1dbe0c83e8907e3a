"""Training at a lower resolution (``data.downsample``, the NLST configs) and scoring at full size.

References: scikit-image's ``block_reduce`` (the images), closed forms (world positions of keypoints,
constant and linear fields brought back to full size), and numpy/scipy on the files ``eval.py`` writes
(TRE from the Learn2Reg displacement file at the original keypoints).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import block_reduce

from jaxreg import sharding
from jaxreg.data import pipeline, transforms
from jaxreg.data.learn2reg import write_learn2reg
from jaxreg.data.synthetic import synthetic_pair


def _record(shape=(20, 16, 18)):
    pair = {k: np.asarray(v) for k, v in synthetic_pair(jax.random.key(0), shape, anatomy="lung").items()}
    affine = np.array([[0.0, 0.0, 1.5, -20.0], [-1.2, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    return {"fixed": pair["fixed"], "moving": pair["moving"], "fixed_labels": pair["fixed_labels"],
            "moving_labels": pair["moving_labels"], "fixed_points": pair["fixed_points"],
            "moving_points": pair["moving_points"], "spacing": np.array([1.2, 2.0, 1.5]),
            "moving_spacing": np.array([1.2, 2.0, 1.5]), "affine": affine, "ids": "0001"}


def test_a_pair_at_half_size_is_block_means_at_the_same_world_positions():
    record = _record()
    small = transforms.downsample(record, 2)
    for side in ("fixed", "moving"):
        np.testing.assert_allclose(small[side], block_reduce(record[side], (2, 2, 2), np.mean), rtol=1e-6)
        np.testing.assert_array_equal(small[f"{side}_labels"], record[f"{side}_labels"][1::2, 1::2, 1::2])
        # a keypoint names the same world point on both grids
        old = (record["affine"] @ np.c_[record[f"{side}_points"], np.ones(len(record[f"{side}_points"]))].T).T
        new = (small["affine"] @ np.c_[small[f"{side}_points"], np.ones(len(small[f"{side}_points"]))].T).T
        np.testing.assert_allclose(new, old, atol=1e-9)
    # each new voxel's world position is the centre of its 2³ block
    centre = record["affine"] @ [0.5, 0.5, 0.5, 1.0]
    np.testing.assert_allclose(small["affine"] @ [0, 0, 0, 1.0], centre, atol=1e-12)
    np.testing.assert_allclose(small["spacing"], 2 * record["spacing"])
    assert transforms.downsample(record, 1) is record
    with pytest.raises(ValueError, match="data.downsample"):
        transforms.downsample(_record((17, 16, 18)), 2)
    with pytest.raises(ValueError, match="data.downsample"):
        pipeline.downsample_factor({"downsample": 0})


def test_a_field_at_half_size_comes_back_in_full_size_voxels():
    """A network's constant field c (half-size voxels) is 2c full-size voxels; a linear one, u(j) = a·j,
    becomes 2a·((i + 0.5)/2 − 0.5) in the interior, the same displacement in mm."""
    fixed = jnp.zeros((1, 16, 12, 8))
    seen = []

    def constant(params, fixed, moving):
        seen.append(fixed.shape)
        return jnp.broadcast_to(jnp.asarray([0.5, -1.0, 0.25]), fixed.shape + (3,))

    full = sharding.at_full_size(constant, 2)(None, fixed, fixed)
    assert seen[-1] == (1, 8, 6, 4) and full.shape == (1, 16, 12, 8, 3)
    np.testing.assert_allclose(np.asarray(full), np.broadcast_to([1.0, -2.0, 0.5], full.shape), atol=1e-6)

    def linear(params, fixed, moving):
        j = jnp.arange(fixed.shape[1], dtype=jnp.float32)
        return jnp.broadcast_to((0.1 * j)[None, :, None, None, None], fixed.shape + (3,))

    full = np.asarray(sharding.at_full_size(linear, 2)(None, fixed, fixed))
    i = np.arange(1, 15)  # away from the clamped edges
    np.testing.assert_allclose(full[0, 1:15, 3, 3, 0], 2 * 0.1 * ((i + 0.5) / 2 - 0.5), atol=1e-5)
    # block means of the images, as the training pairs were shrunk
    image = jnp.asarray(np.random.default_rng(0).random((1, 16, 12, 8)), jnp.float32)
    seen_images = []
    sharding.at_full_size(lambda p, f, m: seen_images.append(f) or jnp.zeros(f.shape + (3,)), 2)(None, image, image)
    np.testing.assert_allclose(np.asarray(seen_images[0][0]), block_reduce(np.asarray(image[0]), (2, 2, 2), np.mean),
                               rtol=1e-5)


@pytest.mark.slow
def test_nlst_config_trains_at_half_size_and_scores_full_size_fields(tmp_path):
    """``configs/voxelmorph_nlst.py`` (``data.downsample = 2``) on a synthetic NLST folder of 32³ pairs:
    the network sees 16³ pairs, ``eval.py`` writes 32³ displacement files, and its TRE is that of the
    file at the original keypoints (numpy/scipy)."""
    from configs import voxelmorph_nlst

    from jaxreg.evaluation.evaluate import evaluate_workdir
    from jaxreg.training.loop import train_and_evaluate

    root = write_learn2reg(tmp_path / "NLST", task="NLST", num_cases=4, num_val=1, shape=(32, 32, 32))
    config = voxelmorph_nlst.get_config()
    assert config.data.downsample == 2
    config.data.root = str(root)
    config.data.num_threads = 1
    config.model.encoder, config.model.decoder = (4, 8), (8, 8, 4)
    config.training.num_steps, config.training.eval_every, config.training.checkpoint_every = 2, 2, 2
    config.training.log_every, config.training.progress = 1, False
    config.eval.save_disp, config.eval.num_figures, config.eval.with_hd95 = True, 0, False
    batches = pipeline.from_config(config.data, "train")
    assert next(iter(batches))["fixed"].shape == (1, 16, 16, 16)
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    result = evaluate_workdir(workdir, progress=False)
    assert result["split"] == "val" and result["num_pairs"] == 1
    disp_file = next((workdir / "eval" / "val" / "disp").glob("*.nii.gz"))
    disp = np.asarray(nib.load(disp_file).dataobj, np.float64)
    assert disp.shape == (32, 32, 32, 3)
    record = next(iter(pipeline.records(config.data, "val")))
    fixed_points, moving_points = np.asarray(record["fixed_points"]), np.asarray(record["moving_points"])
    moved = fixed_points + np.stack([ndimage.map_coordinates(disp[..., k], fixed_points.T, order=1, mode="nearest")
                                     for k in range(3)], -1)
    tre = np.mean(np.linalg.norm((moved - moving_points) * np.asarray(record["spacing"]), axis=-1))
    assert result["metrics"]["tre"] == pytest.approx(tre, rel=1e-4)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("split") == "val" and "tre" in row for row in logged)  # validation at full size too
