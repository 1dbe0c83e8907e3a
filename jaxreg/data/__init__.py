"""Data: the built-in synthetic dataset, Learn2Reg task folders, and layout writers.

* ``jaxreg.data.synthetic``: procedural pairs with ground truth (``synthetic_pair``).
* ``jaxreg.data.learn2reg``: Learn2Reg task folders driven by ``*_dataset.json``
  (``open_task(root).pairs(split)`` / ``.load_pair(fixed, moving)``).
* ``jaxreg.data.writers``: the synthetic dataset written in a real layout
  (``write_learn2reg``), for tests and demos without real data.

Still to come (issue 3): neurite-oasis and ACDC readers, TFDS builders, the input pipeline.
"""

from jaxreg.data import learn2reg, synthetic, writers
from jaxreg.data.learn2reg import open_task
from jaxreg.data.synthetic import synthetic_pair
from jaxreg.data.writers import write_learn2reg

__all__ = ["learn2reg", "open_task", "synthetic", "synthetic_pair", "write_learn2reg", "writers"]
