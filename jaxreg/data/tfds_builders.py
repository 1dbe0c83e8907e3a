"""TFDS builders: prepared, versioned copies of the datasets for shared storage.

TensorFlow is not needed: the builders write ``array_record`` files and are read with
random access (``tfds.data_source``); ``tensorflow_datasets`` imports without TensorFlow,
while ``as_dataset()`` and the TFRecord format would need it. Prepare once, then train anywhere
with ``data.source="tfds"``:

    python -m jaxreg.data.tfds_builders --name acdc --manual_dir /data/ACDC/database \\
        --data_dir /shared/tfds

=================  ==============================  =================  ====================
name               manual_dir holds                stored             per-image extras
=================  ==============================  =================  ====================
learn2reg_oasis    a Learn2Reg OASIS task folder   images + pair ids  labels, mask
learn2reg_nlst     a Learn2Reg NLST task folder    pairs              mask, keypoints
acdc               ACDC ``database`` folder        pairs (ED, ES)     labels
jaxreg_synthetic   (nothing: generated)            pairs + true ddf   labels (+ keypoints)
=================  ==============================  =================  ====================

Unpaired OASIS stores each image once (its ~170 000 training pairs are formed when read);
paired sets store pair records. Either way :class:`TfdsPairs` serves pair records exactly
like the folder readers (``jaxreg.data.pairs``). Volumes are stored zlib-compressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxreg.data import acdc, learn2reg, pairs
from jaxreg.data.random_access import FolderPairs, SyntheticPairs

__all__ = ["BUILDERS", "Acdc", "JaxregSynthetic", "Learn2regNlst", "Learn2regOasis", "TfdsPairs", "prepare"]

_VOLUME = {"shape": (None, None, None), "encoding": "zlib"}
_EXTRAS = {  # per-image entry -> feature
    "labels": lambda: tfds.features.Tensor(dtype=np.int32, **_VOLUME),
    "mask": lambda: tfds.features.Tensor(dtype=np.uint8, **_VOLUME),
    "points": lambda: _float64((None, 3)),
}
_CITATION_L2R = "Hering et al., Learn2Reg: comprehensive multi-task medical image registration challenge, IEEE TMI 42(3), 2023."


def _float64(shape):
    # As bytes: the default (Example-proto float lists) would round float64 to float32.
    return tfds.features.Tensor(shape=shape, dtype=np.float64, encoding="bytes")


def _geometry():
    return {"spacing": _float64((3,)), "affine": _float64((4, 4))}


class _PairRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stores pair records (paired datasets); subclasses say how to open the reader."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First jaxreg release."}
    EXTRAS: tuple[str, ...] = ()
    WITH_DDF = False
    DESCRIPTION = ""

    def _info(self):
        features = {"fixed": tfds.features.Tensor(dtype=np.float32, **_VOLUME),
                    "moving": tfds.features.Tensor(dtype=np.float32, **_VOLUME),
                    **_geometry(),
                    "moving_spacing": _float64((3,)),
                    "ids": tfds.features.Text()}
        for extra in self._extras():
            features[f"fixed_{extra}"], features[f"moving_{extra}"] = _EXTRAS[extra](), _EXTRAS[extra]()
        if self.WITH_DDF:
            features["ddf"] = tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.float32, encoding="zlib")
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                     features=tfds.features.FeaturesDict(features),
                                     metadata=tfds.core.MetadataDict(layout="pairs"), disable_shuffling=True)

    def _extras(self) -> tuple[str, ...]:
        return self.EXTRAS

    def _pair_source(self, dl_manager, split: str):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        out = {}
        for split in learn2reg.SPLITS:
            source = self._pair_source(dl_manager, split)
            if len(source):  # TFDS has no empty splits
                out[split] = self._generate_examples(source)
        return out

    def _generate_examples(self, source):
        keys = set(self.info.features.keys())
        for index in range(len(source)):
            record = source[index]
            missing = keys - set(record)
            if missing:
                raise ValueError(f"{self.name}: pair {index} lacks {sorted(missing)}.")
            yield f"{index:07d}", _cast(record, self.info.features)


class _ImageRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stores each image once, and the pairs as indices into a split's images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First jaxreg release."}
    EXTRAS: tuple[str, ...] = ()
    DESCRIPTION = ""

    def _info(self):
        features = {"image": tfds.features.Tensor(dtype=np.float32, **_VOLUME), **_geometry(),
                    "key": tfds.features.Text(), "ids": tfds.features.Text()}
        features.update({extra: _EXTRAS[extra]() for extra in self.EXTRAS})
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                     features=tfds.features.FeaturesDict(features),
                                     metadata=tfds.core.MetadataDict(layout="images"), disable_shuffling=True)

    def _reader(self, dl_manager):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        reader = self._reader(dl_manager)
        out, index_pairs = {}, {}
        for split in learn2reg.SPLITS:
            split_pairs = reader.pairs(split)
            if not split_pairs:
                continue
            keys = list(dict.fromkeys(k for pair in split_pairs for k in pair))  # first-seen order
            position = {k: i for i, k in enumerate(keys)}
            as_index = [[position[f], position[m]] for f, m in split_pairs]
            # Unpaired training sets list every ordered pair: store that rule, not ~170 000 pairs.
            all_ordered = [tuple(p) for p in as_index] == _all_ordered(len(keys))
            index_pairs[split] = "all_ordered" if all_ordered else as_index
            out[split] = self._generate_examples(reader, keys)
        self.info.metadata["pairs"] = index_pairs
        return out

    def _generate_examples(self, reader, keys):
        for index, key in enumerate(keys):
            record = dict(reader.load_image(key), key=key, ids=_case_id(key))
            yield f"{index:07d}", _cast(record, self.info.features)


def _all_ordered(n: int) -> list[tuple[int, int]]:
    """Every ordered pair of distinct indices, in the readers' order (fixed-major)."""
    return [(f, m) for f in range(n) for m in range(n) if f != m]


