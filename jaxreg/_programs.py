"""Jitted functions whose traced program is kept on disk, so a later process does not trace it again. Private.

JAX's persistent compilation cache (``jax_compilation_cache_dir``) saves compiling, but every
process still traces and lowers each program before it can look it up: ~5 s of a 17 s
registration of a 256×216×10 stack on a 2-core CPU. :func:`stored_jit` is ``jax.jit`` that also
keeps each program it lowers as a ``jax.export`` artifact (StableHLO in a flatbuffer: no
pickle) in ``<cache dir>/jaxreg-programs``; a later process with the same code, JAX, options
and argument shapes loads it in milliseconds, and the compiled program then comes from the
compilation cache as before.

The key of a stored program: the function, its static arguments, the tree, shapes, dtypes
and weak types of the others, the JAX, jaxlib, optax and numpy versions, the backend, the JAX
settings that change tracing, and a digest of jaxreg's own source files (an edited jaxreg never
loads a program of the old code). A module constant patched at run time (not in the source) is
not part of the key. Without a compilation cache dir, with traced arguments (inside a
user's ``jit``/``vmap``/``grad``) or with arguments on several devices, it is plain ``jax.jit``.
A stored file that cannot be read is exported again and replaced (written atomically).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from jax import export

FOLDER = "jaxreg-programs"
SUFFIX = ".jaxexport"
# What this process did, for tests and timings: programs exported (traced and lowered) and stored,
# and programs loaded from disk.
COUNTS = {"exported": 0, "loaded": 0}
_CAN_SERIALISE = importlib.util.find_spec("flatbuffers") is not None

# The optimisers' states are optax NamedTuples: jax.export stores a pytree's node types by name.
for _node in (optax.ScaleByAdamState, optax.ScaleByScheduleState, optax.EmptyState):
    try:
        export.register_namedtuple_serialization(_node, serialized_name=f"optax.{_node.__name__}")
    except ValueError:  # registered already (by optax or by a reload of this module)
        pass


@functools.cache
def _source_digest() -> str:
    """sha256 of every ``.py`` file of the jaxreg package (paths and contents)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _environment() -> tuple:
    """What, beyond the arguments, changes the program JAX traces."""
    import jaxlib

    config = jax.config
    # optax's Adam is traced into the optimisers' programs; numpy's constants into every program.
    return (jax.__version__, jaxlib.__version__, optax.__version__, np.__version__, jax.default_backend(),
            config.jax_enable_x64, str(config.jax_default_matmul_precision), config.jax_numpy_rank_promotion,
            _source_digest())


def folder() -> Path | None:
    """Where programs are stored: beside the compilation cache; ``None`` when that cache is off (or
    ``flatbuffers``, which ``jax.export`` needs to serialise, is missing)."""
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / FOLDER if cache and _CAN_SERIALISE else None


def _abstract(leaf):
    aval = jax.typeof(leaf)
    return aval.shape, str(aval.dtype), bool(getattr(aval, "weak_type", False))


def _on_one_device(leaf) -> bool:
    return not isinstance(leaf, jax.Array) or len(leaf.sharding.device_set) == 1


class StoredJit:
    """``jax.jit(fn, static_argnames=...)`` whose lowered programs are stored on disk (module docstring).

    Called like the jitted function: static arguments by name or position, the others any
    pytrees of arrays. ``fn`` must not take ``*args``/``**kwargs``.
    """

    def __init__(self, fn: Callable, static_argnames: Sequence[str] = ()):
        self.fn = fn
        self.static_argnames = tuple(static_argnames)
        self.jitted = jax.jit(fn, static_argnames=self.static_argnames)
        self.signature = inspect.signature(fn)
        self.calls: dict = {}  # in-process key -> jitted call of the exported program
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        where = folder()
        if where is None:
            return self.jitted(*args, **kwargs)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        static = tuple((k, v) for k, v in bound.arguments.items() if k in self.static_argnames)
        names = tuple(k for k in bound.arguments if k not in self.static_argnames)
        dynamic = tuple(bound.arguments[k] for k in names)
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if any(isinstance(x, jax.core.Tracer) or not _on_one_device(x) for x in leaves):
            return self.jitted(*args, **kwargs)
        key = (names, static, tree, tuple(_abstract(x) for x in leaves))
        call = self.calls.get(key)
        if call is None:
            call = self.calls[key] = self._program(key, dynamic, dict(static), names, where)
        return call(*dynamic)

    def _cache_size(self) -> int:
        """The programs this process holds (stored ones and plain jit's), as ``jax.jit``'s ``_cache_size``."""
        return len(self.calls) + self.jitted._cache_size()

    def _program(self, key, dynamic, static: dict, names, where: Path) -> Callable:
        """The jitted call of the stored program for ``key``: loaded, or exported and stored."""
        text = repr((self.fn.__module__, self.fn.__qualname__, key, _environment()))
        path = where / (hashlib.sha256(text.encode()).hexdigest() + SUFFIX)
        exported = None
        if path.exists():
            try:
                exported = export.deserialize(bytearray(path.read_bytes()))
                COUNTS["loaded"] += 1
            except Exception:  # noqa: BLE001 (a truncated or foreign file: export again)
                exported = None
        if exported is None:
            fn, static_kwargs = self.fn, static

            def body(*values):
                return fn(**dict(zip(names, values)), **static_kwargs)

            blob = export.export(jax.jit(body))(*dynamic).serialize()
            COUNTS["exported"] += 1
            _write_atomically(path, blob)
            # The program as a later process will load it: both then compile (or load) one module.
            exported = export.deserialize(blob)
        return jax.jit(exported.call)


def _write_atomically(path: Path, blob: bytes) -> None:
    """Writes ``blob`` to ``path`` through a temporary file and a rename; a folder that cannot be
    written leaves the program unstored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(blob)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError:
        pass


def stored_jit(fn: Callable | None = None, *, static_argnames: Sequence[str] = ()):
    """:class:`StoredJit` as a decorator: ``@stored_jit`` or ``@stored_jit(static_argnames=(...))``."""
    if fn is None:
        return lambda f: StoredJit(f, static_argnames)
    return StoredJit(fn, static_argnames)
