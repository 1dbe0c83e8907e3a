"""Data: the built-in synthetic dataset (``jaxreg.data.synthetic``).

Readers for the real layouts (Learn2Reg OASIS/NLST, neurite-oasis, ACDC), TFDS builders and
the input pipeline are planned here as well (issue 3).
"""

from jaxreg.data import synthetic
from jaxreg.data.synthetic import synthetic_pair

__all__ = ["synthetic", "synthetic_pair"]
