"""Threshold samples (Pleiss et al., 2020): a fake class sets the AUM threshold for mislabels."""
import numpy as np
import pytest

from dprune.manifest import load_manifest
from dprune.pruning import prune_store
from dprune.scoring import load_or_score
from dprune.select import PruneSpec
from dprune.store import TrajectoryStore, fingerprint, open_store
from dprune.runs import TrainRun, selection
from dprune.train import TrainConfig
from dprune.train.loop import Trainer
from test_train import N_DIGITS_TRAIN


def _store_with_threshold(tmp_path, seed=0, N=80, C=3, E=3, n_thr=12):
    """A store of C real classes plus the fake class C: the model learns every sample's real
    class (a tenth of the given labels are flipped), at a random strength per sample."""
    rng = np.random.default_rng(seed)
    real = rng.integers(0, C, N)
    thr_idx = np.sort(rng.choice(N, n_thr, replace=False))
    labels = real.copy()
    flip = rng.random(N) < 0.1
    labels[flip] = (real[flip] + 1) % C
    labels[thr_idx] = C
    z = rng.normal(0, 1, (E, N, C + 1)).astype(np.float32)
    z[:, np.arange(N), real] += rng.uniform(0, 4, N).astype(np.float32)
    meta = {"threshold_samples": {"class": C, "indices": thr_idx.tolist(), "labels": real[thr_idx].tolist()}}
    store = TrajectoryStore.create(tmp_path / "s", labels, C + 1, dtype="float32", extra_meta=meta)
    for e in range(E):
        store.begin_epoch(e)
        store.put(e, 0, z[e], np.ones(N, np.int32))
        store.complete_epoch(e)
    store.close()
    return open_store(tmp_path / "s"), z, labels, real, thr_idx


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("percentile", [50.0, 99.0])
def test_aum_flag_is_the_threshold_samples_percentile_rule(tmp_path, seed, percentile):
    store, z, labels, real, thr_idx = _store_with_threshold(tmp_path, seed)
    scores, _, _ = load_or_score(store, methods=["aum"], params={"aum_threshold": {"percentile": percentile}})
    # AUM written out independently: the mean over epochs of z[y] - max_{k != y} z[k].
    N = len(labels)
    others = z.copy()
    others[:, np.arange(N), labels] = -np.inf
    aum_N = (z[:, np.arange(N), labels] - others.max(2)).mean(0)
    is_thr = np.isin(np.arange(N), thr_idx)
    alpha = np.percentile(aum_N[is_thr], percentile)
    np.testing.assert_array_equal(scores["aum_mislabel"], ~is_thr & (aum_N <= alpha + 1e-5))
    np.testing.assert_array_equal(scores["threshold_sample"], is_thr)
    np.testing.assert_array_equal(scores["threshold_label"], np.where(is_thr, real, -1))
    assert not scores["mislabel"][is_thr].any()  # they cannot be judged in this run
    assert (scores["soft_argmax"][scores["mislabel"]] != 3).all()  # nobody is relabelled into the fake class


def test_selection_keeps_threshold_samples_with_their_labels_and_refers_to_the_dataset(tmp_path):
    store, z, labels, real, thr_idx = _store_with_threshold(tmp_path)
    spec = PruneSpec(method="entropy", ratio=0.3, relabel=True, detector="aum")
    done = prune_store(store, spec, tmp_path / "m.json")
    m, sel = done.manifest, done.selection
    assert set(thr_idx) <= set(m.kept.tolist()) and not set(thr_idx) & set(sel.pruned.tolist())
    given = labels.copy()
    given[thr_idx] = real[thr_idx]
    np.testing.assert_array_equal(m.labels, given)  # nothing relabelled by aum: every label is the dataset's
    assert m.data["relabelled"] == {} and m.data["threshold_samples"] == thr_idx.tolist()
    assert "not judged" in m.data["threshold_samples_note"] and m.data["n_classes"] == 3
    assert m.fingerprint == fingerprint(given, store.sample_ids) != store.fingerprint
    removed = {o["index"] for o in m.data["removed_outliers"]}
    assert removed == set(np.flatnonzero(done.scores["aum_mislabel"]).tolist())
    # The confident detector on the same store never proposes the fake class.
    spec = PruneSpec(method="entropy", ratio=0.3, relabel=True, detector="confident")
    m = prune_store(store, spec, tmp_path / "c.json").manifest
    assert all(0 <= c < 3 for c in m.data["relabelled"].values())
    assert not set(thr_idx) & {int(i) for i in m.data["relabelled"]}


def test_the_aum_detector_needs_threshold_samples(tmp_path):
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(tmp_path / "s", rng.integers(0, 3, 20), 3)
    store.begin_epoch(0)
    store.put(0, 0, rng.normal(size=(20, 3)).astype(np.float32), np.ones(20, np.int32))
    store.complete_epoch(0)
    store.close()
    store = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match="threshold samples"):
        prune_store(store, PruneSpec(method="entropy", ratio=0.2, relabel=True, detector="aum"), tmp_path / "m.json")
    with pytest.raises(ValueError, match="threshold_samples"):
        TrainRun(TrainConfig.of(out=str(tmp_path / "r"), epochs=3), selection(dict(relabel=True, detector="aum"), 0), 1)
    with pytest.raises(ValueError, match="threshold_samples"):
        TrainConfig.of(out=str(tmp_path / "r"), threshold_samples=True, manifest=str(tmp_path / "m.json"))
    with pytest.raises(ValueError, match="threshold_samples"):
        TrainConfig.of(out=str(tmp_path / "r"), threshold_samples=True, record="off")


