"""Random-access pair sources: ``len(source)`` pairs, ``source[i]`` → a pair record.

The input pipeline (``jaxreg.data.pipeline``) reads any object with ``__len__`` and
``__getitem__``; these are the ones a config can name in ``data.source``:

* ``"learn2reg"`` (a Learn2Reg task folder), ``"neurite_oasis"``, ``"acdc"``: the folder
  readers, opened on ``data.root``;
* ``"synthetic"``: the built-in dataset, generated on the fly (``data.num_pairs`` per split,
  each split from its own stream of keys);
* ``"tfds"``: a prepared TFDS copy (``data.name``, ``data.tfds_dir``), see
  ``jaxreg.data.tfds_builders``.

``FolderPairs`` and ``SyntheticPairs`` are defined in ``jaxreg.data.random_access`` (which
``tfds_builders`` also reads) and re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from jaxreg.data import acdc, learn2reg, neurite_oasis
from jaxreg.data.random_access import FolderPairs, SyntheticPairs  # defined there, below tfds_builders

__all__ = ["SOURCES", "FolderPairs", "SyntheticPairs", "open_source"]

SOURCES = ("learn2reg", "neurite_oasis", "acdc", "synthetic", "tfds")


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
