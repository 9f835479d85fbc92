"""A hostile user's runs (issue 23, items 1, 2, 5, 6): killed runs that record only their first
epochs, concurrent pipelines in one folder, refused resumes, and output paths inside a run.

Each test reproduces the finding first and checks the behaviour that replaced it.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from dprune.store import TrajectoryStore
from dprune.runs import TrainRun, selection
from dprune.train import TrainConfig
from dprune.train.loop import Trainer
from test_reliability import cli, one_line


class _Killed(BaseException):
    """Stands for SIGKILL at an epoch boundary (raised past every ``except Exception``)."""


def _final(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    return ckpt["metrics"], ckpt["model"]


def _same_result(a, b):
    (m_a, w_a), (m_b, w_b) = _final(a), _final(b)
    keys = ("samples_seen", "phase", "train_loss", "test_metric")
    rows = lambda m: json.dumps([[x[k] for k in keys] for x in m])  # noqa: E731 (NaN == NaN as text)
    assert rows(m_a) == rows(m_b)
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=0, atol=0, msg=k)


VARIANTS = {
    "record first 2 of 4": (dict(epochs=4, record_epochs=2), None),
    "prune in run at 2 of 4": (dict(epochs=4, record_epochs=2, label_noise=0.1, noise_kind="symmetric"),
                               dict(ratio=0.4, relabel=True)),
}


def _trainer(out, variant):
    fields, prune = VARIANTS[variant]
    cfg = TrainConfig.of(out=str(out), batch_size=128, progress=False, eval_every=0, **fields)
    return TrainRun(cfg, None if prune is None else selection(prune, cfg.seed), None if prune is None else 2).trainer()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    refs = {}
    for variant in VARIANTS:
        out = tmp_path_factory.mktemp("ref")
        _trainer(out, variant).fit()
        refs[variant] = out
    return refs


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("boundary", [1, 2, 3])
def test_a_run_recording_its_first_epochs_killed_at_each_epoch_boundary_resumes_to_the_same_result(
        tmp_path, monkeypatch, uninterrupted, variant, boundary):
    """Item 1: the store stops at T by design; the resume used to demand the checkpoint's epochs."""
    save = Trainer._save

    def save_then_die(self):
        save(self)
        if len(self.metrics) == boundary:
            raise _Killed

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(_Killed):
        _trainer(tmp_path, variant).fit()
    monkeypatch.setattr(Trainer, "_save", save)
    _trainer(tmp_path, variant).fit()
    _same_result(tmp_path, uninterrupted[variant])
    assert TrajectoryStore.open(tmp_path / "trajectory").epochs_completed == 2


def test_sigkill_after_the_recorded_epochs_resumes(tmp_path):
    """Item 1 as reported: ``--record-epochs 2``, kill -9 during epoch 4, the same command again."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cmd(out):
        return [sys.executable, "-m", "dprune", "train", "--out", str(out), "--epochs", "5", "--record-epochs", "2",
                "--batch-size", "8", "--eval-every", "0", "--no-progress"]

    subprocess.run(cmd(tmp_path / "ref"), env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "k"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "metrics.json").exists() or len(json.loads((out / "metrics.json").read_text() or "[]")) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.01)
    time.sleep(0.3)  # into epoch 4
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    resumed = subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _same_result(out, tmp_path / "ref")


RUN = ["--record-epochs", 1, "--epochs", 2, "--batch-size", 256, "--no-relabel", "--set", "max_steps_per_epoch=2",
       "--set", "progress=false"]


def test_a_second_pipeline_in_the_same_folder_is_refused_naming_the_holder(tmp_path):
    """Item 2: two ``dprune run --out D`` with different options both exited 0 and mixed their files."""
    from dprune.locking import DirLock

    with DirLock(tmp_path / "p", "dprune run"):
        r = cli("run", "--out", tmp_path / "p", *RUN, "--ratio", 0.5, ok=False)
    one_line(r, "in use by another writer", "dprune run")
    assert not (tmp_path / "p" / "pipeline.json").exists()  # refused before its first write
    cli("run", "--out", tmp_path / "p", *RUN, "--ratio", 0.5)  # once the holder is gone


def test_a_pipeline_rerun_with_other_epochs_retrains_its_stages(tmp_path):
    """Item 1's last case: a pipeline stage planned for other epochs starts over (same schedule)."""
    cli("run", "--out", tmp_path / "p", *RUN)
    cli("run", "--out", tmp_path / "p", *RUN[:2], "--epochs", 3, *RUN[4:])
    for stage in ("full", "pruned", "prune-in-run"):
        ckpt = torch.load(tmp_path / "p" / stage / "checkpoint.pt", weights_only=True)
        assert ckpt["epochs_done"] == 3 and ckpt["config"]["epochs"] == 3
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["epochs"] == 3


