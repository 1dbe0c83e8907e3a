"""The progress bars' ETA: it counts steps, not the compiling first step (jaxreg._progress.restart_clock),
and bars over a generator of pairs know how many pairs come (their total).
"""

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


def test_teacher_fields_bar_has_the_number_of_pairs_as_total(monkeypatch):
    """The bar over a generator of records knows its length (and so shows an ETA)."""
    import jax.numpy as jnp
    import ml_collections

    from jaxreg.training import teacher as teacher_module

    bars = []

    def recording_tqdm(iterable, **kwargs):
        bar = tqdm(iterable, file=io.StringIO(), mininterval=0, **{k: v for k, v in kwargs.items() if k != "disable"})
        bars.append(bar)
        return bar

    monkeypatch.setattr(teacher_module, "tqdm", recording_tqdm)
    data = ml_collections.ConfigDict({"source": "synthetic", "seed": 0, "num_pairs": {"train": 3, "val": 1, "test": 1},
                                      "options": {"shape": (16, 16), "anatomy": "cardiac"}})
    zero = lambda f, m: jnp.zeros((*f.shape, 2))  # noqa: E731
    for limit, pairs in ((0, 3), (2, 2), (10, 3)):  # 3 training pairs; a limit above that gives all 3
        assert teacher_module.field_statistics(zero, data, limit=limit)["pairs"] == pairs
        assert bars[-1].total == pairs and bars[-1].n == pairs
