"""The input pipeline: a pair source → shuffled, transformed, batched numpy, prefetched.

Built on Grain (``grain.MapDataset``): random access makes every step reproducible from the
seed alone, so a resumed run continues with exactly the batches it would have seen
(``start_step``). Reading and transforms run in background threads (NIfTI decompression and
scipy release the GIL), ``num_threads`` pairs at a time, ``prefetch`` ahead of the consumer.

A multi-process job sees one global stream: every process builds the same shuffled,
augmented sequence of pairs (augmentation is seeded by a pair's position in that sequence,
not by the process) and reads only its rows of every global batch (``rows``, from
``jaxreg.sharding.host_rows``). The global batches are therefore the same however
the devices are spread over processes: 2 processes × 1 device train exactly like
1 process × 2 devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from jaxreg.data import transforms
from jaxreg.data.sources import open_source

__all__ = ["DEFAULT_KEYS", "batches", "collate", "from_config", "make_transform", "num_records", "records"]

#: What a training batch holds unless told otherwise (present keys only).
DEFAULT_KEYS = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask")


def collate(records: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Stacks pair records into a batch: arrays ``(B, ...)``, strings into a ``(B,)`` array.

    Raises:
      ValueError: an entry has different shapes across the records (crop or resample the
        dataset, or leave the entry out of ``keys``).
    """
    out = {}
    for key in records[0]:
        values = [r[key] for r in records]
        if isinstance(values[0], str):
            out[key] = np.asarray(values)
            continue
        shapes = {np.shape(v) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {key!r}: shapes differ across pairs {sorted(shapes)}; "
                             "crop/resample the data (data.options) or drop it from data.keys.")
        out[key] = np.stack(values)
    return out


def _select(pair: Mapping, keys: Sequence[str] | None) -> dict:
    if keys is None:
        return {k: pair[k] for k in DEFAULT_KEYS if k in pair}
    missing = [k for k in keys if k not in pair]
    if missing:
        raise ValueError(f"pairs of this source have no {missing}; available: {sorted(pair)}.")
    return {k: pair[k] for k in keys}


