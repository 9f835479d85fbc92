"""Training with recording: single process in-process, and 2-process torchrun / DeepSpeed on gloo."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data.distributed import DistributedSampler

from dprune.data import build_dataset
from dprune.models import build_model
from dprune.manifest import write_manifest
from dprune.scoring import score_store
from dprune.select import select
from dprune.store import TrajectoryStore
from dprune.train import TrainConfig
from dprune.train.loop import Trainer

N_DIGITS_TRAIN = len(build_dataset("digits")[0])


def expected_counts(n, world_size, epochs, seed=0, shuffle=True):
    """What DistributedSampler hands out, per epoch, over all ranks (padding included)."""
    out = np.zeros((epochs, n), np.int64)
    for e in range(epochs):
        for r in range(world_size):
            s = DistributedSampler(range(n), num_replicas=world_size, rank=r, shuffle=shuffle, seed=seed)
            s.set_epoch(e)
            np.add.at(out[e], list(s), 1)
    return out


def write_test_manifest(path, sel, store):
    write_manifest(path, sel, source_run=str(store.run_dir), made_from=store.identity(), n_classes=store.n_classes)


def launch(args, out, nproc=2, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dprune", "train", "--out", str(out), "--no-progress", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def kill_process_tree(pid):
    """SIGKILL the process group of ``pid`` and of each descendant (torchrun starts its
    workers in sessions of their own, so one group does not cover them all)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for pgid in {os.getpgid(p) for p in tree if Path(f"/proc/{p}").exists()}:
        os.killpg(pgid, signal.SIGKILL)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_single_process_run_records_every_epoch_and_resumes(tmp_path):
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=2, batch_size=128, progress=False)
    metrics = Trainer(cfg).fit()
    assert len(metrics) == 2 and metrics[-1]["test_metric"] > 0.5 and metrics[-1]["metric_name"] == "top-1"
    store = TrajectoryStore.open(tmp_path / "r" / "trajectory")
    assert store.epochs_completed == 2
    np.testing.assert_array_equal(store.counts(), expected_counts(N_DIGITS_TRAIN, 1, 2))
    # Asking for more epochs continues from the checkpoint: no epoch is redone.
    more = Trainer(TrainConfig.of(out=str(tmp_path / "r"), epochs=3, batch_size=128, progress=False)).fit()
    assert [m["epoch"] for m in more] == [0, 1, 2]
    assert TrajectoryStore.open(tmp_path / "r" / "trajectory").epochs_completed == 3


@pytest.mark.parametrize("every, evaluated", [(0, [False, False, True]), (2, [False, True, True])])
def test_eval_every_evaluates_only_the_due_epochs_and_the_last(tmp_path, every, evaluated):
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=3, batch_size=256, record="off", eval_every=every,
                      max_steps_per_epoch=2, progress=False)
    metrics = Trainer(cfg).fit()
    assert [not np.isnan(m["test_metric"]) for m in metrics] == evaluated
    assert {m["metric_name"] for m in metrics} == {"top-1"}


def test_store_ahead_of_checkpoint_is_rolled_back_and_rerecorded(tmp_path):
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=1, batch_size=256, progress=False)
    Trainer(cfg).fit()
    ckpt = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    Trainer(TrainConfig.of(out=str(tmp_path / "r"), epochs=2, batch_size=256, progress=False)).fit()
    # Killed after epoch 2 was marked complete but before its checkpoint was written:
    (tmp_path / "r" / "checkpoint.pt").write_bytes(ckpt)
    Trainer(TrainConfig.of(out=str(tmp_path / "r"), epochs=2, batch_size=256, progress=False)).fit()
    store = TrajectoryStore.open(tmp_path / "r" / "trajectory")
    assert store.epochs_completed == 2
    np.testing.assert_array_equal(store.counts(), expected_counts(N_DIGITS_TRAIN, 1, 2))


