"""Writes docs/api.md, the API reference, from the docstrings of jaxreg's public names.

    python docs/make_api.py            # rewrite docs/api.md
    python docs/make_api.py --check    # exit 1 if docs/api.md is out of date (the tests run this)

A module's public names are its ``__all__``; each entry shows the signature and the
docstring as written (Google style: shapes, units, which direction is better).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
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
    ("jaxreg.models", "the model registry"),
    ("jaxreg.deq", "deep equilibrium solvers and layers"),
    ("jaxreg.deq.model", "DEQReg"),
    ("jaxreg.deq.unroll", "unrolled baselines"),
    ("jaxreg.models.swin", "Swin blocks and DiffuseReg's joint window attention"),
    ("jaxreg.models.denoiser", "DiffuseReg's conditional Swin-UNETR denoiser"),
    ("jaxreg.diffusion", "DiffuseReg: schedules, samplers, guidance"),
    ("jaxreg.diffusion.model", "DiffuseReg: training objective, sampling, observation, ensembles"),
    ("jaxreg.diffusion.guidance", "energies of x̂₀ that steer sampling"),
    ("jaxreg.training", "training state, loop, checkpoints, sharding"),
    ("jaxreg.evaluation", "evaluating a workdir, figures, reports"),
)


def _signature(obj) -> str:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    # Flax modules add `parent` and `name`, whose defaults print memory addresses.
    flax_module = inspect.isclass(obj) and any(c.__name__ == "Module" and c.__module__.startswith("flax")
                                               for c in obj.__mro__)
    keep = [p for p in signature.parameters.values() if not (flax_module and p.name in ("parent", "name"))]
    return str(signature.replace(parameters=keep))


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
    for module_name, summary in MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`: {summary}", ""]
        first = (inspect.getdoc(module) or "").split("\n\n")[0]
        if first:
            lines += [first, ""]
        for name in getattr(module, "__all__", ()):
            lines += _entry(module_name, name, getattr(module, name))
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
