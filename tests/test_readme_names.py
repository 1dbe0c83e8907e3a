"""Every dotted name ``jaxreg.x.y`` that README.md uses resolves after a plain ``import jaxreg``.

A reader copies ``jaxreg.data.synthetic_pair(...)`` after ``import jaxreg``; a subpackage that
``import jaxreg`` neither imports nor loads on first use (``jaxreg.__getattr__``) would raise
``AttributeError`` there. The names are read from the README with a regex and resolved by a
``getattr`` chain in a fresh interpreter (one subprocess, a few seconds: it imports jaxreg and
the lazily loaded subpackages the README names).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ``jaxreg`` followed by at least one ``.identifier`` (a trailing full stop is not part of a name).
_NAME = re.compile(r"(?<![\w./-])jaxreg(?:\.[A-Za-z_]\w*)+")

_RESOLVE = r"""
import json, sys
import jaxreg
missing = {}
for name in json.loads(sys.argv[1]):
    obj = jaxreg
    for part in name.split(".")[1:]:
        try:
            obj = getattr(obj, part)
        except AttributeError as error:
            missing[name] = f"{type(error).__name__}: {error}"
            break
print(json.dumps(missing))
"""


def readme_names(text: str) -> list[str]:
    """The distinct dotted ``jaxreg.`` names of a Markdown text, in order of appearance."""
    return list(dict.fromkeys(_NAME.findall(text)))


def test_the_regex_finds_dotted_names_only():
    text = ("`jaxreg.data.synthetic_pair(key, shape)` and jaxreg.io. Run `jaxreg register`; "
            "see docs/jaxreg.md, pip install jaxreg, `x.jaxreg.y`, jaxreg.evaluation.l2r: ...")
    assert readme_names(text) == ["jaxreg.data.synthetic_pair", "jaxreg.io", "jaxreg.evaluation.l2r"]


def test_readme_names_resolve_after_import_jaxreg():
    names = readme_names((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "jaxreg.data.synthetic_pair" in names, names  # the case that once raised AttributeError
    out = subprocess.run([sys.executable, "-c", _RESOLVE, json.dumps(names)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    missing = json.loads(out.stdout.strip().splitlines()[-1])
    assert not missing, "README names that do not resolve after `import jaxreg`:\n" + "\n".join(
        f"  {name}: {why}" for name, why in missing.items())
