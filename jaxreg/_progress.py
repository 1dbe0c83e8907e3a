"""Progress bars that count steps, not compilation. Private."""

from __future__ import annotations

__all__ = ["restart_clock"]


def restart_clock(bar) -> None:
    """Starts a ``tqdm`` bar's clock again, keeping its count.

    Call it after the first step of a jitted loop: that step includes XLA's compilation
    (seconds to minutes), which would otherwise enter the rate and the ETA as if every
    remaining step took as long.
    """
    done = bar.n
    bar.reset()
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()
