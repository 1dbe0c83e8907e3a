"""The two random-access pair sources over our own data: a folder reader's split, synthetic pairs.

``FolderPairs`` serves the pairs of one split of a folder reader; ``SyntheticPairs`` generates
the built-in synthetic dataset on the fly. ``jaxreg.data.sources`` opens them from a config and
``jaxreg.data.tfds_builders`` reads them to prepare the TFDS copies, so they live here, below
both.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxreg.data import learn2reg
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["FolderPairs", "SyntheticPairs"]


class FolderPairs:
    """The pairs of one split of a folder reader (``pairs(split)`` + ``load_pair``)."""

    def __init__(self, dataset: Any, split: str):
        self.dataset, self.split = dataset, split
        self.pairs = dataset.pairs(split)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.load_pair(*self.pairs[index])

    def __repr__(self) -> str:
        return f"FolderPairs({type(self.dataset).__name__} at {self.dataset.root}, split={self.split!r}, {len(self)} pairs)"


class SyntheticPairs:
    """``num_pairs`` synthetic pairs; pair ``i`` of a split is always the same.

    Records also hold the ground truth ``ddf`` (pull, voxels), a unit ``spacing`` and an
    identity ``affine``.

    Args:
      num_pairs: length of the source.
      seed: base seed; ``split`` selects an independent stream, so validation pairs are
        never training pairs.
      split: ``"train"``, ``"val"`` or ``"test"``.
      **options: passed to :func:`jaxreg.data.synthetic_pair` (``shape``, ``anatomy``, ...).
    """

    def __init__(self, num_pairs: int, *, seed: int = 0, split: str = "train", **options):
        if num_pairs < 1:
            raise ValueError(f"`num_pairs` must be >= 1; got {num_pairs}.")
        if split not in learn2reg.SPLITS:
            raise ValueError(f"`split` must be one of {learn2reg.SPLITS}; got {split!r}.")
        self.num_pairs, self.split, self.options = int(num_pairs), split, options
        self._key = jax.random.fold_in(jax.random.key(seed), learn2reg.SPLITS.index(split))
        # Validate the options now, not in a loader thread; eval_shape computes nothing.
        jax.eval_shape(lambda key: synthetic_pair(key, **options), self._key)

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"pair {index} of a synthetic source of {self.num_pairs}")
        pair = {k: np.asarray(v) for k, v in synthetic_pair(jax.random.fold_in(self._key, index), **self.options).items()}
        ndim = pair["fixed"].ndim
        pair["spacing"] = pair["moving_spacing"] = np.ones(ndim)
        pair["affine"] = np.eye(4)
        pair["ids"] = f"synthetic_{self.split}_{index:05d}"
        return pair