def _cast(record: dict, features) -> dict:
    """The record's entries that are features, as the feature dtypes (TFDS checks them)."""
    out = {}
    for key, feature in features.items():
        value = record[key]
        out[key] = value if isinstance(value, str) else np.asarray(value, feature.np_dtype)
    return out


def _case_id(key: str) -> str:
    name = os.path.basename(key)
    return name.split("_")[-2] if name.count("_") >= 2 else name  # Learn2Reg: NAME_case_mod.nii.gz


def _manual(dl_manager) -> str:
    return os.fspath(dl_manager.manual_dir)


class Learn2regOasis(_ImageRecords):
    """Learn2Reg OASIS (brain MRI, inter-subject, 35 labels) from its task folder."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Download the Learn2Reg OASIS task (OASIS.zip, learn2reg.grand-challenge.org) "
                                    "and unzip it; manual_dir is the folder holding OASIS_dataset.json.")
    EXTRAS = ("labels", "mask")
    DESCRIPTION = "Learn2Reg OASIS, one record per image; pairs as index pairs in metadata."

    def _reader(self, dl_manager):
        return learn2reg.open_task(_manual(dl_manager))


class Learn2regNlst(_PairRecords):
    """Learn2Reg NLST (lung CT, inspiration/expiration pairs with masks and keypoints)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Download the Learn2Reg NLST task (NLST.zip) and unzip it; manual_dir is the "
                                    "folder holding NLST_dataset.json.")
    EXTRAS = ("mask", "points")
    DESCRIPTION = "Learn2Reg NLST pair records (fixed _0000, moving _0001)."

    def _pair_source(self, dl_manager, split):
        return FolderPairs(learn2reg.open_task(_manual(dl_manager)), split)


