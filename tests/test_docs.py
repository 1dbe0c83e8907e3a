"""The generated API reference matches the docstrings (regenerate with ``python docs/make_api.py``)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_every_public_name_is_documented():
    api = (ROOT / "docs" / "api.md").read_text()
    assert "(no docstring)" not in api
    assert "ForwardRef(" not in api  # annotations as written in the source
    for module in ("jaxreg.data", "jaxreg.evaluation.l2r", "jaxreg.evaluation.figures", "jaxreg.runs.restore"):
        assert f"## `{module}`:" in api, module
    for name in ("jaxreg.register.register", "jaxreg.register.load_model", "jaxreg.optimize.optimize",
                 "jaxreg.runs.restore.load_run", "jaxreg.evaluation.l2r.dice", "jaxreg.data.synthetic.synthetic_pair"):
        assert f"### `{name}(" in api, name
