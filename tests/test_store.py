"""The trajectory store: round trip, averaging, chunked reads, crash safety, bad files."""
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dprune.store import StoreError, TrajectoryStore


def make_store(tmp_path, N=10, C=4, dtype="float16", seed=0):
    labels = np.random.default_rng(seed).integers(0, C, N)
    return TrajectoryStore.create(tmp_path / "run", labels, C, dtype=dtype, sample_ids=[f"img/{i}.png" for i in range(N)])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 30), st.integers(2, 9), st.integers(1, 4), st.sampled_from(["float16", "float32"]))
def test_repeated_indices_are_averaged_by_count(seed, N, C, n_batches, dtype):
    import tempfile

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        store = TrajectoryStore.create(d, rng.integers(0, C, N), C, dtype=dtype)
        store.begin_epoch(0)
        sums, counts = np.zeros((N, C)), np.zeros(N, int)
        for _ in range(n_batches):
            idx = rng.integers(0, N, rng.integers(0, 2 * N + 1))  # repeats within and across batches
            z = rng.normal(0, 3, (len(idx), C)).astype(np.float32)
            store.write(0, idx, z)
            np.add.at(sums, idx, z)
            np.add.at(counts, idx, 1)
        store.complete_epoch(0)
        logits, got_counts = TrajectoryStore.open(d).read(0, N)
    np.testing.assert_array_equal(got_counts[0], counts)
    seen = counts > 0
    want = sums[seen] / counts[seen, None]
    tol = 2e-3 * (1 + np.abs(want)) if dtype == "float16" else 1e-5 * (1 + np.abs(want))
    assert (np.abs(logits[0][seen].astype(np.float64) - want) <= tol).all()
    assert (logits[0][~seen] == 0).all()


def test_round_trip_meta_labels_ids_and_torch_inputs(tmp_path):
    store = make_store(tmp_path, N=6, C=3, dtype="float32")
    store.begin_epoch(0)
    store.write(0, torch.tensor([5, 0]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.bfloat16))
    store.complete_epoch(0)
    again = TrajectoryStore.open(tmp_path / "run")
    assert again.epochs_completed == 1 and again.n_samples == 6 and again.n_classes == 3
    assert again.sample_ids[5] == "img/5.png" and again.fingerprint == store.fingerprint
    np.testing.assert_array_equal(again.labels, store.labels)
    logits, counts = again.read(0, 6)
    np.testing.assert_allclose(logits[0, 5], [1, 2, 3])
    assert counts[0].tolist() == [1, 0, 0, 0, 0, 1]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    for key in ("format_version", "n_samples", "n_classes", "dtype", "epochs_planned", "epochs_completed",
                "fingerprint", "labels_source", "command", "world_size"):
        assert key in meta


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 50), st.integers(2, 5), st.integers(1, 3), st.integers(1, 60))
def test_chunked_reading_equals_whole_reading(seed, N, C, E, chunk):
    import tempfile

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        store = TrajectoryStore.create(d, rng.integers(0, C, N), C)
        for e in range(E):
            store.begin_epoch(e)
            idx = rng.integers(0, N, N)
            store.write(e, idx, rng.normal(size=(N, C)))
            store.complete_epoch(e)
        whole, whole_counts = store.read(0, N)
        parts = [(s, t, z.copy(), c.copy()) for s, t, z, c in store.iter_chunks(chunk)]
    assert [p[0] for p in parts] == list(range(0, N, chunk))
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts], axis=1), whole)
    np.testing.assert_array_equal(np.concatenate([p[3] for p in parts], axis=1), whole_counts)


def test_interrupted_epoch_is_not_complete_and_resume_redoes_it(tmp_path):
    store = make_store(tmp_path)
    z = np.ones((10, 4))
    store.begin_epoch(0)
    store.write(0, np.arange(10), z)
    store.complete_epoch(0)
    store.begin_epoch(1)
    store.write(0 + 1, np.arange(5), 7 * z[:5])  # then the process dies: no complete_epoch
    del store

    reader = TrajectoryStore.open(tmp_path / "run")
    assert reader.epochs_completed == 1
    with pytest.raises(ValueError, match="not complete"):
        reader.read(0, 10, epochs=[1])

    resumed = TrajectoryStore.open(tmp_path / "run", "a")
    with pytest.raises(StoreError, match="next epoch to record is 1"):
        resumed.begin_epoch(2)
    resumed.begin_epoch(1)  # replay the whole epoch
    resumed.write(1, np.arange(10), 2 * z)
    resumed.complete_epoch(1)
    logits, counts = TrajectoryStore.open(tmp_path / "run").read(0, 10)
    assert counts[1].tolist() == [1] * 10  # the dead attempt's observations are not counted
    np.testing.assert_array_equal(logits[1], 2 * z)