def test_a_threshold_run_finds_the_flips_prunes_in_run_and_its_manifest_retrains(tmp_path):
    E, T = 4, 2
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=E, batch_size=128, progress=False, threshold_samples=True,
                      label_noise=0.2, noise_kind="symmetric")
    trainer = TrainRun(cfg, selection(dict(ratio=0.3, relabel=True, detector="aum"), cfg.seed), T).trainer()
    assert (trainer.data.num_classes, trainer.data.real_classes) == (11, 10)
    metrics = trainer.fit()
    store = open_store(tmp_path / "r" / "trajectory")
    thr = store.meta["threshold_samples"]
    idx = np.asarray(thr["indices"])
    noise = np.load(tmp_path / "r" / "label_noise.npz")
    assert store.n_classes == 11 and thr["class"] == 10 and len(idx) == round(N_DIGITS_TRAIN / 11)
    assert (store.labels[idx] == 10).all() and (np.delete(store.labels, idx) == np.delete(noise["noisy_labels"], idx)).all()
    np.testing.assert_array_equal(thr["labels"], noise["noisy_labels"][idx])

    scores, _, _ = load_or_score(store, methods=["aum"], first_epochs=T)
    flagged, flips = scores["aum_mislabel"], noise["flipped"] & ~scores["threshold_sample"]
    precision, recall = (flagged & flips).sum() / flagged.sum(), (flagged & flips).sum() / flips.sum()
    assert precision > 0.8 and recall > 0.7, (precision, recall)  # measured 0.93 / 0.90

    m = load_manifest(tmp_path / "r" / "manifest.json")
    removed = {o["index"] for o in m.data["removed_outliers"]}
    assert removed == set(np.flatnonzero(flagged).tolist())
    assert set(idx.tolist()) <= set(m.kept.tolist())
    np.testing.assert_array_equal(m.labels[idx], noise["noisy_labels"][idx])
    assert [x["phase"] for x in metrics] == ["full"] * T + ["pruned"] * (E - T)
    assert metrics[-1]["test_metric"] > 0.85  # predictions over the 10 real classes

    # A plain retrain (no threshold samples) of the same noisy dataset accepts the manifest.
    again = Trainer(TrainConfig.of(out=str(tmp_path / "again"), epochs=1, batch_size=128, progress=False,
                                label_noise=0.2, noise_kind="symmetric", manifest=str(tmp_path / "r" / "manifest.json")))
    assert again.data.fingerprint == m.fingerprint and again.data.num_classes == 10
    assert again.fit()[-1]["samples_seen"] == len(m.kept)


def test_dprune_run_records_with_threshold_samples_for_the_aum_detector(tmp_path):
    from dprune.stages import run_config

    rc = run_config(tmp_path, {"detector": "aum", "relabel": True, "epochs": 4}, {}, record_epochs=2)
    assert rc.base.record.threshold_samples and rc.spec.detector == "aum"
    assert not run_config(tmp_path, {"epochs": 4}, {}, record_epochs=2).base.record.threshold_samples


def test_the_confident_detector_judges_neither_counts_threshold_samples_and_check_labels_shows_real_classes(tmp_path):
    from click.testing import CliRunner

    from dprune.cli import main

    store, z, labels, real, thr_idx = _store_with_threshold(tmp_path, N=200, n_thr=30)
    scores, _, _ = load_or_score(store, methods=["confident"], params={"confident": {"rate": 0.1}})
    assert scores["confident"].sum() == round(0.1 * 170) and not scores["confident"][thr_idx].any()
    # The sheet shows the dataset's labels (never the fake class), and accepts only real classes.
    sheet = tmp_path / "sheet.csv"
    r = CliRunner().invoke(main, ["check-labels", str(tmp_path / "s"), "--draw", "200", "--out", str(sheet)])
    assert r.exit_code == 0, r.output
    rows = [line.split(",") for line in sheet.read_text().splitlines()[1:]]
    assert {int(g) for _, g, _ in rows} <= {0, 1, 2}
    sheet.write_text("sample_id,given_label,checked_label\n"
                     + "".join(f"{i},{g},{real[int(i)]}\n" for i, g, _ in rows))
    r = CliRunner().invoke(main, ["check-labels", str(tmp_path / "s"), "--checked", str(sheet)])
    flipped = int((labels != real).sum() - len(thr_idx))  # the threshold samples' real labels are right
    assert f"200 labels checked, {flipped} wrong" in r.output
    bad = tmp_path / "bad.csv"
    given0 = real[0] if 0 in thr_idx else labels[0]
    bad.write_text(f"sample_id,given_label,checked_label\n0,{given0},3\n")
    r = CliRunner().invoke(main, ["check-labels", str(tmp_path / "s"), "--checked", str(bad)])
    assert r.exit_code != 0 and "[0, 3)" in r.output
