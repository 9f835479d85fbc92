"""The ReID training recipe: P x K sampler, triplet loss, BoT model, and the pipeline end to end."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dprune.cli import main
from dprune.data.reid import build_reid_dataset
from dprune.data.reid_synth import make_synthetic_reid
from dprune.models.reid import BoTReID
from dprune.store import TrajectoryStore
from dprune.train.reid import PKSampler, batch_hard_triplet_loss


def _epoch(labels, p, k, epoch, world_size=2, seed=5):
    ranks = [PKSampler(labels, p, k, world_size=world_size, rank=r, seed=seed) for r in range(world_size)]
    for s in ranks:
        s.set_epoch(epoch)
    return ranks, [list(s) for s in ranks]


def test_pk_batches_have_p_identities_of_k_images_and_ranks_are_disjoint():
    labels = np.repeat(np.arange(30), np.random.default_rng(0).integers(1, 12, 30))
    ranks, batches = _epoch(labels, 4, 3, epoch=2)
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) > 0
    for b in batches[0] + batches[1]:
        ids, n = np.unique(labels[b], return_counts=True)
        assert len(ids) == 4 and (n == 3).all()


def test_an_epoch_of_pk_batches_has_the_image_count_in_expectation_and_shows_every_image():
    """Each identity's remainder becomes a group with probability r / K: E[images] = N (plus the
    few groups that fill the last batches and the padding to a multiple of the ranks)."""
    labels = np.repeat(np.arange(30), np.random.default_rng(0).integers(1, 12, 30))
    N, P, K, W = len(labels), 4, 3, 2
    sizes, seen = [], np.zeros(N, int)
    for epoch in range(300):
        _, batches = _epoch(labels, P, K, epoch)
        flat = np.array([i for b in batches[0] + batches[1] for i in b])
        sizes.append(len(flat))
        seen[np.unique(flat)] += 1
    assert N - 0.02 * N <= np.mean(sizes) <= N + (P - 1) * K + (W - 1) * P * K
    assert (seen > 0).all()  # left out of some epochs, never of all of them
    assert (seen < 300).any()  # remainders are left out now and then (the old sampler topped them all up)


def test_pruning_a_tenth_of_each_identity_saves_a_tenth_of_the_steps(tmp_path):
    """Item 5 of the 'do more' issue: with the remainder topped up to K, an identity of 16
    images pruned to 14 or 15 still cost 16 per epoch, so pruning 10% saved nothing."""
    make_synthetic_reid(tmp_path / "m", "market1501", n_ids=40, images_per_id=16, seed=3)
    labels = np.array([r.pid for r in build_reid_dataset("market1501", tmp_path / "m").train])
    rng = np.random.default_rng(0)
    kept = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), int(round(0.9 * (labels == c).sum())),
                                              replace=False) for c in np.unique(labels)]))
    steps = {}
    for name, lab in (("full", labels), ("pruned", labels[kept])):
        steps[name] = np.mean([len(_epoch(lab, 4, 4, e, seed=1)[0][0]) for e in range(40)])
    assert steps["pruned"] / steps["full"] == pytest.approx(len(kept) / len(labels), abs=0.03)


def test_pk_sampler_depends_on_epoch_and_seed_only():
    labels = np.repeat(np.arange(10), 6)
    a, b = PKSampler(labels, 3, 2, seed=1), PKSampler(labels, 3, 2, seed=1)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)


def test_pk_sampler_rejects_impossible_batches():
    with pytest.raises(ValueError, match="only 2"):
        PKSampler(np.array([0, 0, 1, 1]), 3, 2)
    with pytest.raises(ValueError, match="K >= 2"):
        PKSampler(np.array([0, 1]), 2, 1)


def test_batch_hard_triplet_loss_on_a_hand_case():
    # 1-D features: ids 0 at {0, 1}, ids 1 at {3, 7}.
    f = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchors: 0: pos 1, neg 3 -> 1-3+0.3<0 -> 0;  1: pos 1, neg 2 -> 1-2+.3=0 (clamped at 0 -> 0)
    #          3: pos 4, neg 2 -> 4-2+.3=2.3;      7: pos 4, neg 6 -> 0
    got = batch_hard_triplet_loss(f, y, margin=0.3)
    assert got.item() == pytest.approx((0 + 0 + 2.3 + 0) / 4, abs=1e-5)


def test_bot_model_has_last_stride_one_and_bnneck():
    m = BoTReID(7, "resnet18")
    out = m(torch.randn(2, 3, 64, 32))
    assert out.logits.shape == (2, 7) and out.feat.shape == (2, 512)
    assert m.backbone(torch.randn(1, 3, 64, 32)).shape[-2:] == (4, 2)  # stride 16, not 32
    assert m.classifier.bias is None and not m.bnneck.bias.requires_grad
    m.eval()
    assert m(torch.randn(2, 3, 64, 32)).shape == (2, 512)


def test_reid_pipeline_end_to_end_on_a_market1501_layout(tmp_path):
    make_synthetic_reid(tmp_path / "market", "market1501", n_ids=16, images_per_id=6, seed=1)
    result = CliRunner().invoke(main, [
        "run", "--task", "reid", "--dataset", "market1501", "--root", str(tmp_path / "market"),
        "--out", str(tmp_path / "run"), "--model", "resnet18", "--record-epochs", "2", "--epochs", "3",
        "--batch-size", "8", "--ratio", "0.25", "--no-baseline", "--set", "reid_height=64", "--set", "reid_width=32", "--set", "pk_k=2",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "mAP" in report and "Rank-1" in report
    page = (tmp_path / "run" / "report.html").read_text()  # the visual report speaks of identities
    assert "Kept and pruned per identity" in page and "Identities that fell below K images" in page
    assert page.count('<img class="thumb') > 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    store = TrajectoryStore.open(tmp_path / "run" / "prune-in-run" / "trajectory")
    # dprune run's total budget: the detector's removals count inside the ratio, the score prunes the rest.
    assert m["n_pruned"] == max(0, round(0.25 * m["n_observed"]) - len(m["removed_outliers"]))
    assert store.counts().sum() > 0 and m["n_observed"] == int((store.counts().sum(0) > 0).sum())
    # The exported list uses the dataset's own pids and relative paths: readable as a training list.
    ds = build_reid_dataset("market1501", tmp_path / "market")
    lines = (tmp_path / "run" / "train_list.txt").read_text().splitlines()
    assert len(lines) == m["n_kept"]
    train_paths = {r.relpath: r.pid for r in ds.train}
    original_pids = set(ds.pid_map)
    for line in lines:
        path, pid = line.split()
        assert path in train_paths and int(pid) in original_pids
    metrics = json.loads((tmp_path / "run" / "prune-in-run" / "metrics.json").read_text())
    assert [x["phase"] for x in metrics] == ["full", "full", "pruned"]
    assert {"mAP", "rank1", "rank5", "rank10", "mINP"} <= set(metrics[-1])
