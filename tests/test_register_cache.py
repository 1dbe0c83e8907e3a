"""A second process loads every program of ``register`` from the persistent cache, progress bar or not,
and traces none of the registration's programs again (``jaxreg._programs``).

JAX never stores a program that contains a host callback, so progress reported from inside the
compiled loop made every process compile every level again. ``register`` now reads the loss
between compiled chunks. Each process below is fresh, shares one cache folder with its
predecessor, and counts JAX's own monitoring events: ``cache_misses`` (a program compiled,
not loaded) and the seconds spent in compiling or loading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import numpy as np
from jax import monitoring
counts = {"misses": 0, "hits": 0}
def event(name, **_):
    if name == "/jax/compilation_cache/cache_misses":
        counts["misses"] += 1
    if name == "/jax/compilation_cache/cache_hits":
        counts["hits"] += 1
monitoring.register_event_listener(event)
import jaxreg
from scipy import ndimage as ndi
fixed = ndi.gaussian_filter(np.random.default_rng(0).normal(size=(40, 40)), 2).astype(np.float32)
moving = np.roll(fixed, 2, axis=0)
calls = []
callback = (lambda *a: calls.append(a)) if sys.argv[1] == "progress" else None
result = jaxreg.register(fixed, moving, levels=(2, 1), steps=(20, 20), affine_options={"steps": 20},
                         callback=callback)
from jaxreg import _programs
print(json.dumps(counts | _programs.COUNTS | {"calls": len(calls), "compile_s": result.info["timings"]["compile"]}))
"""


def _run(cache, mode):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAXREG_COMPILATION_CACHE=str(cache),
               # every program is stored, however quickly it compiled: a fresh process then misses none
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes each: ~20 s
@pytest.mark.parametrize("first, second", [("quiet", "progress"), ("progress", "quiet")])
def test_a_second_process_compiles_nothing(tmp_path, first, second):
    one = _run(tmp_path, first)
    assert one["misses"] > 5  # the first process compiled (and stored) the registration's programs
    two = _run(tmp_path, second)
    assert two["misses"] == 0, (one, two)
    assert two["hits"] >= one["misses"] - 2 and two["compile_s"] < 1.0, (one, two)
    assert (two["calls"] > 0) == (second == "progress")
    # Nor does it trace the registration's programs again: it loads what the first one stored.
    assert one["exported"] > 5 and one["loaded"] == 0, one
    assert two["exported"] == 0 and two["loaded"] == one["exported"], (one, two)
