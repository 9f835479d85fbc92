"""The public recorder: its background writer, and using it from a plain training loop."""
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dprune
from dprune.recorder import Recorder, RecorderError
from dprune.store import TrajectoryStore

README = Path(__file__).resolve().parent.parent / "README.md"


def batches(seed, N, C, n):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, N, (7,), generator=g)  # repeats inside and across batches
        yield idx, torch.randn(7, C, generator=g).to(torch.bfloat16)


def test_writes_are_applied_in_order_and_equal_direct_writes(tmp_path):
    N, C = 30, 5
    rec = Recorder(tmp_path / "a", labels=np.zeros(N, int), n_classes=C, queue_size=2)
    direct = TrajectoryStore.create(tmp_path / "b", np.zeros(N, int), C)
    for e in range(2):
        rec.begin_epoch(e)
        direct.begin_epoch(e)
        for idx, z in batches(e, N, C, 40):
            rec.record(idx, z)
            direct.write(e, idx, z)
            z.zero_()  # the caller reuses its tensors: the recorder must have copied them
        rec.complete_epoch(e)
        direct.complete_epoch(e)
    rec.close()
    direct.close()
    a = TrajectoryStore.open(tmp_path / "a").read(0, N)
    b = TrajectoryStore.open(tmp_path / "b").read(0, N)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])  # running means depend on the order of the writes


def test_back_pressure_bounds_the_queue(tmp_path, monkeypatch):
    N, C = 10, 3
    rec = Recorder(tmp_path / "a", labels=np.zeros(N, int), n_classes=C, queue_size=2)
    rec.begin_epoch(0)
    gate = threading.Event()
    real = rec.store.write
    monkeypatch.setattr(rec.store, "write", lambda *a: (gate.wait(), real(*a)))
    done = []

    def produce():
        for idx, z in batches(0, N, C, 6):
            rec.record(idx, z)
            done.append(1)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(1.0)
    # One batch held by the writer, two in the queue, and record() waiting on the fourth.
    assert len(done) == 3 and t.is_alive()
    gate.set()
    t.join(10)
    assert len(done) == 6
    rec.complete_epoch(0)
    rec.close()
    assert TrajectoryStore.open(tmp_path / "a").counts().sum() == 6 * 7


def test_an_error_on_the_writer_thread_surfaces_in_the_training_process(tmp_path, monkeypatch):
    rec = Recorder(tmp_path / "a", labels=np.zeros(10, int), n_classes=3)
    rec.begin_epoch(0)

    def broken(*a):
        raise OSError(28, "No space left on device", "epoch file")

    monkeypatch.setattr(rec.store, "write", broken)
    rec.record(torch.arange(3), torch.randn(3, 3))
    with pytest.raises(RecorderError, match="No space left on device"):
        for idx, z in batches(0, 10, 3, 50):
            rec.record(idx, z)
            time.sleep(0.01)
        rec.complete_epoch(0)
    rec.close()
    assert TrajectoryStore.open(tmp_path / "a").epochs_completed == 0  # the epoch was never marked complete