class Acdc(_PairRecords):
    """ACDC cine MRI, ED fixed / ES moving, preprocessed as DiffuseReg (32×128×128)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Download ACDC from the Creatis challenge site and extract it; manual_dir is the "
                                    "`database` folder holding training/ and testing/.")
    EXTRAS = ("labels",)
    DESCRIPTION = "ACDC ED/ES pairs resampled to 1.5x1.5x3.15 mm, cropped to 32x128x128, intensities in [-1, 1]."

    def _pair_source(self, dl_manager, split):
        return FolderPairs(acdc.open_acdc(_manual(dl_manager)), split)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """A synthetic variant: anatomy, shape and pairs per split."""

    anatomy: str = "brain"
    shape: tuple[int, int, int] = (64, 64, 64)
    num_pairs: tuple[int, int, int] = (256, 32, 32)  # train, val, test
    seed: int = 0


class JaxregSynthetic(_PairRecords):
    """The built-in synthetic dataset, with its ground-truth displacement fields."""

    BUILDER_CONFIGS: ClassVar[list[SyntheticConfig]] = [
        SyntheticConfig(name=f"{anatomy}_64", anatomy=anatomy) for anatomy in ("brain", "cardiac", "lung")
    ]
    EXTRAS = ("labels",)
    WITH_DDF = True
    DESCRIPTION = "jaxreg synthetic pairs (jaxreg.data.synthetic) with the true pull ddf in voxels."

    def _extras(self):
        return ("labels", "points") if self.builder_config.anatomy == "lung" else ("labels",)

    def _pair_source(self, dl_manager, split):
        config = self.builder_config
        num = config.num_pairs[learn2reg.SPLITS.index(split)]
        if num == 0:
            return ()
        return SyntheticPairs(num, seed=config.seed, split=split, shape=tuple(config.shape),
                              anatomy=config.anatomy)


BUILDERS = {"learn2reg_oasis": Learn2regOasis, "learn2reg_nlst": Learn2regNlst, "acdc": Acdc,
            "jaxreg_synthetic": JaxregSynthetic}


def _decode(record: dict) -> dict:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in record.items()}


class TfdsPairs:
    """Pair records of one split of a prepared jaxreg TFDS dataset (random access).

    Args:
      name: a key of ``BUILDERS``, optionally with a config (``"jaxreg_synthetic/lung_64"``).
      split: ``"train"``, ``"val"`` or ``"test"``.
      data_dir: where it was prepared.
    """

    def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None):
        if name.split("/")[0] not in BUILDERS:
            raise ValueError(f"`name` must be one of {tuple(BUILDERS)} (optionally /config); got {name!r}.")
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; run "
                                    f"python -m jaxreg.data.tfds_builders --name {name} ...")
        if split not in builder.info.splits:
            raise ValueError(f"{name} has splits {sorted(builder.info.splits)}; got {split!r}.")
        self.name, self.split = name, split
        self._records = builder.as_data_source(split=split)
        meta = builder.info.metadata
        self._index_pairs = None
        if meta.get("layout") == "images":
            stored = meta["pairs"][split]
            self._index_pairs = (_all_ordered(len(self._records)) if stored == "all_ordered"
                                 else [tuple(p) for p in stored])

    def __len__(self) -> int:
        return len(self._records) if self._index_pairs is None else len(self._index_pairs)

    def __getitem__(self, index: int) -> dict:
        if self._index_pairs is None:
            return _decode(self._records[index])
        fixed, moving = (_decode(self._records[i]) for i in self._index_pairs[index])
        return pairs.make_pair(fixed, moving, ids=f"{fixed['ids']}_{moving['ids']}", where=f"{self.name} pair {index}")

    def __repr__(self) -> str:
        return f"TfdsPairs({self.name!r}, split={self.split!r}, {len(self)} pairs)"


def prepare(name: str, *, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
            config: str | tfds.core.BuilderConfig | None = None):
    """Builds (once) a jaxreg TFDS dataset in ``array_record`` format; returns the builder."""
    if name not in BUILDERS:
        raise ValueError(f"`name` must be one of {tuple(BUILDERS)}; got {name!r}.")
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    builder = BUILDERS[name](data_dir=os.fspath(data_dir), file_format="array_record", config=config)
    download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=download_config)
    return builder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--data_dir", required=True, help="where the prepared dataset goes")
    parser.add_argument("--manual_dir", help="the downloaded dataset (not for jaxreg_synthetic)")
    parser.add_argument("--config", help="builder config, e.g. lung_64 for jaxreg_synthetic")
    args = parser.parse_args(argv)
    try:
        builder = prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir, config=args.config)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"prepared {builder.name} {builder.version} in {builder.data_path}")


if __name__ == "__main__":
    main()