def test_hostile_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "r").mkdir()
    torch.save({"model": Evil()}, tmp_path / "r" / "checkpoint.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        Trainer(TrainConfig.of(out=str(tmp_path / "r"), epochs=1, progress=False)).fit()
    assert not (tmp_path / "pwned").exists()


def test_manifest_retraining_sees_exactly_the_kept_samples_with_new_labels(tmp_path):
    rec = TrainConfig.of(out=str(tmp_path / "rec"), epochs=2, batch_size=256, progress=False)
    Trainer(rec).fit()
    store = TrajectoryStore.open(tmp_path / "rec" / "trajectory")
    scores, _ = score_store(store, methods=["entropy"])
    scores["soft_argmax"] = (store.labels + 1) % 10  # a disagreeing soft label...
    scores["mislabel"] = np.arange(store.n_samples) % 7 == 0  # ...flagged for every 7th sample
    sel = select(scores, store.labels, 10, method="entropy", ratio=0.4, relabel=True)
    write_test_manifest(tmp_path / "m.json", sel, store)
    assert len(sel.relabel_index) > 0

    trainer = Trainer(TrainConfig.of(out=str(tmp_path / "re"), epochs=1, batch_size=100, record="off",
                                  manifest=str(tmp_path / "m.json"), progress=False))
    seen_idx, seen_y = [], []
    trainer.loaders.sampler.set_epoch(0)
    for _, y, idx in trainer.loaders.loader:
        seen_idx.append(idx)
        seen_y.append(y)
    idx, y = torch.cat(seen_idx).numpy(), torch.cat(seen_y).numpy()
    np.testing.assert_array_equal(np.sort(idx), sel.kept)
    np.testing.assert_array_equal(y, sel.labels_final[idx])
    relabelled = np.isin(idx, sel.relabel_index)
    assert (y[relabelled] != store.labels[idx[relabelled]]).all()


def test_manifest_of_another_dataset_is_refused(tmp_path):
    Trainer(TrainConfig.of(out=str(tmp_path / "rec"), epochs=1, batch_size=256, progress=False)).fit()
    store = TrajectoryStore.open(tmp_path / "rec" / "trajectory")
    scores, _ = score_store(store, methods=["entropy"])
    sel = select(scores, store.labels, 10, method="entropy", ratio=0.1)
    write_test_manifest(tmp_path / "m.json", sel, store)
    with pytest.raises(ValueError, match="different dataset"):
        Trainer(TrainConfig.of(out=str(tmp_path / "x"), epochs=1, record="off", manifest=str(tmp_path / "m.json"),
                            label_noise=0.1, noise_kind="symmetric", progress=False))


@pytest.mark.parametrize("kw, match", [
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(eval_every=-1), "eval_every must be >= 0"),
    (dict(backend="horovod"), "backend must be one of"),
    (dict(label_noise=0.2), "needs noise_kind"),
    (dict(frozen=True), "frozen needs record='pass'"),
    (dict(deepspeed_config="ds.json"), "backend is not deepspeed"),
])
def test_config_is_validated_up_front(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.of(out="x", **kw)


def test_train_config_file_carries_prune_in_run_and_sections_and_options_win(tmp_path):
    import dataclasses
    import json

    from dprune.cli import _make_config
    from dprune.select import RUN_DEFAULTS

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"out": "x", "epochs": 4, "seed": 3, "prune_at": 2, "ratio": 0.2, "detector": "argmax",
                                "optim": {"lr": 0.2, "momentum": 0.5}, "model": {"name": "resnet18"}, "record": "pass",
                                "data": {"batch_size": 32}, "label_noise": 0.1, "noise_kind": "symmetric"}))
    run = _make_config(path, {"ratio": 0.4, "momentum": 0.7})
    cfg = run.train
    assert (cfg.epochs, run.prune_at, cfg.optim.lr, cfg.optim.momentum) == (4, 2, 0.2, 0.7)
    assert (cfg.model.name, cfg.record.mode, cfg.data.batch_size, cfg.data.label_noise) == ("resnet18", "pass", 32, 0.1)
    assert "ratio" not in cfg.flat() and cfg.flat()["model"] == "resnet18"
    assert run.prune == dataclasses.replace(RUN_DEFAULTS, ratio=0.4, detector="argmax", seed=3)
    assert _make_config(None, {"out": "x", "ratio": 0.2}).prune is None  # no --prune-at: no selection
    path.write_text(json.dumps({"out": "x", "optim": {"learning_rate": 0.1}}))
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\] in section 'optim'"):
        _make_config(path, {})
    path.write_text(json.dumps({"out": "x", "optim": {"lr": "fast"}}))
    with pytest.raises(ValueError, match="lr"):
        _make_config(path, {})


