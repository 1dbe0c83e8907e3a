"""One persistent compilation cache per test run, shared by every process of the run.

Most of the suite's time is XLA compiling small programs, and many programs are compiled
again and again: by the two xdist workers, and by the ``train.py``/``eval.py``/``jaxreg``
subprocesses that the script, CLI and multi-process tests start (each a fresh process).
The controller makes one temporary folder at the start of the run and exports it through
the environment (JAX reads ``JAX_COMPILATION_CACHE_DIR`` and the other ``JAX_*`` settings
at import), so the workers and every subprocess that inherits the environment load a program
that another process has already compiled. The folder is removed at the end of the run.

Programs that contain a host callback are never stored by JAX; they still compile per process.
``JAXREG_TEST_CACHE=DIR`` uses (and keeps) ``DIR`` instead, e.g. to time a warm second run.

The tests' programs are tiny, so XLA:CPU's LLVM optimisation costs more than it saves: the run
compiles with ``--xla_backend_optimization_level=0`` (the same HLO, less optimised machine code;
a sample of compile-heavy tests took 70 s instead of 130 s). A level already in ``XLA_FLAGS``
is kept. :func:`xla_flags` gives the flags for a subprocess that needs more (simulated devices).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_OWNED = "_JAXREG_TEST_CACHE_OWNED"
_UNGROUPED = pytest.StashKey[set]()  # node ids of grouped tests that a worker would not group

CACHE_SETTINGS = {
    # Programs that compile in less than this are cheaper to compile again than to store and look
    # up (eager op-by-op calls compile hundreds of tiny programs).
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.25",
}


#: XLA flags of every process of the test run (kept by subprocesses that add their own).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(*extra: str) -> str:
    """``XLA_FLAGS`` for a test subprocess: the run's flags (without a device count) plus ``extra``."""
    inherited = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return " ".join(inherited + list(extra))


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has set the environment
        return
    path = os.environ.get("JAXREG_TEST_CACHE")
    if not path:
        path = tempfile.mkdtemp(prefix="jaxreg-test-xla-")
        os.environ[_OWNED] = path
    os.makedirs(path, exist_ok=True)
    os.environ["JAXREG_TEST_CACHE"] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAXREG_COMPILATION_CACHE"] = path  # what jaxreg.register turns on, in a subprocess too
    for name, value in CACHE_SETTINGS.items():
        os.environ.setdefault(name, value)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAGS}".strip()


def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    owned = os.environ.pop(_OWNED, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)



def pytest_collection_finish(session):
    """Finds the grouped tests whose ``xdist_group`` a ``--dist loadgroup`` worker would ignore.

    The tiers run ``-n 2 --dist loadgroup``: the tests sharing an expensive module fixture carry
    one ``xdist_group`` so that one worker builds it once. pytest-xdist marks a grouped test by
    appending ``@group`` to its node id on the worker; when a pytest/xdist pair stops honouring
    that (pytest 9.2 with xdist 3.8), every such fixture is silently built on both workers.
    Such tests fail in setup with the reason (a worker cannot stop the run with a message).
    """
    config = session.config
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        config.stash[_UNGROUPED] = {item.nodeid for item in session.items
                                    if item.get_closest_marker("xdist_group") and "@" not in item.nodeid}


def pytest_runtest_setup(item):
    if item.nodeid in item.config.stash.get(_UNGROUPED, set()):
        pytest.fail("--dist loadgroup ignores this test's xdist_group: this pytest/pytest-xdist pair does not "
                    "group tests (its module fixture would be built on every worker); see pyproject.toml's pins",
                    pytrace=False)
