"""The summary store scores like the full store for the same writes, and completes epochs atomically."""
import json

import numpy as np
import pytest
import torch

from dprune.scoring import FLAGS, METHODS, score_store
from dprune.scoring.api import FLAG_METHOD_OUTPUTS
from dprune.scoring.online import SummaryFold, summary_stats
from dprune.store import StoreError, SummaryStore, TrajectoryStore, open_or_create_store, open_store

FOLD = SummaryFold()

N, C, E = 41, 9, 5
EXACT = ("soft_argmax", "nonfinite", "n_observed", "mislabel", "outlier", "confident", "confident_label",
         "confident_relabel")


def batches(seed, epoch, *, repeats_across_calls=True, nonfinite=False):
    """One epoch of (indices, logits) batches: repeated indices within a batch (and across
    batches if asked), samples 0-2 never observed, and a sample skipped in odd epochs."""
    rng = np.random.default_rng(seed * 100 + epoch)
    pool = np.arange(3, N)
    if epoch % 2:
        pool = pool[pool != 5]
    if repeats_across_calls:
        order = np.concatenate([rng.permutation(pool), rng.choice(pool, 12)])
        parts = np.array_split(order, 4)
    else:
        # Every sample's observations in one batch: the epoch means are bit-identical.
        groups = np.array_split(rng.permutation(pool), 4)
        parts = [np.concatenate([g, rng.choice(g, 5)]) for g in groups]
    out = []
    for i, idx in enumerate(parts):
        z = rng.normal(0, 3, (len(idx), C)).astype(np.float32)
        if nonfinite and epoch == 2 and i == 0:
            z[0, 4] = np.nan
            z[1, :] = -np.inf
        out.append((idx, z))
    return out


def record(store, seed, epochs, **kw):
    for e in epochs:
        store.begin_epoch(e)
        for idx, z in batches(seed, e, **kw):
            store.write(e, idx, z)
        store.complete_epoch(e)
    return store


def assert_same_scores(a, b, rtol, atol):
    assert set(a) == set(b) == set(METHODS) | set(FLAGS) | set(FLAG_METHOD_OUTPUTS)
    for k in a:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if k in EXACT:
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=k)


def labels():
    return np.random.default_rng(7).integers(0, C, N)


@pytest.mark.parametrize("dtype, across, rtol, atol", [
    ("float32", True, 1e-5, 1e-6),
    ("float16", False, 1e-5, 1e-6),
])
def test_summary_scores_equal_full_scores(tmp_path, dtype, across, rtol, atol):
    y = labels()
    full = record(TrajectoryStore.create(tmp_path / "full", y, C, dtype=dtype), 1, range(E), repeats_across_calls=across)
    summ = record(SummaryStore.create(tmp_path / "summ", y, C, dtype=dtype, fold=FOLD), 1, range(E), repeats_across_calls=across)
    want, _ = score_store(TrajectoryStore.open(tmp_path / "full"), chunk_size=8)
    got, ran = score_store(SummaryStore.open(tmp_path / "summ"), chunk_size=7)
    assert ran == "summary"
    assert np.isnan(got["entropy"][:3]).all() and (got["n_observed"][:3] == 0).all()
    assert_same_scores(got, want, rtol, atol)
    np.testing.assert_array_equal(summ.counts(), full.counts())


def test_summary_scores_with_nonfinite_observations(tmp_path):
    y = labels()
    record(TrajectoryStore.create(tmp_path / "full", y, C, dtype="float32"), 2, range(E), nonfinite=True)
    record(SummaryStore.create(tmp_path / "summ", y, C, dtype="float32", fold=FOLD), 2, range(E), nonfinite=True)
    want, _ = score_store(TrajectoryStore.open(tmp_path / "full"))
    got, _ = score_store(SummaryStore.open(tmp_path / "summ"))
    assert got["nonfinite"].sum() >= 1
    assert_same_scores(got, want, 1e-5, 1e-6)


