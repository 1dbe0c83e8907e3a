"""Evaluation of registrations.

``evaluate_workdir`` scores a trained run (what ``eval.py`` does) and writes tables and
figures (``figures``, ``report``); ``convergence_study`` scores equilibrium and unrolled
runs at many inference step counts (DEQReg's Fig. 3 / Table 2). ``jaxreg.evaluation.l2r``: the Learn2Reg challenge metrics
exactly as its official evaluation computes them (DSC, HD95, TRE, SDlogJ, aggregation). The
names are kept in the submodule on purpose: ``l2r.dice`` follows the challenge's NaN rules
and argument order, which differ from ``jaxreg.metrics.dice``.
"""

# Loaded on first use: ``convergence`` and ``evaluate`` bring orbax, grain and the models (0.5 s
# and more of imports), which ``jaxreg register``'s figure (``figures``) does not need.
_SUBMODULES = ("convergence", "figures", "l2r", "report")
_NAMES = {"convergence_study": "convergence", "evaluate_workdir": "evaluate", "resolve_step": "evaluate"}


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        value = importlib.import_module(f"jaxreg.evaluation.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(f"jaxreg.evaluation.{_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module 'jaxreg.evaluation' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["convergence", "convergence_study", "evaluate_workdir", "figures", "l2r", "report", "resolve_step"]