def test_sections_hold_the_fields_and_flat_names_round_trip():
    cfg = TrainConfig.of(out="x", lr=0.1, model="resnet18", record="pass", store="summary", backend="deepspeed",
                         pk_k=3)
    assert (cfg.optim.lr, cfg.model.name, cfg.record.mode, cfg.record.store, cfg.distributed.backend,
            cfg.reid.pk_k) == (0.1, "resnet18", "pass", "summary", "deepspeed", 3)
    assert TrainConfig.of(**cfg.flat()) == cfg and cfg.replace(epochs=5).epochs == 5
    with pytest.raises(ValueError, match="unknown training field"):
        TrainConfig.of(out="x", learning_rate=0.1)
    with pytest.raises(ValueError, match="frozen needs record='pass'"):
        cfg.replace(frozen=True, record="train")


def test_pipeline_end_to_end_writes_report_manifest_and_plots(tmp_path):
    from dprune.cli import main

    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "p"), "--record-epochs", "2", "--epochs", "3",
                                       "--batch-size", "256", "--label-noise", "0.1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for f in ("report.md", "report.json", "manifest.json", "manifest.npz", "kept.tsv", "entropy_histogram.png",
              "accuracy.png"):
        assert (tmp_path / "p" / f).exists(), f
    report = (tmp_path / "p" / "report.md").read_text()
    assert "| full data |" in report and "injected label noise" in report
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    # dprune run's total budget: 30% removed in all, the detector's removals first (fewer than 30% here).
    assert 0 < len(m["removed_outliers"]) < m["n_pruned"]
    assert m["n_removed_total"] == m["n_pruned"] + len(m["removed_outliers"]) == round(0.3 * N_DIGITS_TRAIN)


# ------------------------------------------------------------------------- distributed (gloo)
def test_torchrun_two_ranks_records_exactly_what_the_samplers_yield(tmp_path):
    finish(launch(["--epochs", 2, "--batch-size", 64], tmp_path / "ddp"))
    store = TrajectoryStore.open(tmp_path / "ddp" / "trajectory")
    assert store.epochs_completed == 2 and store.meta["world_size"] == 2
    counts = store.counts()
    np.testing.assert_array_equal(counts, expected_counts(N_DIGITS_TRAIN, 2, 2))
    assert (counts > 0).all() and counts.max() == 2  # one padded duplicate, averaged not double-written


def test_deepspeed_zero1_two_ranks_records_exactly_what_the_samplers_yield(tmp_path):
    pytest.importorskip("deepspeed")
    finish(launch(["--epochs", 2, "--batch-size", 64, "--backend", "deepspeed", "--zero-stage", 1], tmp_path / "ds"))
    store = TrajectoryStore.open(tmp_path / "ds" / "trajectory")
    assert store.epochs_completed == 2
    np.testing.assert_array_equal(store.counts(), expected_counts(N_DIGITS_TRAIN, 2, 2))
    logits, _ = store.read(0, store.n_samples)
    assert np.isfinite(logits).all()
    assert (tmp_path / "ds" / "ds_checkpoint" / "latest").read_text().strip() == "epoch2-full"


