"""Smoke test of the evidence benchmarks on digits with tiny epochs (no Fashion-MNIST needed)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pruning_quality_runs_and_resumes(tmp_path):
    pq = load("pruning_quality")
    argv = ["--dataset", "digits", "--epochs", "2", "--record-epochs", "2", "--seeds", "0",
            "--scorers", "entropy", "random", "forgetting_full", "--ratios", "0.3",
            "--max-steps-per-epoch", "4", "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")]
    text = pq.main(argv)
    res = json.loads((tmp_path / "res" / "pruning_quality_digits.json").read_text())
    cells = res["cells"]
    assert {"seed0/full", "seed0/record", "seed0/entropy/0.3", "seed0/random/0.3",
            "seed0/forgetting_full/0.3"} <= set(cells)
    # 4 steps of 64 per epoch observe only part of the set; unobserved samples are never pruned.
    entropy = cells["seed0/entropy/0.3"]
    assert 0 < entropy["n_pruned"] < round(0.3 * 1437) and entropy["n_kept"] + entropy["n_pruned"] == 1437
    assert cells["seed0/random/0.3"]["score_cost"] == 0
    assert cells["seed0/forgetting_full/0.3"]["score_source"].startswith("full run")
    assert (tmp_path / "res" / "pruning_quality_digits.png").stat().st_size > 0
    assert "`entropy`" in text and "unpruned" in text

    # A rerun skips finished cells: nothing is trained again.
    retrain = tmp_path / "work" / "seed0" / "retrain" / "entropy_r0.3" / "metrics.json"
    before = retrain.stat().st_mtime_ns
    pq.main(argv)
    assert retrain.stat().st_mtime_ns == before
    assert json.loads((tmp_path / "res" / "pruning_quality_digits.json").read_text())["cells"] == cells

    # Another configuration is refused rather than mixed in.
    with pytest.raises(ValueError, match="another configuration"):
        pq.main([*argv[:2], "--epochs", "3", *argv[4:]])


def test_mislabel_detection_runs(tmp_path):
    pytest.importorskip("cleanlab")
    ml = load("mislabel_detection")
    text = ml.main(["--dataset", "digits", "--epochs", "2", "--record-epochs", "2", "--noise", "symmetric:0.2",
                    "--folds", "2", "--max-steps-per-epoch", "4",
                    "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")])
    cells = json.loads((tmp_path / "res" / "mislabel_digits.json").read_text())["cells"]
    det = cells["seed0/symmetric0.2/detection"]
    assert det["n_flipped"] == round(0.2 * 1437)
    for name in ("dprune_argmax", "dprune_relabel", "cleanlab_cv", "cleanlab_on_dprune"):
        assert 0 <= det["detectors"][name]["recall"] <= 1
    assert det["detectors"]["cleanlab_cv"]["cost"] == 2 * 2 * 4 * 64  # 2 folds x 2 epochs x 4 steps x batch 64
    for name in ("noisy", "dprune", "cleanlab"):
        assert 0 <= cells[f"seed0/symmetric0.2/retrain_{name}"]["acc"] <= 1
    assert "cleanlab, K-fold CV" in text


@pytest.fixture
def tiny_reid(monkeypatch):
    """A tiny version of the generated Market-1501 set: 8 training identities x 4 images of 32 x 16."""
    load("pruning_quality")  # imports _common
    for key, value in (("n_ids", 16), ("images_per_id", 4), ("size", (32, 16))):
        monkeypatch.setitem(sys.modules["_common"].REID_SYNTH, key, value)


def test_pruning_quality_on_generated_reid(tmp_path, tiny_reid):
    pq = load("pruning_quality")
    text = pq.main(["--dataset", "reid-synth", "--epochs", "2", "--record-epochs", "2", "--seeds", "0",
                    "--scorers", "entropy", "random", "--ratios", "0.25", "--batch-size", "16",
                    "--max-steps-per-epoch", "2", "--work", str(tmp_path / "work"),
                    "--results-dir", str(tmp_path / "res")])
    res = json.loads((tmp_path / "res" / "pruning_quality_reid-synth.json").read_text())
    assert res["config"]["model"] == "resnet18" and res["config"]["lr"] is None  # the ReID recipe's defaults
    assert res["config"]["dataset"]["n_train"] == 32
    for key in ("seed0/full", "seed0/entropy/0.25", "seed0/random/0.25"):
        assert 0 <= res["cells"][key]["mAP"] <= 1 and 0 <= res["cells"][key]["rank1"] <= 1
    # Class-balanced pruning of 25% takes one of the 4 images of every identity.
    assert res["cells"]["seed0/entropy/0.25"]["n_kept"] == 24
    assert "## Test mAP (%)" in text and "## Test Rank-1 (%)" in text and "BoT ReID recipe" in text
    assert (tmp_path / "res" / "pruning_quality_reid-synth.png").stat().st_size > 0


def test_pruning_quality_prefix_trajectory_scores_the_full_runs_first_epochs(tmp_path):
    pq = load("pruning_quality")
    text = pq.main(["--dataset", "digits", "--epochs", "3", "--record-epochs", "2", "--seeds", "0",
                    "--scorers", "entropy", "--ratios", "0.3", "--trajectory", "prefix", "--max-steps-per-epoch", "3",
                    "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")])
    res = json.loads((tmp_path / "res" / "pruning_quality_digits.json").read_text())
    assert res["config"]["trajectory"] == "prefix"
    assert not (tmp_path / "work" / "seed0" / "record").exists()  # no separate recording run
    full_metrics = json.loads((tmp_path / "work" / "seed0" / "full" / "metrics.json").read_text())
    assert res["cells"]["seed0/record"]["cost"] == sum(m["samples_seen"] for m in full_metrics[:2])
    assert res["cells"]["seed0/entropy/0.3"]["score_source"] == "first 2 epochs of the full run"
    assert "the first T epochs of the full E-epoch run" in text


def test_mislabel_detection_on_generated_reid(tmp_path, tiny_reid):
    pytest.importorskip("cleanlab")
    ml = load("mislabel_detection")
    text = ml.main(["--dataset", "reid-synth", "--epochs", "2", "--record-epochs", "2", "--noise", "symmetric:0.25",
                    "--folds", "2", "--batch-size", "16", "--max-steps-per-epoch", "2",
                    "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")])
    cells = json.loads((tmp_path / "res" / "mislabel_reid-synth.json").read_text())["cells"]
    det = cells["seed0/symmetric0.25/detection"]
    assert det["n_flipped"] == 8  # a quarter of the 32 training images
    assert 0 <= det["detectors"]["cleanlab_cv"]["recall"] <= 1  # held-out identity probabilities from 2 folds
    for name in ("noisy", "dprune", "cleanlab"):
        retrain = cells[f"seed0/symmetric0.25/retrain_{name}"]
        assert 0 <= retrain["mAP"] <= 1 and 0 <= retrain["rank1"] <= 1
    assert "test mAP (%) | test Rank-1 (%)" in text
