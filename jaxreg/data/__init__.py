"""Data: dataset readers, the built-in synthetic dataset, TFDS builders, the input pipeline.

Readers (one module per layout; each also has a ``write_*`` that lays the synthetic
dataset out in that layout, for tests and demos without real data):

* ``learn2reg``: Learn2Reg task folders driven by ``*_dataset.json`` (OASIS, NLST, ...);
* ``neurite_oasis``: the neurite-oasis OASIS-1 folders, with a split stored in the workdir;
* ``acdc``: the ACDC cardiac database, ED fixed / ES moving, DiffuseReg's preprocessing;
* ``synthetic``: procedural pairs with their ground-truth deformation;
* ``example``: ``write_example`` writes one synthetic brain pair with label maps as NIfTI
  files, to try ``jaxreg register`` on (``jaxreg example --out DIR``).

Every reader has ``pairs(split)`` → ``(fixed, moving)`` keys, ``load_image(key)`` → an
image record and ``load_pair(fixed, moving)`` → a pair record (``jaxreg.data.pairs``).

Pipeline: ``sources.open_source(config.data, split)`` → a random-access pair source
(``random_access.FolderPairs``/``SyntheticPairs`` or ``tfds_builders.TfdsPairs``);
``pipeline.batches`` / ``pipeline.from_config`` → shuffled, transformed (``transforms``),
batched numpy.
``preprocess`` holds the affine-preserving resampling and cropping the readers use.
``tfds_builders`` is imported on demand (it imports ``tensorflow_datasets``).
"""

from jaxreg.data import (
    acdc,
    example,
    learn2reg,
    neurite_oasis,
    pairs,
    pipeline,
    preprocess,
    sources,
    synthetic,
    transforms,
)
from jaxreg.data.acdc import open_acdc, write_acdc
from jaxreg.data.example import write_example
from jaxreg.data.learn2reg import open_task, write_learn2reg
from jaxreg.data.neurite_oasis import open_neurite_oasis, write_neurite_oasis
from jaxreg.data.pipeline import batches, from_config
from jaxreg.data.sources import open_source
from jaxreg.data.synthetic import synthetic_pair

__all__ = [
    "acdc",
    "batches",
    "example",
    "from_config",
    "learn2reg",
    "neurite_oasis",
    "open_acdc",
    "open_neurite_oasis",
    "open_source",
    "open_task",
    "pairs",
    "pipeline",
    "preprocess",
    "sources",
    "synthetic",
    "synthetic_pair",
    "transforms",
    "write_acdc",
    "write_example",
    "write_learn2reg",
    "write_neurite_oasis",
]
