"""The import graph of jaxreg runs one way: down the layers, no circles, and the leaves stay leaves.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of every module, at module level and inside functions (a lazy import is
still a dependency), relative names resolved, and ``from jaxreg.x import y`` counted as an
import of the submodule ``jaxreg.x.y`` when there is one. Importing ``jaxreg.a.b`` from outside
the package ``jaxreg.a`` also runs ``jaxreg/a/__init__.py``, so it counts as an import of
``jaxreg.a`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxreg"

#: The leaves and what of ours each may import: today's imports, exactly.
LEAVES = {
    "jaxreg.spatial": {"jaxreg._checks"},
    "jaxreg.losses": {"jaxreg._checks"},
    "jaxreg.metrics": {"jaxreg._checks", "jaxreg.spatial"},
}

#: The layers, top to bottom: a module may import only from layers below its own (the leaves
#: also from each other, as ``LEAVES`` allows). Scripts (train.py, eval.py) sit above them all.
#: Training and evaluation share a layer, so neither imports the other: what both need lives
#: below them (``runs``: the workdir on disk; ``sharding``: the mesh; ``scoring``: the metrics of
#: a registered pair).
LAYERS = (
    ("front", {"jaxreg", "jaxreg.__main__", "jaxreg.cli", "jaxreg._cli"}),
    ("register", {"jaxreg.register"}),
    ("images with a grid", {"jaxreg.images"}),
    ("the traceable core", {"jaxreg.traceable"}),
    ("training and evaluation", {"jaxreg.training", "jaxreg.evaluation"}),
    ("runs", {"jaxreg.runs"}),
    ("methods", {"jaxreg.methods"}),
    ("the papers' methods and the optimiser", {"jaxreg.deq", "jaxreg.diffusion", "jaxreg.optimize"}),
    ("networks and the affine optimiser", {"jaxreg.models", "jaxreg.optimize_affine"}),
    ("data and shared pieces", {"jaxreg.data", "jaxreg._objective", "jaxreg._steps", "jaxreg.scoring",
                                "jaxreg.sharding", "jaxreg.transform"}),
    ("leaves", {"jaxreg.spatial", "jaxreg.losses", "jaxreg.metrics", "jaxreg.io"}),
    ("private helpers", {"jaxreg._checks", "jaxreg._nifti_geometry", "jaxreg._programs", "jaxreg._progress", "jaxreg._random",
                         "jaxreg._rotations"}),
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """``name -> (path, is_package)`` for every module of jaxreg."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _deepest_module(name: str) -> str | None:
    """``name`` or its longest prefix that is a module of ours (``jaxreg.io.save`` -> ``jaxreg.io``)."""
    for candidate in [name, *reversed(_ancestors(name))]:
        if candidate in MODULES:
            return candidate
    return None


def _targets(importer: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules of ours that one import statement names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer if is_package else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from jaxreg.x import y`: the submodule jaxreg.x.y where there is one, else jaxreg.x.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return {target for name in names if (target := _deepest_module(name)) is not None}


def _imports(name: str) -> set[str]:
    """The modules of ours that module ``name`` imports, with the package ``__init__``\\ s they run."""
    path, is_package = MODULES[name]
    own = set(_ancestors(name))
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(name, is_package, node):
                # Entering a package runs its __init__; our own packages are running already.
                found |= {target, *(p for p in _ancestors(target) if p not in own)}
    found.discard(name)
    return found


def _graph(ignore=frozenset()) -> dict[str, set[str]]:
    """``module -> modules it imports``, leaving out the edges in ``ignore``.

    Also left out: a submodule importing its own package. Python runs a package's
    ``__init__`` before any of its submodules, so this never loads anything; it is the other
    half of a package ``__init__`` importing its own submodules to re-export them.
    """
    return {name: {t for t in _imports(name) if (name, t) not in ignore and not name.startswith(t + ".")}
            for name in MODULES}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    # Relative, lazy (in a function), `from package import submodule`, and the package run.
    assert "jaxreg.data.random_access" in _imports("jaxreg.data.sources")
    assert "jaxreg.data.tfds_builders" in _imports("jaxreg.data.sources")  # lazy, in _tfds
    assert {"jaxreg.sharding", "jaxreg.methods"} <= _imports("jaxreg.training.state")
    assert {"jaxreg.models.unet", "jaxreg.models"} <= _imports("jaxreg.deq.model")
    assert {"jaxreg.deq.model", "jaxreg.deq", "jaxreg.models.unet"} <= _imports("jaxreg.methods")
    assert "jaxreg" not in _imports("jaxreg.data.sources")  # our own packages are running already
    tree = ast.parse("from . import pairs, synthetic\nfrom .. import io\nfrom ..spatial import warp\n"
                     "from .pipeline import batches\nfrom . import SOURCES_THAT_ARE_NOT_MODULES")
    found = set().union(*(_targets("jaxreg.data.sources", False, node) for node in tree.body))
    assert found == {"jaxreg.data.pairs", "jaxreg.data.synthetic", "jaxreg.io", "jaxreg.spatial",
                     "jaxreg.data.pipeline", "jaxreg.data"}


def test_no_import_circles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _layer(module: str) -> int:
    """Index in ``LAYERS`` (0 = top) of the package or module that ``module`` belongs to."""
    for index, (_, members) in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "jaxreg"):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs.")


def _upward_or_sideways(graph: dict[str, set[str]]) -> list[str]:
    """The imports that do not go down a layer (within one package, or between two leaves, anything goes)."""
    bad = []
    leaves = next(i for i, (name, _) in enumerate(LAYERS) if name == "leaves")
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = _layer(importer), _layer(target)
            same_package = importer.split(".")[:2] == target.split(".")[:2] and importer != "jaxreg"
            if not same_package and a >= b and not a == b == leaves:
                bad.append(f"{importer} ({LAYERS[a][0]}) imports {target} ({LAYERS[b][0]})")
    return bad


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_imports_go_down_the_layers():
    bad = _upward_or_sideways(_graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_layer_check_catches_upward_and_sideways_imports():
    graph = _graph()
    assert _upward_or_sideways({**graph, "jaxreg.models.unet": graph["jaxreg.models.unet"] | {"jaxreg.methods"}}) == [
        "jaxreg.models.unet (networks and the affine optimiser) imports jaxreg.methods (methods)"]
    sideways = {**graph, "jaxreg.evaluation.evaluate": graph["jaxreg.evaluation.evaluate"] | {"jaxreg.training.loop"}}
    assert len(_upward_or_sideways(sideways)) == 1
    assert _upward_or_sideways({"jaxreg.metrics": {"jaxreg.spatial"}, "jaxreg.deq.model": {"jaxreg.deq.solvers"}}) == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_nothing_of_ours(leaf):
    assert _imports(leaf) == LEAVES[leaf], (
        f"{leaf} is a leaf: it may import only {sorted(LEAVES[leaf])} of jaxreg; "
        f"it imports {sorted(_imports(leaf))}.")
