"""Pruning inside the training run: cost, the switch, resume around it, and several ranks."""
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

from dprune.manifest import load_manifest
from dprune.select import n_to_prune
from dprune.store import TrajectoryStore
from dprune.runs import TrainRun, selection
from dprune.train import TrainConfig
from test_train import N_DIGITS_TRAIN, finish, launch


def test_prune_at_switches_to_the_kept_set_and_costs_what_it_should(tmp_path):
    E, T, r = 6, 2, 0.3
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=E, batch_size=128, progress=False, label_noise=0.1,
                      noise_kind="symmetric")
    spec = selection(dict(ratio=r, budget="score", relabel=True, detector="argmax", mislabelled="relabel",
                          remove_outliers=0.01), cfg.seed)
    metrics = TrainRun(cfg, spec, T).trainer().fit()
    m = load_manifest(tmp_path / "r" / "manifest.json")
    kept = len(m.kept)
    assert m.data["n_pruned"] == n_to_prune(r, N_DIGITS_TRAIN) and m.data["made_from"]["epochs"] == T
    assert [x["phase"] for x in metrics] == ["full"] * T + ["pruned"] * (E - T)
    assert [x["samples_seen"] for x in metrics] == [N_DIGITS_TRAIN] * T + [kept] * (E - T)
    cost = sum(x["samples_seen"] for x in metrics) / (E * N_DIGITS_TRAIN)
    assert cost == pytest.approx(T / E + (1 - T / E) * kept / N_DIGITS_TRAIN)
    # Recording went on after the switch for the kept samples only; the store holds the given labels.
    store = TrajectoryStore.open(tmp_path / "r" / "trajectory")
    counts = store.counts()
    assert store.epochs_completed == E
    assert (counts[:T] == 1).all()
    np.testing.assert_array_equal(np.flatnonzero(counts[T:].sum(0)), m.kept)
    noisy = np.load(tmp_path / "r" / "label_noise.npz")["noisy_labels"]
    np.testing.assert_array_equal(store.labels, noisy)
    assert len(m.data["relabelled"]) > 0


def test_the_schedule_runs_on_over_the_switch(tmp_path):
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=4, batch_size=128, progress=False)
    trainer = TrainRun(cfg, selection(dict(ratio=0.5, relabel=False), cfg.seed), 1).trainer()
    lrs = []
    real = trainer._set_lr

    def spy(epoch, step):
        real(epoch, step)
        lrs.append((epoch + step / trainer.loaders.steps_per_epoch, trainer.engine.optimizer.param_groups[0]["lr"]))

    trainer._set_lr = spy
    trainer.fit()
    t = np.array([x[0] for x in lrs])
    lr = np.array([x[1] for x in lrs])
    np.testing.assert_allclose(lr, 0.05 * 0.5 * (1 + np.cos(np.pi * t / 4)), rtol=1e-12)
    assert np.all(np.diff(lr) < 0)  # no restart at the switch: it keeps decaying
    steps = np.bincount(np.floor(t).astype(int))
    assert steps[0] == -(-N_DIGITS_TRAIN // 128) and steps[1] == -(-(N_DIGITS_TRAIN // 2) // 128)


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "dprune", "train", "--out", str(out), "--epochs", "4", "--prune-at", "2",
            "--ratio", "0.4", "--batch-size", "32", "--eval-every", "0", "--no-progress", *extra]