def test_a_killed_recording_resumes_without_counting_twice(tmp_path):
    code = f"""
import os, signal, numpy as np, torch
from dprune import Recorder
rec = Recorder({str(tmp_path / 's')!r}, labels=np.zeros(20, int), n_classes=4)
for e in range(rec.sync(None), 3):
    rec.begin_epoch(e)
    for b in range(10):
        rec.record(torch.arange(b * 2, b * 2 + 2), torch.ones(2, 4) * e)
        if e == 1 and b == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    rec.complete_epoch(e)
rec.close()
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert killed.returncode == -9
    assert TrajectoryStore.open(tmp_path / "s").epochs_completed == 1
    resumed = subprocess.run([sys.executable, "-c", code.replace("if e == 1 and b == 5", "if False")],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    store = TrajectoryStore.open(tmp_path / "s")
    assert store.epochs_completed == 3 and (store.counts() == 1).all()
    np.testing.assert_array_equal(store.read(0, 20)[0][:, :, 0], np.repeat([[0.0], [1.0], [2.0]], 20, 1))


def test_sync_rolls_the_store_back_to_the_checkpoint(tmp_path):
    rec = Recorder(tmp_path / "s", labels=np.zeros(4, int), n_classes=2)
    for e in range(3):
        rec.begin_epoch(e)
        rec.record(torch.arange(4), torch.zeros(4, 2))
        rec.complete_epoch(e)
    assert rec.sync(2) == 2 and rec.epochs_completed == 2  # the checkpoint is one epoch behind
    with pytest.raises(dprune.StoreError, match="only 2"):
        rec.sync(5)
    rec.close()


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- recorder-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no recorder example"
    return m.group(1)


@pytest.mark.parametrize("nproc", [1, 2])
def test_the_readme_example_runs_and_records_what_the_trainer_records(tmp_path, nproc):
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "mine"
    if nproc == 1:
        cmd = [sys.executable, str(script), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
               str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The built-in trainer on the same data, sampler seed and ranks.
    ref = tmp_path / "ref"
    args = ["train", "--out", str(ref), "--epochs", "2", "--batch-size", "64", "--no-progress"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "dprune", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               "dprune", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    mine, theirs = TrajectoryStore.open(out), TrajectoryStore.open(ref / "trajectory")
    assert mine.fingerprint == theirs.fingerprint and mine.epochs_completed == theirs.epochs_completed == 2
    np.testing.assert_array_equal(mine.counts(), theirs.counts())
    assert mine.meta["world_size"] == nproc
    z, c = mine.read(0, mine.n_samples)
    assert np.isfinite(z).all() and (c > 0).all()
    scores, _ = dprune.score_store(mine, methods=["entropy"])
    assert np.isfinite(scores["entropy"]).all()


def test_begin_epoch_again_restarts_the_open_epoch_after_the_queued_writes(tmp_path):
    # Issue 23 item 3: the second begin_epoch re-created the epoch's files while the writer
    # thread still wrote the first attempt's batches (SIGBUS, TypeError or counts of 2).
    N, C = 20000, 100
    g = torch.Generator().manual_seed(0)
    batches_ = [(torch.randperm(N, generator=g), torch.randn(N, C, generator=g)) for _ in range(3)]
    rec = Recorder(tmp_path / "s", labels=np.zeros(N, int), n_classes=C)
    rec.begin_epoch(0)
    for idx, z in batches_:
        rec.record(idx, z + 100)  # the first attempt's values must not survive
    rec.begin_epoch(0)
    for idx, z in batches_:
        rec.record(idx, z)
    rec.complete_epoch(0)
    rec.close()
    store = TrajectoryStore.open(tmp_path / "s")
    logits, counts = store.read(0, N)
    assert (counts == 3).all()
    mean = torch.zeros(N, C)
    for idx, z in batches_:
        mean[idx] += z / 3
    np.testing.assert_allclose(logits[0].astype(np.float32), mean.numpy(), atol=2e-3)


def test_reopening_a_store_with_other_labels_ids_or_classes_is_refused(tmp_path):
    # Issue 23 item 4: the public Recorder validates what `dprune train` validates.
    N, C = 12, 4
    y = np.arange(N) % C
    ids = [f"img/{i}.png" for i in range(N)]
    rec = Recorder(tmp_path / "s", labels=y, n_classes=C, sample_ids=ids)
    rec.begin_epoch(0)
    rec.record(torch.arange(N), torch.randn(N, C))
    rec.complete_epoch(0)
    rec.close()
    other = y.copy()
    other[5] = (other[5] + 1) % C
    cases = [(dict(labels=other, n_classes=C, sample_ids=ids), "1 labels differ .first: sample 5"),
             (dict(labels=y[:-1], n_classes=C, sample_ids=ids[:-1]), "N = 12 samples, given 11"),
             (dict(labels=y, n_classes=C + 1, sample_ids=ids), "C = 4 classes, given n_classes = 5"),
             (dict(labels=y, n_classes=C, sample_ids=ids[:3] + ["x"] + ids[4:]), "sample ids differ .first: sample 3"),
             (dict(labels=y, n_classes=C), "sample ids differ .first: sample 0")]
    for kw, message in cases:
        with pytest.raises(RecorderError, match=message):
            Recorder(tmp_path / "s", **kw)
    rec = Recorder(tmp_path / "s", labels=y, n_classes=C, sample_ids=ids)  # the same identity resumes
    assert rec.sync(1) == 1
    rec.close()


def test_a_closed_recorder_refuses_every_call_with_one_error(tmp_path):
    # Issue 23 item 16: record() after close() raised AttributeError from the writer.
    rec = Recorder(tmp_path / "s", labels=np.zeros(4, int), n_classes=2)
    rec.begin_epoch(0)
    rec.close()
    with pytest.raises(RecorderError, match=r"record\(\) on a closed Recorder"):
        rec.record(torch.arange(4), torch.zeros(4, 2))
    with pytest.raises(RecorderError, match=r"begin_epoch\(\) on a closed Recorder"):
        rec.begin_epoch(0)
    with pytest.raises(RecorderError, match=r"complete_epoch\(\) on a closed Recorder"):
        rec.complete_epoch(0)