def test_completed_epochs_cannot_be_rewritten_and_read_only_refuses_writes(tmp_path):
    store = make_store(tmp_path)
    store.begin_epoch(0)
    store.complete_epoch(0)
    with pytest.raises(StoreError, match="cannot record epoch 0"):
        store.begin_epoch(0)
    with pytest.raises(StoreError, match="read-only"):
        TrajectoryStore.open(tmp_path / "run").begin_epoch(1)
    with pytest.raises(StoreError, match="not open for writing"):
        store.write(1, [0], np.zeros((1, 4)))


def test_truncated_epoch_file_is_reported(tmp_path):
    store = make_store(tmp_path, N=100)
    store.begin_epoch(0)
    store.complete_epoch(0)
    f = tmp_path / "run" / "epoch_0000.logits.npy"
    os.truncate(f, f.stat().st_size - 10)
    with pytest.raises(StoreError, match="truncated"):
        TrajectoryStore.open(tmp_path / "run")


def test_missing_epoch_file_is_reported(tmp_path):
    store = make_store(tmp_path)
    store.begin_epoch(0)
    store.complete_epoch(0)
    (tmp_path / "run" / "epoch_0000.counts.npy").unlink()
    with pytest.raises(StoreError, match="marked complete but epoch_0000.counts.npy is missing"):
        TrajectoryStore.open(tmp_path / "run")


@pytest.mark.parametrize("content, match", [
    (None, "meta.json not found"),
    ("{\"format_version\": 1, \"n_sam", "meta.json is corrupt"),
    ("[1, 2]", "expected a JSON object"),
    ("{\"format_version\": 1}", "missing n_samples"),
])
def test_missing_or_corrupt_meta_is_reported(tmp_path, content, match):
    make_store(tmp_path)
    meta = tmp_path / "run" / "meta.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(StoreError, match=match):
        TrajectoryStore.open(tmp_path / "run")


def test_tampered_labels_break_the_fingerprint(tmp_path):
    store = make_store(tmp_path, C=4)
    labels = store.labels.copy()
    labels[0] = (labels[0] + 1) % 4
    np.save(tmp_path / "run" / "labels.npy", labels)
    with pytest.raises(StoreError, match="do not match the fingerprint"):
        TrajectoryStore.open(tmp_path / "run")