def _final(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    return ckpt["metrics"], ckpt["model"], load_manifest(out / "manifest.json").digest


@pytest.mark.parametrize("kill_when", ["selecting", "manifest written", "pruned epoch"])
def test_a_kill_around_the_switch_resumes_to_the_uninterrupted_result(tmp_path, kill_when):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "k"
    proc = subprocess.Popen(_train_cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    trigger = {"selecting": lambda: (out / "trajectory" / "epoch_0001.counts.npy").exists(),
               "manifest written": lambda: (out / "manifest.json").exists(),
               "pruned epoch": lambda: (out / "trajectory" / ".epoch_0002.counts.npy.tmp").exists()}[kill_when]
    deadline = time.time() + 300
    while not trigger():
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    resumed = subprocess.run(_train_cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (m_ref, w_ref, d_ref), (m_out, w_out, d_out) = _final(ref), _final(out)
    assert d_out == d_ref
    assert [(x["samples_seen"], x["phase"], round(x["train_loss"], 6)) for x in m_out] == \
           [(x["samples_seen"], x["phase"], round(x["train_loss"], 6)) for x in m_ref]
    for k in w_ref:
        torch.testing.assert_close(w_out[k], w_ref[k], rtol=0, atol=0, msg=k)


def test_two_ranks_prune_in_the_run_and_agree_on_the_kept_set(tmp_path):
    out = tmp_path / "ddp"
    finish(launch(["--epochs", 3, "--prune-at", 1, "--ratio", 0.5, "--batch-size", 64], out))
    m = load_manifest(out / "manifest.json")
    store = TrajectoryStore.open(out / "trajectory")
    counts = store.counts()
    assert (counts[0] > 0).all() and store.meta["world_size"] == 2
    # After the switch both ranks train only kept samples: what was recorded is the kept set.
    np.testing.assert_array_equal(np.flatnonzero(counts[1:].sum(0)), m.kept)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [x["phase"] for x in metrics] == ["full", "pruned", "pruned"]
    # DistributedSampler pads the kept set to a multiple of the ranks.
    assert metrics[1]["samples_seen"] == len(m.kept) + len(m.kept) % 2


def test_deepspeed_prunes_in_the_run(tmp_path):
    """With the launchers' config: ZeRO 1 and bf16, so bf16 logits are gathered over gloo."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds"
    config = Path(__file__).resolve().parent.parent / "launchers" / "ds_config.json"
    finish(launch(["--epochs", 2, "--prune-at", 1, "--ratio", 0.3, "--batch-size", 64, "--backend", "deepspeed",
                   "--deepspeed-config", config], out))
    m = load_manifest(out / "manifest.json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[1]["samples_seen"] == len(m.kept) + len(m.kept) % 2
    assert (out / "ds_checkpoint" / "latest").read_text().strip() == "epoch2-pruned"


def test_run_trains_the_same_cost_controls_and_reports_them(tmp_path):
    """Random prune-in-run keeps as many samples at the same cost; the short full run costs about as much."""
    from click.testing import CliRunner

    from dprune.cli import main

    out = tmp_path / "p"
    r = CliRunner().invoke(main, [str(a) for a in [
        "run", "--out", out, "--no-baseline", "--record-epochs", 1, "--epochs", 4, "--batch-size", 256,
        "--ratio", 0.5, "--label-noise", 0.1, "--set", "progress=false", "--param", "confident.rate=0.12"]],
        catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    # The detector's count is the given rate's (--param reaches prune-in-run's scoring).
    m_pir = load_manifest(out / "prune-in-run" / "manifest.json").data
    assert len(m_pir["removed_outliers"]) == round(0.12 * N_DIGITS_TRAIN)
    assert json.loads((out / "pipeline.json").read_text())["params"] == {"confident": {"rate": 0.12}}
    pir, rand, short = report["rows"]
    assert report["controls"] == [rand["run"], short["run"]]
    assert rand["kept"] == pir["kept"] and rand["cost"] == pir["cost"]
    m_rand = load_manifest(out / "random-in-run" / "manifest.json").data
    assert m_rand["relabelled"] == {} and m_rand["selection"]["method"] == "random"
    epochs = round(pir["cost"] / N_DIGITS_TRAIN)
    assert short["cost"] == epochs * N_DIGITS_TRAIN and abs(short["cost"] - pir["cost"]) <= N_DIGITS_TRAIN / 2
    assert "against the same-cost controls" in (out / "report.md").read_text()
    assert "scores from the first 1 (scoring: confident.rate=0.12)" in (out / "report.md").read_text()
    metrics = json.loads((out / "full-same-cost" / "metrics.json").read_text())
    assert len(metrics) == epochs


def test_prune_in_run_scores_with_the_given_parameters_and_a_resume_must_match_them(tmp_path):
    """`dprune train --prune-at T --param confident.rate=R`: the default detector removes round(R * N)."""
    from click.testing import CliRunner

    from dprune.cli import main

    def train(*extra):
        return CliRunner().invoke(main, [str(a) for a in [
            "train", "--out", tmp_path / "r", "--epochs", 3, "--prune-at", 1, "--batch-size", 256,
            "--label-noise", 0.1, "--noise-kind", "symmetric", "--no-progress", *extra]])

    r = train("--param", "confident.rate=0.15")
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "r" / "manifest.json").data
    assert len(m["removed_outliers"]) == round(0.15 * N_DIGITS_TRAIN)
    assert m["scores"]["params"]["confident"]["rate"] == 0.15
    r = train("--param", "confident.rate=0.15", "--param", "confident.filter_by=margin")  # a default restated
    assert r.exit_code == 0 and "after 3 epochs" in r.output, r.output
    r = train("--param", "confident.rate=0.25")  # the finished run was made with another rate
    assert r.exit_code != 0 and "rate" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "s"), "--epochs", "2", "--param",
                                  "confident.rate=0.1"])
    assert r.exit_code != 0 and "need prune-in-run (--prune-at)" in r.output
