"""Evaluation of registrations.

``evaluate_workdir`` scores a trained run (what ``eval.py`` does) and writes tables and
figures (``figures``, ``report``); ``convergence_study`` scores equilibrium and unrolled
runs at many inference step counts (DEQReg's Fig. 3 / Table 2). ``jaxreg.evaluation.l2r``: the Learn2Reg challenge metrics
exactly as its official evaluation computes them (DSC, HD95, TRE, SDlogJ, aggregation). The
names are kept in the submodule on purpose: ``l2r.dice`` follows the challenge's NaN rules
and argument order, which differ from ``jaxreg.metrics.dice``.
"""

from jaxreg.evaluation import convergence, figures, l2r, report
from jaxreg.evaluation.convergence import convergence_study
from jaxreg.evaluation.evaluate import evaluate_workdir, resolve_step

__all__ = ["convergence", "convergence_study", "evaluate_workdir", "figures", "l2r", "report", "resolve_step"]
