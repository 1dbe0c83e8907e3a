"""What ``train.py`` and ``eval.py`` share: one-line errors instead of tracebacks.

Errors a user causes (a bad config value, a missing folder, a flag of the wrong type) are
printed as one ``error: ...`` line on stderr and exit with status 2 (flags) or 1 (the rest).
``JAXREG_DEBUG=1`` re-raises them with the full traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import flags, logging

__all__ = ["USER_ERRORS", "parse_flags", "run_main"]

USER_ERRORS = (ValueError, OSError, KeyError)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(message: str) -> str:
    """The gist of a flag error: its first line, plus the final line of an embedded traceback."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid flags"
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return lines[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing (incl. ``--config`` files and overrides) with one-line errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        _fail(_one_line(str(err)), 2)
    except AttributeError as err:  # config_flags: an override of a field the config lacks
        inner = err.args[0] if err.args else err  # config_dict wraps a KeyError
        detail = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        detail = " ".join(str(detail).split())
        _fail(f"a --config.* override names a field the config does not have: {detail}", 2)
    except USER_ERRORS as err:  # raised by a config file's get_config
        _fail(str(err), 2)


def run_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Wraps ``main`` so user errors end as one line and a non-zero exit."""

    def wrapped(argv):
        if not flags.FLAGS["verbosity"].present:  # absl logs INFO by default; keep the console for progress
            logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except USER_ERRORS as err:
            if os.environ.get("JAXREG_DEBUG"):
                raise
            message = f"missing config field {err}" if isinstance(err, KeyError) else " ".join(str(err).split())
            _fail(message, 1)

    return wrapped
