"""Evaluation of registrations.

``jaxreg.evaluation.l2r``: the Learn2Reg challenge metrics exactly as its official
evaluation computes them (DSC, HD95, TRE, SDlogJ, aggregation). The names are kept in the
submodule on purpose: ``l2r.dice`` follows the challenge's NaN rules and argument order,
which differ from ``jaxreg.metrics.dice``.
"""

from jaxreg.evaluation import l2r

__all__ = ["l2r"]