def test_two_rank_recording_equals_one_rank_recording_of_the_same_checkpoint(tmp_path):
    train, _ = build_dataset("digits")
    model = build_model("small_cnn", 10, 1, image_size=8)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    args = ["--frozen", "--record", "pass", "--weights", tmp_path / "w.pt", "--epochs", 1]
    finish(launch(args, tmp_path / "two"))
    Trainer(TrainConfig.of(out=str(tmp_path / "one"), frozen=True, record="pass", weights=str(tmp_path / "w.pt"),
                        epochs=1, progress=False)).fit()
    one = TrajectoryStore.open(tmp_path / "one" / "trajectory").read(0, len(train))
    two = TrajectoryStore.open(tmp_path / "two" / "trajectory").read(0, len(train))
    np.testing.assert_array_equal(one[1], np.ones((1, len(train))))
    np.testing.assert_array_equal(two[1], expected_counts(len(train), 2, 1, shuffle=False))
    np.testing.assert_allclose(one[0].astype(np.float32), two[0].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_epochs_and_counts(tmp_path):
    out = tmp_path / "k"
    args = ["--epochs", 3, "--batch-size", 4, "--record-writes", "gather"]  # rank 0 fills the epoch's map
    proc = launch(args, out, start_new_session=True)
    counts_file = out / "trajectory" / ".epoch_0001.counts.npy.tmp"  # epoch 2, being recorded
    deadline = time.time() + 300
    while True:  # rank 0 writes the counts through a shared mapping: watch epoch 2 fill up
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        try:
            seen = int(np.load(counts_file, mmap_mode="r").sum())
        except (FileNotFoundError, ValueError):
            seen = 0
        if N_DIGITS_TRAIN // 5 < seen < N_DIGITS_TRAIN // 2:
            break
        time.sleep(0.005)
    kill_process_tree(proc.pid)
    proc.communicate()
    killed = TrajectoryStore.open(out / "trajectory")
    assert killed.epochs_completed == 1, "the kill should land while epoch 2 is being recorded"

    finish(launch(args, out))
    store = TrajectoryStore.open(out / "trajectory")
    assert store.epochs_completed == 3
    np.testing.assert_array_equal(store.counts(), expected_counts(N_DIGITS_TRAIN, 2, 3))
    assert np.isfinite(store.read(0, store.n_samples)[0]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [0, 1, 2]


def test_summary_store_recording_scores_like_the_full_store(tmp_path):
    from dprune.store import open_store

    full = TrainConfig.of(out=str(tmp_path / "full"), epochs=2, batch_size=256, progress=False, store_dtype="float32")
    summ = TrainConfig.of(out=str(tmp_path / "summ"), epochs=2, batch_size=256, progress=False, store_dtype="float32",
                       store="summary")
    from dprune.scoring.online import SummaryFold

    Trainer(full).fit()
    Trainer(summ, fold=SummaryFold()).fit()
    a, _ = score_store(open_store(tmp_path / "full" / "trajectory"))
    b, backend = score_store(open_store(tmp_path / "summ" / "trajectory"))
    assert backend == "summary"
    for k in ("entropy", "aum", "forgetting", "tdds", "soft_argmax"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_manifest_retraining_can_record_and_resume(tmp_path):
    Trainer(TrainConfig.of(out=str(tmp_path / "rec"), epochs=1, batch_size=256, progress=False)).fit()
    store = TrajectoryStore.open(tmp_path / "rec" / "trajectory")
    scores, _ = score_store(store, methods=["entropy"])
    scores["mislabel"] = scores["soft_argmax"] != store.labels  # the plain rule (min_confidence 0)
    sel = select(scores, store.labels, 10, method="entropy", ratio=0.5, relabel=True)
    write_test_manifest(tmp_path / "m.json", sel, store)
    cfg = dict(out=str(tmp_path / "re"), batch_size=256, manifest=str(tmp_path / "m.json"), progress=False)
    Trainer(TrainConfig.of(epochs=1, **cfg)).fit()
    Trainer(TrainConfig.of(epochs=2, **cfg)).fit()  # resumes into the same store
    re = TrajectoryStore.open(tmp_path / "re" / "trajectory")
    assert re.epochs_completed == 2
    observed = np.flatnonzero(re.counts().sum(0) > 0)
    np.testing.assert_array_equal(observed, sel.kept)