@pytest.mark.parametrize("labels, C, match", [
    ([0, 1, 5], 3, r"labels must lie in \[0, 3\), got range \[0, 5\] \(first bad: 5 at index 2\)"),
    ([0, -1], 3, r"first bad: -1 at index 1"),
    ([[0, 1]], 3, r"labels must be 1-D \[N\], got shape \(1, 2\)"),
    ([0.5, 1], 3, "labels must be integers, got dtype float64"),
    ([1.0, 0.0], 3, "labels must be integers, got dtype float64"),
    ([0, 0], 1, "n_classes >= 2"),
])
def test_bad_labels_are_refused(tmp_path, labels, C, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryStore.create(tmp_path / "run", labels, C)


def test_bad_writes_are_refused(tmp_path):
    store = make_store(tmp_path, N=5, C=3)
    store.begin_epoch(0)
    with pytest.raises(ValueError, match=r"expected indices \[B\] and logits \[B, 3\], got \(2,\) and \(2, 4\)"):
        store.write(0, [0, 1], np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"out of range \[0, 5\)"):
        store.write(0, [0, 5], np.zeros((2, 3)))


def test_existing_store_is_not_overwritten_silently(tmp_path):
    make_store(tmp_path)
    with pytest.raises(StoreError, match="already holds"):
        make_store(tmp_path)


def test_streaming_memory_is_bounded_by_the_chunk(tmp_path):
    N, C, E = 20000, 100, 3  # 12 MB of fp16 logits
    store = TrajectoryStore.create(tmp_path / "big", np.zeros(N, int), C)
    rng = np.random.default_rng(0)
    for e in range(E):
        store.begin_epoch(e)
        for s in range(0, N, 5000):
            store.write(e, np.arange(s, s + 5000), rng.normal(size=(5000, C)).astype(np.float32))
        store.complete_epoch(e)
    tracemalloc.start()
    total = 0.0
    for _, _, z, _ in TrajectoryStore.open(tmp_path / "big").iter_chunks(1000):
        total += float(z[:, :, 0].astype(np.float32).sum())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    chunk_bytes = E * 1000 * C * 2
    assert peak < 4 * chunk_bytes, f"peak {peak} bytes for a {chunk_bytes}-byte chunk"


def test_a_reader_keeps_its_snapshot_while_the_writer_rolls_back_and_records_again(tmp_path):
    store = make_store(tmp_path, N=6, C=3, dtype="float32")
    for e in range(2):
        store.begin_epoch(e)
        store.write(e, np.arange(6), np.full((6, 3), float(e)))
        store.complete_epoch(e)
    reader = TrajectoryStore.open(tmp_path / "run")
    old = reader.identity()
    store.rollback(1)
    store.begin_epoch(1)
    store.write(1, np.arange(6), np.full((6, 3), 7.0))
    store.complete_epoch(1)
    np.testing.assert_array_equal(reader.read(0, 6)[0][1], 1.0)  # the snapshot's epoch, not the new one
    fresh = TrajectoryStore.open(tmp_path / "run")
    np.testing.assert_array_equal(fresh.read(0, 6)[0][1], 7.0)
    assert fresh.identity() != old and fresh.identity(1) == reader.identity(1)  # epoch 0 unchanged


def test_merge_batch_reads_no_row_before_its_first_observation_of_the_epoch():
    """Item 4 of issue 20: a row written for the first time is not read (what it held is irrelevant)."""
    from dprune.store.full import merge_batch

    logits = np.full((6, 3), np.nan, np.float16)  # never-written rows: garbage that must not leak in
    counts = np.zeros(6, np.int32)
    z = np.arange(12, dtype=np.float32).reshape(4, 3)
    merge_batch(logits, counts, np.array([1, 4, 1, 5]), z)
    np.testing.assert_array_equal(logits[1], ((z[0] + z[2]) / 2).astype(np.float16))
    np.testing.assert_array_equal(logits[[4, 5]], z[[1, 3]].astype(np.float16))
    assert np.isnan(logits[[0, 2, 3]]).all() and counts.tolist() == [0, 2, 0, 0, 1, 1]
    merge_batch(logits, counts, np.array([1]), np.full((1, 3), 30, np.float32))  # a seen row merges
    np.testing.assert_allclose(logits[1].astype(np.float32), (z[0] + z[2] + 30) / 3, rtol=1e-3)
    assert counts[1] == 3


def test_the_epoch_mean_rule_merges_batches_and_saturates_fp16():
    from dprune.store.means import FP16_MAX, merge_means, to_store_dtype

    rng = np.random.default_rng(0)
    obs = rng.normal(0, 5, (7, 4)).astype(np.float32)  # seven observations of one sample
    m, c = np.zeros((1, 4), np.float32), np.zeros(1)
    for part in (obs[:3], obs[3:4], obs[4:]):
        m, c = merge_means(m, c, part.sum(0, keepdims=True), np.array([len(part)])), c + len(part)
    np.testing.assert_allclose(m[0], obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merge_means(0, 0, np.ones((2, 4), np.float32), np.array([0, 2])),
                                  [[0] * 4, [0.5] * 4])  # unobserved rows are 0
    big = np.array([[1.0, FP16_MAX, 65519.0, 7e4, -1e6, np.inf, np.nan]], np.float32)
    h, saturated = to_store_dtype(big.copy(), np.float16)
    assert saturated == 3 and h[0, :5].tolist() == [1.0, FP16_MAX, FP16_MAX, FP16_MAX, -FP16_MAX]
    assert np.isposinf(h[0, 5]) and np.isnan(h[0, 6])
    assert to_store_dtype(big.copy(), np.float32)[1] == 0
