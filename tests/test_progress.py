"""The progress bars' ETA counts steps, not the compiling first step (jaxreg._progress.restart_clock)."""

import io
import time

from tqdm import tqdm

from jaxreg._progress import restart_clock


def _eta_after(first_step_s: float, *, restart: bool) -> tuple[int, float]:
    """(count, ETA in s) of a 100-step bar after a slow first step and 9 steps of ~10 ms."""
    bar = tqdm(total=100, file=io.StringIO(), mininterval=0)
    time.sleep(first_step_s)
    bar.update(1)
    if restart:
        restart_clock(bar)
    for _ in range(9):
        time.sleep(0.01)
        bar.update(1)
    info = bar.format_dict
    rate = info["rate"] or (info["n"] - info["initial"]) / info["elapsed"]
    bar.close()
    return info["n"], (info["total"] - info["n"]) / rate


def test_restart_keeps_the_count_and_drops_the_first_step_from_the_eta():
    count, eta = _eta_after(1.0, restart=True)
    assert count == 10
    # 90 steps of >= 10 ms: about 1 s; the 1 s first step must not count as a typical step.
    assert 0.8 < eta < 2.5
    count, polluted = _eta_after(1.0, restart=False)
    assert count == 10 and polluted > eta + 0.5  # what the bar said without the restart