class _BatchRows:
    """Rows ``start:stop`` of every consecutive block of ``size`` elements of ``parent``."""

    def __init__(self, parent, *, start: int, stop: int, size: int):
        self.parent, self.start, self.width, self.size = parent, start, stop - start, size

    def __len__(self) -> int:
        return (len(self.parent) // self.size) * self.width

    def __getitem__(self, index: int):
        block, row = divmod(int(index), self.width)
        return self.parent[block * self.size + self.start + row]


def batches(
    source,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    keys: Sequence[str] | None = None,
    transform: Callable[[dict, np.random.Generator], dict] | None = None,
    drop_remainder: bool = True,
    start_step: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
    rows: tuple[int, int] | None = None,
) -> grain.IterDataset:
    """Batches of pair records from a random-access source.

    Args:
      source: ``len(source)`` pairs and ``source[i]`` → pair record (``jaxreg.data.sources``).
      batch_size: pairs per **global** batch (all processes together).
      seed: shuffling and augmentation seed; the same seed gives the same batches.
      shuffle: reshuffle every epoch (a new order per epoch, from ``seed``).
      num_epochs: passes over the data; ``None`` repeats forever.
      keys: entries to keep (after ``transform``); default the present ``DEFAULT_KEYS``.
      transform: ``f(pair, rng) -> pair`` run per pair in the reader threads, e.g. from
        :func:`make_transform`; seeded by the pair's position in the global stream.
      drop_remainder: drop a last, smaller batch (training wants fixed shapes).
      start_step: skip this many batches (resuming at a step gives the batches the
        uninterrupted run would have had).
      num_threads: pairs read and transformed in parallel.
      prefetch: pairs buffered ahead of the consumer.
      rows: ``(start, stop)``: the rows of every global batch this process reads
        (``jaxreg.sharding.host_rows``); ``None``: all of them (one process).

    Returns:
      An iterable of ``dict`` batches of numpy arrays ``(stop - start, ...)``.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
    start_row, stop_row = (0, batch_size) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start_row < stop_row <= batch_size:
        raise ValueError(f"`rows` must be (start, stop) with 0 <= start < stop <= batch_size={batch_size}; got {rows}.")
    if len(source) < (batch_size if drop_remainder else 1):
        raise ValueError(f"a source of {len(source)} pairs cannot fill a global batch of {batch_size}.")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if transform is not None:
        # Seeded per element of the global stream: reproducible, different in every epoch,
        # the same whichever process reads it.
        ds = ds.random_map(transform, seed=seed * 1000003)
    ds = ds.map(functools.partial(_select, keys=keys))
    if (start_row, stop_row) != (0, batch_size):
        if not drop_remainder:
            raise ValueError("reading some `rows` of each batch needs `drop_remainder=True`.")
        ds = grain.MapDataset.source(_BatchRows(ds, start=start_row, stop=stop_row, size=batch_size))
    width = stop_row - start_row
    if start_step:
        ds = ds[start_step * width:]
    read = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    return ds.to_iter_dataset(read).batch(width, drop_remainder=drop_remainder, batch_fn=collate)


def make_transform(data: Mapping) -> Callable[[dict, np.random.Generator], dict] | None:
    """The per-pair transform a ``data`` config section asks for, or ``None``.

    Reads ``data.downsample`` (the resolution the network sees: :func:`transforms.downsample`,
    first, so that augmentation runs on the smaller pair), ``data.normalize`` (a
    ``transforms.NORMALIZATIONS`` name or ``None``) and ``data.augment`` with optional
    ``flip_axes``, ``transpose_axes`` and ``affine`` (the keyword arguments of
    :func:`transforms.random_affine`, or ``None``).
    """
    steps = []
    factor = downsample_factor(data)
    if factor > 1:
        steps.append(lambda pair, rng: transforms.downsample(pair, factor))
    augment = dict(data.get("augment") or {})
    unknown = set(augment) - {"flip_axes", "transpose_axes", "affine"}
    if unknown:
        raise ValueError(f"`data.augment` knows flip_axes, transpose_axes and affine; got {sorted(unknown)}.")
    if augment.get("flip_axes") or augment.get("transpose_axes"):
        steps.append(functools.partial(transforms.flip_transpose, flip_axes=tuple(augment.get("flip_axes") or ()),
                                       transpose_axes=tuple(augment.get("transpose_axes") or ())))
    if augment.get("affine"):
        steps.append(functools.partial(transforms.random_affine, **dict(augment["affine"])))
    if data.get("normalize"):
        method = data["normalize"]
        if method not in transforms.NORMALIZATIONS:
            raise ValueError(f"`data.normalize` must be one of {transforms.NORMALIZATIONS} or None; got {method!r}.")
        steps.append(lambda pair, rng: transforms.normalize(pair, method=method))
    if not steps:
        return None

    def transform(pair, rng):
        for step in steps:
            pair = step(pair, rng)
        return pair

    return transform


def downsample_factor(data: Mapping) -> int:
    """``data.downsample`` (default 1): the factor by which the network's input is shrunk.

    Raises:
      ValueError: not a positive integer.
    """
    factor = data.get("downsample", 1)
    factor = 1 if factor is None else factor
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"`data.downsample` must be a positive integer; got {factor!r}.")
    return int(factor)


def from_config(data: Mapping, split: str, *, train: bool = True, start_step: int = 0) -> grain.IterDataset:
    """The batches a config's ``data`` section describes (see :func:`batches`).

    ``train=True``: shuffled, augmented, repeated forever, batches of ``data.batch_size`` (the
    batch of one device; training itself reads ``batch_size × devices`` through :func:`batches`).
    ``train=False``: one pass in order, no augmentation (normalisation kept), batch 1,
    the last pairs kept.
    """
    source = open_source(data, split)
    transform = make_transform(data if train else {"normalize": data.get("normalize"),
                                                   "downsample": data.get("downsample", 1)})
    return batches(
        source,
        batch_size=int(data.get("batch_size", 1)) if train else 1,
        seed=int(data.get("seed", 0)),
        shuffle=train,
        num_epochs=None if train else 1,
        keys=data.get("keys"),
        transform=transform,
        drop_remainder=train,
        start_step=start_step,
        num_threads=int(data.get("num_threads", 4)),
        prefetch=int(data.get("prefetch", 4)),
    )


def records(data: Mapping, split: str, *, limit: int | None = None, num_threads: int = 2) -> grain.IterDataset:
    """One ordered pass over a split as whole pair records (validation and evaluation).

    Unlike :func:`from_config` nothing is dropped or batched: ids, spacing, labels and
    keypoints stay; images are normalised as in training (``data.normalize``), never
    augmented, and kept at full size (with ``data.downsample``, the predictor of
    :func:`jaxreg.sharding.make_predict` shrinks the images and brings the field back). Pairs are read ``num_threads`` at a time ahead of the consumer.

    Args:
      data: the config's ``data`` section.
      split: ``"train"``, ``"val"`` or ``"test"``.
      limit: only the first ``limit`` pairs (``None`` or 0: all).
    """
    source = open_source(data, split)
    ds = grain.MapDataset.source(source)
    if limit:
        ds = ds[: int(limit)]
    transform = make_transform({"normalize": data.get("normalize")})
    if transform is not None:
        ds = ds.map(lambda pair: transform(pair, None))
    read = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, num_threads))
    return ds.to_iter_dataset(read)


def num_records(data: Mapping, split: str, *, limit: int | None = None) -> int:
    """How many pairs :func:`records` yields for the same arguments, without reading any.

    For progress bars with a total (and so an ETA): the source's length, at most ``limit``
    (``None`` or 0: all).
    """
    count = len(open_source(data, split))
    return min(count, int(limit)) if limit else count