def test_interrupted_epoch_is_redone_not_counted_twice(tmp_path):
    y = labels()
    record(TrajectoryStore.create(tmp_path / "full", y, C, dtype="float32"), 3, range(E))
    summ = record(SummaryStore.create(tmp_path / "summ", y, C, dtype="float32", fold=FOLD), 3, range(2))
    summ.begin_epoch(2)  # killed half way through epoch 2
    for idx, z in batches(3, 2)[:2]:
        summ.write(2, idx, z)
    summ.close()  # the writer dies; its lock goes with it
    resumed = SummaryStore.open(tmp_path / "summ", "a", fold=FOLD)
    assert resumed.epochs_completed == 2
    record(resumed, 3, range(2, E))
    want, _ = score_store(TrajectoryStore.open(tmp_path / "full"))
    got, _ = score_store(SummaryStore.open(tmp_path / "summ"))
    assert_same_scores(got, want, 1e-5, 1e-6)


@pytest.mark.parametrize("crash_at", ["fold", "fsync"])
def test_crash_during_completion_leaves_the_previous_state(tmp_path, monkeypatch, crash_at):
    y = labels()
    record(TrajectoryStore.create(tmp_path / "full", y, C, dtype="float32"), 4, range(E))
    summ = record(SummaryStore.create(tmp_path / "summ", y, C, dtype="float32", fold=FOLD), 4, range(3))
    summ.begin_epoch(3)
    for idx, z in batches(4, 3):
        summ.write(3, idx, z)
    real_fold = SummaryStore._fold_rows
    calls = []

    def fold_then_crash(self, a, b, *args):
        real_fold(self, a, b, *args)  # part of the next state is written before the crash
        calls.append(a)
        if crash_at == "fold" or b == self.n_samples:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(SummaryStore, "_fold_rows", fold_then_crash)
    monkeypatch.setattr("dprune.store.summary._FOLD_BYTES", C * 4 * 8 * 10)  # several fold chunks
    with pytest.raises(KeyboardInterrupt):
        summ.complete_epoch(3)
    monkeypatch.undo()
    assert calls
    summ.close()  # the killed writer's lock goes with its process
    resumed = SummaryStore.open(tmp_path / "summ", "a", fold=FOLD)
    assert resumed.epochs_completed == 3
    record(resumed, 4, range(3, E))
    want, _ = score_store(TrajectoryStore.open(tmp_path / "full"))
    got, _ = score_store(SummaryStore.open(tmp_path / "summ"))
    assert_same_scores(got, want, 1e-5, 1e-6)


def test_rollback_undoes_one_epoch(tmp_path):
    y = labels()
    record(TrajectoryStore.create(tmp_path / "full", y, C, dtype="float32"), 5, range(3))
    summ = record(SummaryStore.create(tmp_path / "summ", y, C, dtype="float32", fold=FOLD), 5, range(4))
    summ.rollback(3)
    assert SummaryStore.open(tmp_path / "summ").epochs_completed == 3
    with pytest.raises(StoreError, match="only the last completed epoch"):
        summ.rollback(2)
    want, _ = score_store(TrajectoryStore.open(tmp_path / "full"))
    got, _ = score_store(SummaryStore.open(tmp_path / "summ"))
    assert_same_scores(got, want, 1e-5, 1e-6)


