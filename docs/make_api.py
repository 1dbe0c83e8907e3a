"""Writes docs/api.md, the API reference, from the docstrings of jaxreg's public names.

    python docs/make_api.py            # rewrite docs/api.md
    python docs/make_api.py --check    # exit 1 if docs/api.md is out of date (the tests run this)

Every public module of jaxreg (no ``_`` in its dotted name) that has an ``__all__`` gets a
section: the modules of ``MODULES`` first, in that order, then the others alphabetically. A
module's public names are its ``__all__``; each entry shows the signature and the docstring as
written (Google style: shapes, units, which direction is better). A name that a package
re-exports from a module documented here is listed as a pointer to that module's entry.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parent / "api.md"

#: (module, one-line summary), in the order a user meets them.
MODULES = (
    ("jaxreg.register", "the front door: register a pair, load a trained model"),
    ("jaxreg.optimize", "classical instance optimisation (the default of register)"),
    ("jaxreg.transform", "a registration transform as data: apply, inverse, save/load, ITK/ANTs export"),
    ("jaxreg.spatial", "grids, warps, composition, integration, resizing"),
    ("jaxreg.losses", "training losses (lower is better)"),
    ("jaxreg.metrics", "evaluation metrics"),
    ("jaxreg.io", "NIfTI and Learn2Reg files"),
    ("jaxreg.methods", "the method registry: a config's model name to its network, loss and predict"),
    ("jaxreg.models", "the networks"),
    ("jaxreg.deq", "deep equilibrium solvers and layers"),
    ("jaxreg.deq.model", "DEQReg"),
    ("jaxreg.deq.unroll", "unrolled baselines"),
    ("jaxreg.models.swin", "Swin blocks and DiffuseReg's joint window attention"),
    ("jaxreg.models.denoiser", "DiffuseReg's conditional Swin-UNETR denoiser"),
    ("jaxreg.diffusion", "DiffuseReg: schedules, samplers, guidance"),
    ("jaxreg.diffusion.model", "DiffuseReg: training objective, sampling, observation, ensembles"),
    ("jaxreg.diffusion.guidance", "energies of x̂₀ that steer sampling"),
    ("jaxreg.training", "training state, the shared train step, the loop"),
    ("jaxreg.runs", "a train.py workdir on disk: config, checkpoints, metrics log, loading a trained run"),
    ("jaxreg.evaluation", "evaluating a workdir, figures, reports"),
    ("jaxreg.evaluation.l2r", "the Learn2Reg challenge metrics as the official evaluation computes them"),
    ("jaxreg.evaluation.figures", "figures of a registration and of an evaluation"),
    ("jaxreg.runs.restore", "loading a trained run (config, parameters, model) from a workdir"),
    ("jaxreg.scoring", "the metrics of a registered pair, shared by validation and evaluation"),
    ("jaxreg.sharding", "the data-parallel mesh, multi-process start-up, replicated and sharded arrays"),
    ("jaxreg.data", "dataset readers, synthetic pairs, the input pipeline"),
)


class _Annotation:
    """An annotation printed as written in the source (not ``'str'`` or ``ForwardRef('str')``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(annotation):
    if isinstance(annotation, typing.ForwardRef):
        return _Annotation(annotation.__forward_arg__)
    if isinstance(annotation, str):
        return _Annotation(annotation)
    return annotation


def _signature(obj) -> str:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    # Flax modules add `parent` and `name`, whose defaults print memory addresses.
    flax_module = inspect.isclass(obj) and any(c.__name__ == "Module" and c.__module__.startswith("flax")
                                               for c in obj.__mro__)
    keep = [p.replace(annotation=_annotation(p.annotation)) for p in signature.parameters.values()
            if not (flax_module and p.name in ("parent", "name"))]
    text = str(signature.replace(parameters=keep, return_annotation=_annotation(signature.return_annotation)))
    return re.sub(r" at 0x[0-9a-f]+>", ">", text)  # default functions: no memory addresses


def modules() -> list[tuple[str, str]]:
    """``(module, summary)`` for every public module with an ``__all__``, ``MODULES`` first."""
    import jaxreg

    known = dict(MODULES)
    found = []
    for info in pkgutil.walk_packages(jaxreg.__path__, "jaxreg."):
        if any(part.startswith("_") for part in info.name.split(".")) or info.name in known:
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            found.append((info.name, (inspect.getdoc(module) or "").split("\n")[0].rstrip(".").replace("``", "`")))
    return list(MODULES) + sorted(found)


def _entry(module_name: str, name: str, obj) -> list[str]:
    if inspect.ismodule(obj):
        return []  # submodules get their own section
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "constant"
    head = f"### `{module_name}.{name}{_signature(obj) if kind != 'constant' else ''}`"
    doc = inspect.getdoc(obj) if kind != "constant" else None
    if kind == "constant":
        doc = f"`{name} = {obj!r}`" if len(repr(obj)) < 200 and " at 0x" not in repr(obj) else f"a {type(obj).__name__}"
    return [head, "", doc or "(no docstring)", ""]


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/make_api.py`; do not edit by hand.", ""]
    sections = modules()
    documented = {name for name, _ in sections}
    for module_name, summary in sections:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`: {summary}", ""]
        first = (inspect.getdoc(module) or "").split("\n\n")[0]
        if first:
            lines += [first, ""]
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None)
            if (home != module_name and home in documented and not inspect.ismodule(obj)
                    and getattr(importlib.import_module(home), name, None) is obj
                    and name in getattr(importlib.import_module(home), "__all__", ())):
                lines += [f"### `{module_name}.{name}`", "", f"Re-exported: see `{home}.{name}`.", ""]
                continue
            lines += _entry(module_name, name, obj)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