def test_a_refused_resume_writes_nothing(tmp_path):
    """Item 5: a resume refused for its label noise had already rewritten label_noise.npz."""
    out = tmp_path / "r"
    args = ["train", "--out", out, "--epochs", 1, "--batch-size", 256, "--no-progress", "--noise-kind", "symmetric"]
    cli(*args, "--label-noise", 0.1)
    def files():  # every file but the lock the refused writer took
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".dprune.lock"}

    before = files()
    flips = int(np.load(out / "label_noise.npz")["flipped"].sum())
    r = cli(*args, "--label-noise", 0.3, "--epochs", 2, ok=False)
    one_line(r, "label_noise: 0.1 -> 0.3")
    assert int(np.load(out / "label_noise.npz")["flipped"].sum()) == flips
    assert files() == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "D"
    cli("train", "--out", out, "--epochs", 1, "--batch-size", 256, "--no-progress")
    cli("prune", out, "-r", 0.3, "-o", out.parent / "m.json", "-q")
    return out


@pytest.mark.parametrize("args, fragment", [
    (lambda d: ["-o", d / "checkpoint.pt"], "checkpoint.pt of the training run"),
    (lambda d: ["-o", d / "metrics.json"], "metrics.json of the training run"),
    (lambda d: ["-o", d / "label_noise.json"], "label_noise.npz of the training run"),
    (lambda d: ["-o", d / "trajectory" / "scores.json"], "scores.npz of the trajectory store"),
    (lambda d: ["-o", d / "trajectory" / "meta.json"], "meta.json of the trajectory store"),
    (lambda d: ["-o", d.parent / "x.json", "--export-list", d.parent / "x.json"], "another output"),
    (lambda d: ["-o", d.parent / "x.json", "--export-list", d.parent / "x.npz"], "another output"),
])
def test_output_paths_inside_a_run_cannot_clobber_its_files(trained, args, fragment):
    """Item 6: these all exited 0 and replaced the run's files."""
    before = {p: p.read_bytes() for p in [trained / "checkpoint.pt", trained / "trajectory" / "scores.npz",
                                          trained / "trajectory" / "meta.json", trained / "metrics.json"]}
    r = cli("prune", trained, "-r", 0.3, "-q", *args(trained), ok=False)
    one_line(r, fragment)
    assert {p: p.read_bytes() for p in before} == before


def test_pipeline_outputs_are_protected_too(tmp_path):
    cli("run", "--out", tmp_path / "p", *RUN)
    r = cli("prune", tmp_path / "p" / "full", "-r", 0.3, "-q", "-o", tmp_path / "p" / "manifest.json", ok=False)
    one_line(r, "manifest.json of the dprune run folder")


def test_pruning_a_read_only_store_elsewhere_scores_without_caching(trained, tmp_path, monkeypatch):
    """Item 6, related: prune -o elsewhere on a read-only store failed writing scores.npz into it.

    (The tests run as root, which writes into read-only folders: the store's file system
    refuses the write here instead.)"""
    import errno

    import dprune.scoring.scores_file as scores_file

    store = trained / "trajectory"
    (store / "scores.npz").unlink()
    real = scores_file.atomic_savez

    def read_only(path, arrays):
        if path.parent == store:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, arrays)

    monkeypatch.setattr(scores_file, "atomic_savez", read_only)
    r = cli("prune", trained, "-r", 0.3, "-o", tmp_path / "m.json")
    assert "not cached" in r.output and (tmp_path / "m.json").exists()
    assert not (store / "scores.npz").exists()


def test_report_outputs_respect_the_run_and_its_writer(tmp_path):
    """The class rule of issue 23 for ``dprune report``: its -o is checked against the run's
    files, and the run's own page is written under the run folder's lock."""
    from dprune.locking import DirLock

    cli("run", "--out", tmp_path / "p", *RUN)
    r = cli("report", tmp_path / "p", "-o", tmp_path / "p" / "full" / "checkpoint.pt", ok=False)
    one_line(r, "checkpoint.pt of the training run")
    with DirLock(tmp_path / "p", "dprune run"):
        r = cli("report", tmp_path / "p", ok=False)
    one_line(r, "in use by another writer")
    cli("report", tmp_path / "p", "-o", tmp_path / "elsewhere.html")
    assert (tmp_path / "elsewhere.html").stat().st_size > 0
