"""Random-access pair sources: ``len(source)`` pairs, ``source[i]`` → a pair record.

The input pipeline (``jaxreg.data.pipeline``) reads any object with ``__len__`` and
``__getitem__``; these are the ones a config can name in ``data.source``:

* ``"learn2reg"`` (a Learn2Reg task folder), ``"neurite_oasis"``, ``"acdc"``: the folder
  readers, opened on ``data.root``;
* ``"synthetic"``: the built-in dataset, generated on the fly (``data.num_pairs`` per split,
  each split from its own stream of keys);
* ``"tfds"``: a prepared TFDS copy (``data.name``, ``data.tfds_dir``), see
  ``jaxreg.data.tfds_builders``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxreg.data import acdc, learn2reg, neurite_oasis
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["SOURCES", "FolderPairs", "SyntheticPairs", "open_source"]

SOURCES = ("learn2reg", "neurite_oasis", "acdc", "synthetic", "tfds")


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


def _folder(opener):
    def open_(data: Mapping, split: str):
        if not data.get("root"):
            raise ValueError(f"data.source={data['source']!r} needs `data.root`, the dataset folder.")
        if not os.path.isdir(data["root"]):
            raise FileNotFoundError(f"data.root {data['root']!r} (data.source={data['source']!r}) is not a folder.")
        options = dict(data.get("options") or {})
        try:
            dataset = opener(data["root"], **options)
        except TypeError as err:  # an option the reader does not have
            raise ValueError(f"data.options {sorted(options)} do not fit data.source={data['source']!r}: {err}") from err
        return FolderPairs(dataset, split)

    return open_


def _synthetic(data: Mapping, split: str):
    num_pairs = data.get("num_pairs") or 64
    if not isinstance(num_pairs, (int, float, str)):  # a mapping (or ConfigDict) per split, e.g. {"train": 1000, "val": 16, "test": 32}
        if split not in num_pairs:
            raise ValueError(f"`data.num_pairs` gives no count for the {split!r} split; got {dict(num_pairs)}.")
        num_pairs = num_pairs[split]
    return SyntheticPairs(int(num_pairs), seed=int(data.get("seed") or 0), split=split, **dict(data.get("options") or {}))


def _tfds(data: Mapping, split: str):
    from jaxreg.data import (
        tfds_builders,  # imports tensorflow_datasets only when asked for
    )

    return tfds_builders.TfdsPairs(data["name"], split, data_dir=data.get("tfds_dir") or None)


_OPENERS = {
    "learn2reg": _folder(learn2reg.open_task),
    "neurite_oasis": _folder(neurite_oasis.open_neurite_oasis),
    "acdc": _folder(acdc.open_acdc),
    "synthetic": _synthetic,
    "tfds": _tfds,
}


def open_source(data: Mapping, split: str):
    """Opens the pair source a config's ``data`` section describes.

    Args:
      data: mapping (e.g. ``config.data``) with ``source`` (one of ``SOURCES``) and what it
        needs: ``root`` for folders, ``name``/``tfds_dir`` for TFDS, ``num_pairs`` (one count,
        or a mapping split → count) and ``seed`` for synthetic, and ``options`` passed to the reader (e.g. ``shape`` for
        neurite-oasis, ``spacing`` for ACDC, ``anatomy`` for synthetic).
      split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
      A random-access source of pair records.
    """
    source = data.get("source")
    if source not in _OPENERS:
        raise ValueError(f"`data.source` must be one of {SOURCES}; got {source!r}.")
    if split not in learn2reg.SPLITS:
        raise ValueError(f"`split` must be one of {learn2reg.SPLITS}; got {split!r}.")
    return _OPENERS[source](data, split)
