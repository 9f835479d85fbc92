"""Smoke tests of the benchmark scripts on digits with tiny epochs (no Fashion-MNIST, no GPU needed)."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_pruning_quality_runs_resumes_and_rebuilds_its_report(tmp_path):
    pq = load("pruning_quality")
    argv = ["--plan", "smoke", "--dataset", "digits", "--epochs", "3", "--max-steps-per-epoch", "3",
            "--batch-size", "64", "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")]
    text = pq.main(argv)
    cells = {p.name for p in (tmp_path / "res" / "cells").glob("*.json")}
    for key in ("record__all__seed0", "retrain__all__seed0__entropy__T1__r0.5__epochs",
                "retrain__all__seed0__aum__T3__r0.5__epochs", "retrain__all__seed0__entropy__T1__r0.5__steps",
                "pir__all__seed0__entropy__T1__r0.5", "overlap__all__seed0__r0.5"):
        assert f"{key}.json" in cells, key
    cell = json.loads((tmp_path / "res" / "cells" / "retrain__all__seed0__random__T3__r0.5__epochs.json").read_text())
    assert cell["score_cost"] == 0 and cell["n_kept"] > 0
    steps = json.loads((tmp_path / "res" / "cells" / "retrain__all__seed0__entropy__T1__r0.5__steps.json").read_text())
    assert steps["epochs"] == round(3 * 1437 / steps["n_kept"])  # as many samples processed as the full run
    assert "## Verdicts" in text and (tmp_path / "res" / "fig_paired_delta.png").stat().st_size > 0
    # A rerun trains nothing again; --report-only reads the cells alone.
    retrain = tmp_path / "work" / "all" / "seed1000" / "retrain" / "entropy_T1_r0.5_epochs" / "metrics.json"
    before = retrain.stat().st_mtime_ns
    again = pq.main(argv)
    assert retrain.stat().st_mtime_ns == before
    assert pq.main([*argv, "--report-only"]) == again
    with pytest.raises(ValueError, match="another configuration"):
        pq.main([*argv[:5], "4", *argv[6:]])


def test_mislabel_detection_runs(tmp_path):
    pytest.importorskip("cleanlab")
    ml = load("mislabel_detection")
    text = ml.main(["--dataset", "digits", "--epochs", "3", "--T", "1", "2", "--retrain-T", "2", "--folds", "2",
                    "--cv-epochs", "1", "--seeds", "0", "--retrain-seeds", "0", "--noise", "symmetric:0.2",
                    "--max-steps-per-epoch", "4",
                    "--batch-size", "64", "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")])
    det = json.loads((tmp_path / "res" / "cells" / "detect__symmetric0.2__seed0__T2.json").read_text())
    assert det["n_flipped"] == round(0.2 * 1437) and det["cost"] == 2 * 4 * 64
    assert set(det["flags"]) == {"confident", "confident, self_confidence", "argmax", "argmax, any confidence"}
    cl = json.loads((tmp_path / "res" / "cells" / "cleanlab__symmetric0.2__seed0.json").read_text())
    assert cl["cost"] == 2 * 1 * 4 * 64  # every fold's training
    oracle = json.loads((tmp_path / "res" / "cells" / "retrain__symmetric0.2__seed0__oracle_remove.json").read_text())
    assert oracle["labels_right"] == 1.0 and oracle["n_kept"] == 1437 - det["n_flipped"]
    thr = json.loads((tmp_path / "res" / "cells" / "threshold__symmetric0.2__seed0__T2.json").read_text())
    assert thr["n_threshold"] == round(1437 / 11) and thr["cost"] == det["cost"]
    assert "## Verdict" in text and "cleanlab, 2-fold" in text and "| dprune aum, threshold samples | 2 |" in text


def test_gpu_check_says_it_skips_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run the real checks")
    r = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 0 and r.stdout.strip() == "no GPU: skipped", r.stdout + r.stderr


def test_recording_overhead_runs():
    ro = load("recording_overhead")
    text = ro.main(["--configs", "fashion_mnist", "--steps", "2"])
    assert "| fashion_mnist | small_cnn | 128 |" in text and "summary" in text


def test_scoring_throughput_runs(tmp_path):
    st = load("scoring_throughput")
    text = st.main(["--epochs", "2", "--classes", "7", "--samples", "300", "1200", "--repeats", "1",
                    "--work", str(tmp_path)])
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) == 12 and all(r.count("|") == 8 for r in rows)
    assert "dprune score --method entropy" in text and "Peak RSS" in text and "the alternative (two more" in text


def test_noisy_method_runs_its_arms_and_controls(tmp_path):
    pytest.importorskip("cleanlab")
    nm = load("noisy_method")
    argv = ["--dataset", "digits", "--epochs", "20", "--batch-size", "256", "--folds", "2", "--cv-epochs", "1",
            "--instance-epochs", "1", "--noise", "instance:0.2", "--seeds", "0", "--detect-T", "1", "4",
            "--arms", "noisy", "default", "random", "short", "nobudget", "nobudget_short", "cleanlab", "protocol",
            "cleaned", "cleaned_random", "cleaned_short", "checked", "--checked", "300",
            "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")]
    text = nm.main(argv)
    cell = lambda key: json.loads((tmp_path / "res" / "cells" / f"{key}.json").read_text())  # noqa: E731
    default, random = cell("arm__instance0.2__seed0__default"), cell("arm__instance0.2__seed0__random")
    assert random["n_kept"] == default["n_kept"] and random["cost"] == default["cost"]
    assert default["spec"]["detector"] == "confident" and default["relabelled"] == 0  # the defaults remove
    short = cell("arm__instance0.2__seed0__short")
    assert short["epochs"] == round(default["cost"] / 1437)
    # The defaults count the detector's removals inside the ratio; nobudget prunes 30% on top of them.
    nobudget = cell("arm__instance0.2__seed0__nobudget")
    assert default["spec"]["budget"] == "total" and nobudget["spec"]["budget"] == "score"
    assert default["removed"] == nobudget["removed"] > 0
    assert default["n_kept"] == 1437 - max(round(0.3 * 1437), default["removed"])
    assert nobudget["n_kept"] == 1437 - round(0.3 * 1437) - nobudget["removed"]
    assert cell("arm__instance0.2__seed0__nobudget_short")["epochs"] == round(nobudget["cost"] / 1437)
    cl = cell("arm__instance0.2__seed0__cleanlab")
    assert cl["cost"] == cl["train_cost"] + cl["fold_cost"] and cl["fold_cost"] == 1437  # 2 folds x 1 epoch of half the data
    noisy = cell("arm__instance0.2__seed0__noisy")
    assert len(noisy["curve"]) == 20 and noisy["cost"] == 20 * 1437
    # Retrained on the cleaned labels: the detector's flags removed, nothing pruned by score, the
    # T = 2 recorded epochs counted; its flags are the defaults' removals on the same epochs.
    cleaned = cell("arm__instance0.2__seed0__cleaned")
    assert cleaned["n_kept"] == 1437 - cleaned["removed"] and cleaned["removed"] == default["removed"] > 0
    assert cleaned["cost"] == cleaned["retrain_cost"] + 2 * 1437 and cleaned["retrain_cost"] == 20 * cleaned["n_kept"]
    # Its controls: as many kept at random; the full noisy data at its cost.
    cleaned_random = cell("arm__instance0.2__seed0__cleaned_random")
    assert cleaned_random["n_kept"] == cleaned["n_kept"] and cleaned_random["cost"] == 20 * cleaned["n_kept"]
    assert cell("arm__instance0.2__seed0__cleaned_short")["epochs"] == round(cleaned["cost"] / 1437)
    # The defaults with the rate of 300 checked labels: as many flags as the rate says, inside the budget.
    checked = cell("arm__instance0.2__seed0__checked")
    rate = checked["params"]["confident"]["rate"]
    assert 0.1 < rate < 0.3 and checked["removed"] == round(rate * 1437) != default["removed"]
    assert checked["n_kept"] == 1437 - max(round(0.3 * 1437), checked["removed"])
    det = cell("detect__instance0.2__seed0")
    assert set(det["dprune"]) == {"T1", "T4"} and set(det["cleanlab"]["2x1"]["rules"]) == set(nm.CLEANLAB_FILTERS)
    flips = np.load(tmp_path / "work" / "instance0.2" / "seed0" / "labels.npy")
    assert det["n_flipped"] == round(0.2 * 1437) == int((flips != nm.build_dataset("digits")[0].labels).sum())
    assert "## instance0.2" in text and "Label cleaning" in text and "H-budget: " in text
    assert "retrained on dprune's cleaning − retrained on cleanlab's: " in text
    # The cleaned row is judged against its own controls (made from it), not the defaults'.
    row = next(r for r in text.splitlines() if r.startswith("| the default detector's flags removed"))
    assert all(c.strip() for c in row.split("|")[7:10]), row
    # cleanlab's 2 x 1 folds cost 1,437 sample-epochs: compared with dprune at T1 (1,437), not T4
    assert re.search(r"\| 2x1: [\d.]+ \(\w+\) \| T1: [\d.]+ \| [+-]", text)
    assert "![cost against accuracy](fig_cost_accuracy.png)" in text
    assert (tmp_path / "res" / "fig_cost_accuracy.png").stat().st_size > 0
    assert nm.main([*argv, "--report-only"]) == text
    # Ranking and count, read from the same recorded run: dprune's flags are the detection cell's.
    dc = load("detector_count")
    table = dc.main(["--work", str(tmp_path / "work"), "--settings", "instance0.2", "--seeds", "0", "--T", "4",
                     "--folds", "2", "--cv-epochs", "1", "--out", str(tmp_path / "count.md")])
    row = next(line for line in table.splitlines() if "dprune, T = 4" in line).split("|")
    assert int(row[6].replace(",", "")) == det["dprune"]["T4"]["flags"]["confident"]["flagged"]
    assert float(row[7]) == round(det["dprune"]["T4"]["flags"]["confident"]["f1"] * 100, 1)
    assert "| instance0.2 | 287 | cleanlab 2 × 1 (1 of 1 seeds) |" in table
    # The count from checked labels: the default's flags are the detection cell's, cleanlab's best is
    # the best of its rules there, and the checked rate flags that share of the samples.
    load("detector_checked").main(["--work", str(tmp_path / "work"), "--settings", "instance0.2", "--seeds", "0",
                                   "--pairs", "4:1", "--folds", "2", "--checked", "200", "--draws", "5",
                                   "--out", str(tmp_path / "checked.md")])
    got = json.loads((tmp_path / "checked.json").read_text())["instance0.2"]["0"]
    row = got["rows"]["T4"]
    assert row["default"] == {k: v for k, v in det["dprune"]["T4"]["flags"]["confident"].items() if k in row["default"]}
    assert row["cleanlab"]["best_f1"] == max(r["f1"] for r in det["cleanlab"]["2x1"]["rules"].values())
    assert row["checked"]["flagged"] == round(got["checked_rate"] * 1437) != row["default"]["flagged"]
    assert 0.1 < got["checked_rate"] < 0.3 and row["cleanlab"]["same_count"]["flagged"] == row["checked"]["flagged"]


def test_detector_input_feeds_confident_learning_p_bar_and_the_soft_label(tmp_path, capsys):
    from dprune.store import TrajectoryStore

    di = load("detector_input")
    rng = np.random.default_rng(0)
    E, N, C = 3, 60, 5
    z = rng.standard_normal((E, N, C)).astype(np.float32) * 2
    counts = np.ones((E, N), np.int32)
    counts[1, 7] = 0  # sample 7 unobserved in epoch 1: not valid for T >= 2
    pbar, soft, valid = di.inputs(z, counts, 2)

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(pbar, (softmax(z[0]) + softmax(z[1])) / 2, rtol=1e-5)
    np.testing.assert_allclose(soft, softmax((z[0] + z[1]) / 2), rtol=1e-5)
    assert not np.allclose(pbar, soft)
    assert valid.sum() == N - 1 and not valid[7]

    # A run folder: a store of noisy labels and its truth; rows where the logits favour the clean
    # label make the flipped samples findable by both inputs.
    clean = rng.integers(0, C, N)
    flipped = np.zeros(N, bool)
    flipped[:12] = True
    noisy = np.where(flipped, (clean + 1) % C, clean)
    store = TrajectoryStore.create(tmp_path / "run" / "trajectory", noisy, C)
    for e in range(E):
        store.begin_epoch(e)
        store.put(e, 0, (z[e] + 4 * np.eye(C, dtype=np.float32)[clean]).astype(np.float16), np.ones(N, np.int32))
        store.complete_epoch(e)
    store.close()
    np.savez(tmp_path / "run" / "label_noise.npz", clean_labels=clean, noisy_labels=noisy, flipped=flipped)
    di.main([str(tmp_path / "run"), "--T", "1", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["T"] for r in rows] == [1, 3]
    for r in rows:
        assert r["n_flipped"] == 12 and r["pbar"]["f1"] > 0.5 and r["soft"]["f1"] > 0.5
        assert r["soft_minus_pbar_f1_points"] == round(100 * (r["soft"]["f1"] - r["pbar"]["f1"]), 2)
    # The count rules on the same run: the true count is the flips', the joint is the detector's.
    from dprune.scoring import score_store

    text = load("count_rules").main([str(tmp_path / "run"), "--T", "3", "--checked", "30", "--draws", "5"])
    default, _ = score_store(TrajectoryStore.open(tmp_path / "run" / "trajectory"), methods=["confident"])
    assert f"joint {int(default['confident'].sum())}:" in text and "true 12: " in text
    assert re.search(r"checked \(mean, 5th percentile\) [\d.]+, [\d.]+$", text)
