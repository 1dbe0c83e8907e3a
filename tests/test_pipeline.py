"""Input pipeline and pair sources: epochs, determinism, resumption, process rows, errors."""

import collections

import numpy as np
import pytest

from jaxreg.data import pipeline, sources
from jaxreg.data.learn2reg import write_learn2reg


class ToySource:
    """n pairs whose content encodes their index (so batches can be traced back)."""

    def __init__(self, n, shape=(4, 5, 6)):
        self.n, self.shape = n, shape

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"fixed": np.full(self.shape, i, np.float32), "moving": np.full(self.shape, -i, np.float32),
                "fixed_labels": np.full(self.shape, i % 3, np.int32), "ids": f"pair{i:03d}",
                "fixed_points": np.zeros((i + 1, 3))}


def _indices(batch):
    return [int(v) for v in batch["fixed"][:, 0, 0, 0]]


def _take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    batches = list(pipeline.batches(ToySource(12), batch_size=3, seed=0, num_epochs=3, num_threads=2))
    assert len(batches) == 12
    epochs = [sum((_indices(b) for b in batches[e * 4:(e + 1) * 4]), []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert len({tuple(o) for o in epochs}) == 3  # reshuffled every epoch
    b = batches[0]
    assert b["fixed"].shape == (3, 4, 5, 6) and b["fixed"].dtype == np.float32
    assert set(b) == {"fixed", "moving", "fixed_labels"}  # DEFAULT_KEYS present; ids/points not asked for
    np.testing.assert_array_equal(b["moving"], -b["fixed"])


def test_same_seed_same_batches_and_resume_continues_exactly():
    def run(seed, start=0):
        return [_indices(b) for b in _take(pipeline.batches(ToySource(10), batch_size=2, seed=seed,
                                                            start_step=start), 12 - start)]

    full = run(7)
    assert full == run(7)
    assert full != run(8)
    assert run(7, start=7) == full[7:]  # crosses an epoch boundary (5 batches per epoch)


def test_transform_is_seeded_per_element_and_epoch():
    def noisy(pair, rng):
        return dict(pair, fixed=pair["fixed"] + rng.normal())

    def run(seed):
        return np.concatenate([b["fixed"][:, 0, 0, 0] for b in _take(
            pipeline.batches(ToySource(4), batch_size=2, seed=seed, shuffle=False, transform=noisy), 4)])

    a = run(1)
    np.testing.assert_array_equal(a, run(1))
    assert not np.allclose(a, run(2))
    assert not np.allclose(a[:4] - np.arange(4), a[4:] - np.arange(4))  # new draws in epoch 2


def test_process_rows_put_together_are_the_global_batches():
    """3 processes reading 2, 1 and 3 rows of a global batch of 6 see exactly its rows, augmented alike."""

    def noisy(pair, rng):  # augmentation must not depend on which process reads the pair
        return dict(pair, moving=pair["moving"] + rng.normal())

    def run(rows=None, start=0):
        return _take(pipeline.batches(ToySource(11), batch_size=6, seed=3, transform=noisy, rows=rows,
                                      start_step=start, num_threads=1), 5 - start)

    whole = run()
    parts = [run(rows) for rows in ((0, 2), (2, 3), (3, 6))]
    for step, batch in enumerate(whole):
        assert batch["fixed"].shape[0] == 6
        for key in ("fixed", "moving"):
            np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key])
    # Every epoch (11 pairs → 1 batch of 6, the rest dropped per pass of the stream) draws from all pairs.
    assert len({i for b in whole for i in _indices(b)}) > 6
    resumed = run((2, 3), start=2)  # resuming a process at step 2 gives its rows of steps 2..4
    np.testing.assert_array_equal(np.concatenate([b["moving"] for b in resumed]),
                                  np.concatenate([b["moving"][2:3] for b in whole[2:]]))


def test_eval_order_keeps_the_last_partial_batch_and_strings():
    batches = list(pipeline.batches(ToySource(5), batch_size=2, shuffle=False, num_epochs=1,
                                    drop_remainder=False, keys=["ids", "fixed"]))
    assert [b["ids"].tolist() for b in batches] == [["pair000", "pair001"], ["pair002", "pair003"], ["pair004"]]


def test_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        next(iter(pipeline.batches(ToySource(4), batch_size=2, keys=["fixed_points"], shuffle=False)))
    with pytest.raises(ValueError, match="no \\['moving_mask'\\]"):
        next(iter(pipeline.batches(ToySource(4), batch_size=2, keys=["fixed", "moving_mask"])))
    with pytest.raises(ValueError, match="cannot fill a global batch of 5"):
        pipeline.batches(ToySource(4), batch_size=5)
    with pytest.raises(ValueError, match="`rows`"):
        pipeline.batches(ToySource(4), batch_size=2, rows=(1, 3))
    with pytest.raises(ValueError, match="data.source"):
        sources.open_source({"source": "oasis3"}, "train")
    with pytest.raises(ValueError, match="data.root"):
        sources.open_source({"source": "acdc"}, "train")
    with pytest.raises(ValueError, match="split"):
        sources.open_source({"source": "synthetic"}, "validation")
    with pytest.raises(ValueError, match="normalize"):
        pipeline.make_transform({"normalize": "histogram"})
    with pytest.raises(ValueError, match="augment"):
        pipeline.make_transform({"augment": {"elastic": True}})


@pytest.mark.slow
def test_folder_source_and_config(tmp_path):
    root = write_learn2reg(tmp_path / "oasis", task="OASIS", num_cases=4, num_val=1, shape=(16, 16, 16))
    data = {"source": "learn2reg", "root": str(root), "batch_size": 2, "normalize": "minmax",
            "augment": {"flip_axes": (0, 1, 2)}, "num_threads": 2}
    train = sources.open_source(data, "train")
    assert len(train) == 2  # subjects 3 and 4 form the validation pair; 1→2 and 2→1 remain
    with pytest.raises(ValueError, match="do not fit"):
        sources.open_source(dict(data, options={"spacing": 2.0}), "train")
    batch = next(iter(pipeline.from_config(data, "train")))
    assert batch["fixed"].shape == (2, 16, 16, 16) and batch["fixed_labels"].dtype == np.int32
    assert batch["fixed"].min() == 0.0 and batch["fixed"].max() == 1.0
    val = list(pipeline.from_config(data, "val", train=False))
    assert len(val) == 1 and val[0]["fixed"].shape[0] == 1
    reference = sources.open_source(data, "val")[0]
    lo, hi = reference["fixed"].min(), reference["fixed"].max()
    np.testing.assert_allclose(val[0]["fixed"][0], (reference["fixed"] - lo) / (hi - lo), atol=1e-6)


def test_synthetic_source_splits_are_distinct_and_stable():
    options = {"shape": (16, 16, 16), "anatomy": "cardiac"}
    train = sources.SyntheticPairs(3, seed=0, split="train", **options)
    val = sources.SyntheticPairs(3, seed=0, split="val", **options)
    a, b = train[1], sources.SyntheticPairs(3, seed=0, split="train", **options)[1]
    np.testing.assert_array_equal(a["moving"], b["moving"])
    assert not np.allclose(a["moving"], val[1]["moving"])
    assert a["ddf"].shape == (16, 16, 16, 3) and a["ids"] == "synthetic_train_00001"
    counts = collections.Counter(np.unique(a["fixed_labels"]).tolist())
    assert set(counts) <= {0, 1, 2, 3}
    with pytest.raises(IndexError):
        train[3]
    with pytest.raises(ValueError, match="anatomy"):
        sources.SyntheticPairs(2, anatomy="liver")