def test_files_identify_the_store_like_the_full_store(tmp_path):
    y = labels()
    ids = [f"img/{i}.jpg" for i in range(N)]
    full = TrajectoryStore.create(tmp_path / "full", y, C, sample_ids=ids, command="x")
    summ = SummaryStore.create(tmp_path / "summ", y, C, sample_ids=ids, command="x", fold=FOLD)
    meta = json.loads((tmp_path / "summ" / "meta.json").read_text())
    assert meta["kind"] == "summary"
    assert summ.fingerprint == full.fingerprint
    for name in ("labels.npy", "sample_ids.txt"):
        assert (tmp_path / "summ" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    reopened = SummaryStore.open(tmp_path / "summ")
    assert (reopened.n_samples, reopened.n_classes, reopened.sample_ids) == (N, C, ids)
    np.testing.assert_array_equal(reopened.labels, y)


def test_factory_opens_and_creates_by_kind(tmp_path):
    y = labels()
    s = open_or_create_store("summary", tmp_path / "s", y, C, dtype="float32", fold=FOLD)
    assert isinstance(s, SummaryStore)
    record(s, 8, range(1))
    s.close()
    s = open_or_create_store("summary", tmp_path / "s", y, C, fold=FOLD)
    assert isinstance(s, SummaryStore)
    s.close()
    assert isinstance(open_store(tmp_path / "s"), SummaryStore)
    f = open_or_create_store("full", tmp_path / "f", y, C)
    assert isinstance(f, TrajectoryStore) and isinstance(open_store(tmp_path / "f"), TrajectoryStore)
    with pytest.raises(StoreError, match="holds a summary store"):
        open_or_create_store("full", tmp_path / "s", y, C)
    with pytest.raises(StoreError, match="not a summary store"):
        SummaryStore.open(tmp_path / "f")
    with pytest.raises(ValueError, match="valid: full, summary"):
        open_or_create_store("tiny", tmp_path / "x", y, C)


def test_writer_errors(tmp_path):
    summ = SummaryStore.create(tmp_path / "s", labels(), C, fold=FOLD)
    with pytest.raises(StoreError, match="next epoch to record is 0"):
        summ.begin_epoch(1)
    with pytest.raises(StoreError, match="not open"):
        summ.write(0, [1], np.zeros((1, C)))
    summ.begin_epoch(0)
    with pytest.raises(ValueError, match=rf"logits \[B, {C}\]"):
        summ.write(0, [1, 2], np.zeros((2, C + 1)))
    with pytest.raises(ValueError, match="out of range"):
        summ.write(0, [N], np.zeros((1, C)))
    summ.write(0, np.array([], np.int64), np.zeros((0, C)))
    summ.complete_epoch(0)
    with pytest.raises(StoreError, match="read-only"):
        SummaryStore.open(tmp_path / "s").begin_epoch(1)
    with pytest.raises(ValueError, match="chunk_size"):
        next(summary_stats(SummaryStore.open(tmp_path / "s"), 0))
    summ.close()
    with pytest.raises(ValueError, match="needs a fold"):
        SummaryStore.open(tmp_path / "s", "a")


def test_missing_state_file_is_reported(tmp_path):
    record(SummaryStore.create(tmp_path / "s", labels(), C, fold=FOLD), 9, range(1))
    (tmp_path / "s" / "state_0001.p_sum.npy").unlink()
    with pytest.raises(StoreError, match="state_0001.p_sum.npy is missing"):
        SummaryStore.open(tmp_path / "s")


def test_accepts_torch_tensors_of_any_float_dtype(tmp_path):
    y = labels()
    full = TrajectoryStore.create(tmp_path / "f", y, C, dtype="float32")
    summ = SummaryStore.create(tmp_path / "s", y, C, dtype="float32", fold=FOLD)
    for store in (full, summ):
        store.begin_epoch(0)
        for idx, z in batches(10, 0, repeats_across_calls=False):
            store.write(0, torch.from_numpy(idx), torch.from_numpy(z).to(torch.bfloat16))
        store.complete_epoch(0)
    want, _ = score_store(TrajectoryStore.open(tmp_path / "f"))
    got, _ = score_store(SummaryStore.open(tmp_path / "s"))
    assert_same_scores(got, want, 1e-5, 1e-6)


def test_the_summary_store_stores_an_epoch_mean_as_the_full_store_does_fp16_saturation_included(tmp_path):
    """Item 4 of issue 20: one rule (dprune.store.means) for both kinds; a mean beyond fp16 saturates."""
    y = labels()
    full = TrajectoryStore.create(tmp_path / "full", y, C)
    summ = SummaryStore.create(tmp_path / "summ", y, C, fold=FOLD)
    rng = np.random.default_rng(3)
    idx = np.r_[np.arange(N), np.arange(0, N, 3)]  # every third sample observed twice
    z = rng.normal(0, 2, (len(idx), C)).astype(np.float32)
    z[0, 1] = z[N, 1] = 7e4  # a mean beyond the fp16 range
    for store in (full, summ):
        store.begin_epoch(0)
        store.write(0, idx, z)
        store.complete_epoch(0)
    np.testing.assert_array_equal(np.asarray(summ.state()["prev"]), np.asarray(full.read(0, N)[0][0]))
    assert full.meta["saturated"] == 1 and np.isfinite(np.asarray(summ.state()["prev"])).all()
