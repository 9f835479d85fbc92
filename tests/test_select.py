"""Selection policies, relabelling, outliers and the manifest files."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dprune import fileio
from dprune.scoring import score_arrays
from dprune.manifest import export_list, load_manifest, write_manifest
from dprune.select import PruneSpec, n_to_prune, select, tiebreak_key
from dprune.synthetic import synthetic_trajectory
from strategies import random_trajectory


def scored(seed=0, N=300, C=5, E=4, noise=0.1, params=None):
    t = synthetic_trajectory(N, C, E, noise_rate=noise, seed=seed)
    return score_arrays(t["logits"], t["counts"], t["labels"], params=params), t


def made_from(N, sha="ab" * 32):
    return {"fingerprint": {"n_samples": N, "sha256": sha}, "generation": "g", "epochs": 4}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 60), st.integers(2, 7), st.floats(0, 0.999), st.sampled_from(["global", "class"]))
@example(0, 1, 2, 0.5, "global")  # the one sample would be pruned: refused
def test_prune_count_is_exact_and_sets_partition(seed, N, C, ratio, policy):
    z, c, y = random_trajectory(seed, 3, N, C)
    scores = score_arrays(z, c, y, methods=["entropy"])
    observed = scores["n_observed"] > 0
    try:
        sel = select(scores, y, C, method="entropy", ratio=ratio, policy=policy, seed=seed)
    except ValueError as e:  # legal when the quota would prune everything, or class balance makes it impossible
        if "keeps no sample" in str(e):
            assert n_to_prune(ratio, int(observed.sum())) == N
        else:
            assert policy == "class" and "without emptying a class" in str(e)
        return
    assert len(sel.pruned) == n_to_prune(ratio, int(observed.sum()))
    everything = np.sort(np.r_[sel.kept, sel.pruned, sel.outlier_index])
    np.testing.assert_array_equal(everything, np.arange(N))
    assert set(sel.unobserved) <= set(sel.kept)
    assert observed[sel.pruned].all()
    if policy == "class":
        for cls in np.unique(y[observed]):
            assert (y[sel.kept] == cls).any(), f"class {cls} emptied"


def test_global_policy_prunes_the_lowest_scores():
    scores, t = scored()
    sel = select(scores, t["labels"], 5, method="entropy", ratio=0.3)
    assert scores["entropy"][sel.pruned].max() <= scores["entropy"][sel.kept].min()


def test_class_policy_prunes_each_class_in_proportion():
    scores, t = scored(N=1000, C=4)
    y = t["labels"]
    sel = select(scores, y, 4, method="entropy", ratio=0.4, policy="class")
    n_c = np.bincount(y, minlength=4)
    pruned_c = np.bincount(y[sel.pruned], minlength=4)
    assert pruned_c.sum() == 400
    assert (np.abs(pruned_c - 0.4 * n_c) <= 1).all()
    for cls in range(4):  # within a class, still the lowest scores
        k, p = sel.kept[y[sel.kept] == cls], sel.pruned[y[sel.pruned] == cls]
        assert scores["entropy"][p].max() <= scores["entropy"][k].min()


def test_class_policy_never_empties_a_class():
    y = np.array([0] * 9 + [1])  # class 1 has a single sample with the lowest score
    scores = {"entropy": np.r_[np.arange(9) + 1.0, 0.0], "n_observed": np.ones(10, int), "nonfinite": np.zeros(10, bool)}
    sel = select(scores, y, 2, method="entropy", ratio=0.5, policy="class")
    assert 9 in sel.kept and len(sel.pruned) == 5
    glob = select(scores, y, 2, method="entropy", ratio=0.5, policy="global")
    assert 9 in glob.pruned and glob.emptied_classes == [1]


def test_ties_are_broken_by_the_seed_not_the_index():
    N = 200
    scores = {"forgetting": np.zeros(N), "n_observed": np.ones(N, int), "nonfinite": np.zeros(N, bool)}
    a = select(scores, np.zeros(N, int), 1, method="forgetting", ratio=0.5, seed=1)
    b = select(scores, np.zeros(N, int), 1, method="forgetting", ratio=0.5, seed=2)
    assert set(a.pruned) != set(b.pruned)
    assert 0.3 < np.mean(a.pruned < N // 2) < 0.7


def test_tie_breaks_are_independent_of_the_random_scorer_and_of_each_other():
    N = 1000
    random_scores = np.random.default_rng(3).random(N)  # what the random scorer draws for seed 3
    for method in ("forgetting", "entropy"):
        key = tiebreak_key(3, method, N)
        assert abs(np.corrcoef(key, random_scores)[0, 1]) < 0.1
    assert abs(np.corrcoef(tiebreak_key(3, "forgetting", N), tiebreak_key(3, "el2n", N))[0, 1]) < 0.1
    # Fully tied scores: forgetting's selection does not repeat the random scorer's.
    scores = {"forgetting": np.zeros(N), "random": random_scores, "n_observed": np.ones(N, int),
              "nonfinite": np.zeros(N, bool)}
    a = select(scores, np.zeros(N, int), 1, method="forgetting", ratio=0.3, seed=3)
    b = select(scores, np.zeros(N, int), 1, method="random", ratio=0.3, seed=3)
    assert len(np.intersect1d(a.pruned, b.pruned)) < 0.5 * len(a.pruned)


def test_unobserved_kept_unscored_kept_nonfinite_pruned_first():
    N = 10
    s = np.arange(N, dtype=float)
    s[3] = np.nan
    n_obs = np.ones(N, int)
    n_obs[0] = 0
    nonfinite = np.zeros(N, bool)
    nonfinite[9] = True  # highest raw position, but broken: must go first
    s[9] = np.nan
    scores = {"dyn_unc": s, "n_observed": n_obs, "nonfinite": nonfinite}
    sel = select(scores, np.zeros(N, int), 1, method="dyn_unc", ratio=0.25)
    assert len(sel.pruned) == n_to_prune(0.25, 9) == 2
    assert sel.pruned.tolist() == [1, 9] and sel.nonfinite_pruned.tolist() == [9]
    assert sel.unobserved.tolist() == [0] and sel.unscored.tolist() == [3]
    assert {0, 3} <= set(sel.kept)


def test_relabelling_uses_the_flags_of_the_scores_and_keeps_the_sample():
    scores, t = scored(N=500, noise=0.2, params={"mislabel": {"min_confidence": 0.6}})
    y, true = t["labels"], t["true_labels"]
    sel = select(scores, y, 5, method="entropy", ratio=0.5, relabel=True)
    np.testing.assert_array_equal(sel.relabel_index, np.flatnonzero(scores["mislabel"]))
    assert len(sel.relabel_index) > 0
    assert (scores["p_max"][sel.relabel_index] >= 0.6).all()
    assert (sel.relabel_label == scores["soft_argmax"][sel.relabel_index]).all()
    assert (sel.relabel_label != y[sel.relabel_index]).all()
    assert set(sel.relabel_index) <= set(sel.kept)
    # On this synthetic data the trajectory learns the true class first: most fixes are right.
    assert np.mean(sel.relabel_label == true[sel.relabel_index]) > 0.9
    np.testing.assert_array_equal(sel.labels_final[sel.relabel_index], sel.relabel_label)


def test_outliers_by_fraction_and_by_threshold():
    scores, t = scored(N=400)
    y = t["labels"]
    sel = select(scores, y, 5, method="entropy", ratio=0.2, outliers=0.05)
    assert len(sel.outlier_index) == 20 and len(sel.pruned) == 80
    assert not set(sel.outlier_index) & set(sel.kept)
    flattest = np.argsort(-scores["entropy"])[:20]
    assert set(flattest) == set(sel.outlier_index)
    assert all("flat soft label" in r for r in sel.outlier_reason)
    scores, _ = scored(N=400, params={"outlier": {"entropy_threshold": 0.8, "margin_threshold": 0.2}})
    thr = select(scores, y, 5, method="entropy", ratio=0.2, outliers="flagged")
    h = scores["entropy"] / np.log(5)
    want = np.flatnonzero((h >= 0.8) & (scores["margin"] <= 0.2))
    np.testing.assert_array_equal(thr.outlier_index, want)


@pytest.mark.parametrize("policy", ["global", "class"])
def test_a_total_budget_counts_the_removals_inside_the_ratio(policy):
    scores, t = scored(N=600, noise=0.25, params={"confident": {"probs": "soft_label"}})
    y = t["labels"]
    kw = dict(method="entropy", policy=policy, relabel=True, detector="confident", mislabelled="remove")
    n_flagged = int(scores["confident"].sum())
    assert 30 < n_flagged < 150
    # The removals below the ratio: the score prunes the rest of it, so ratio * N go in all.
    score_b = select(scores, y, 5, ratio=0.3, budget="score", **kw)
    total = select(scores, y, 5, ratio=0.3, budget="total", **kw)
    np.testing.assert_array_equal(total.outlier_index, score_b.outlier_index)
    assert len(score_b.pruned) == 180 and len(total.pruned) == 180 - n_flagged
    assert len(total.kept) == 600 - 180
    # The kept samples of a total budget are the higher-scored end of the other's pruned ones.
    assert set(score_b.kept) <= set(total.kept)
    # The removals beyond the ratio: the score prunes nothing.
    few = select(scores, y, 5, ratio=n_flagged / 600 / 2, budget="total", **kw)
    assert len(few.pruned) == 0 and len(few.outlier_index) == n_flagged
    # Outliers count as removals too.
    out = select(scores, y, 5, ratio=0.3, budget="total", method="entropy", policy=policy, outliers=0.05)
    assert len(out.outlier_index) == 30 and len(out.pruned) == 150


def _flagged_scores(y, flagged, entropy):
    N = len(y)
    return {"entropy": entropy, "n_observed": np.full(N, 3), "nonfinite": np.zeros(N, bool),
            "soft_argmax": y.copy(), "margin": np.ones(N), "mislabel": np.zeros(N, bool), "outlier": np.zeros(N, bool),
            "confident": flagged, "confident_label": 1 - y, "confident_relabel": np.zeros(N, bool)}


DETECT_AND_REMOVE = dict(method="entropy", relabel=True, detector="confident", mislabelled="remove")


@pytest.mark.parametrize("budget", ["score", "total"])
def test_non_finite_samples_are_pruned_even_when_the_removals_fill_the_budget(budget):
    y = np.repeat([0, 1], 10)
    flagged = np.isin(np.arange(20), [0, 1, 2, 10, 11, 12])  # 6 removals = round(0.3 * 20)
    scores = _flagged_scores(y, flagged, np.linspace(0.1, 1.0, 20))
    scores["nonfinite"][19] = True
    sel = select(scores, y, 2, ratio=0.3, budget=budget, policy="global", **DETECT_AND_REMOVE)
    assert 19 in sel.pruned and 19 in sel.nonfinite_pruned and 19 not in sel.kept
    assert len(sel.pruned) == (1 if budget == "total" else 6)


@pytest.mark.parametrize("budget", ["score", "total"])
def test_class_quotas_follow_what_the_removals_leave_of_each_class(budget):
    # Class 0: 100 samples, 50 of them removed; class 1: 10. The score's pruning is split 50 : 10.
    y = np.repeat([0, 1], [100, 10])
    scores = _flagged_scores(y, np.arange(110) < 50, np.random.default_rng(0).random(110))
    sel = select(scores, y, 2, ratio=0.3, budget=budget, policy="class", **DETECT_AND_REMOVE)
    n_prune = 33 if budget == "score" else 0
    assert len(sel.pruned) == n_prune
    assert [int((y[sel.pruned] == c).sum()) for c in (0, 1)] == ([28, 5] if budget == "score" else [0, 0])
    sel = select(scores, y, 2, ratio=0.5, budget="total", policy="class", **DETECT_AND_REMOVE)
    assert [int((y[sel.pruned] == c).sum()) for c in (0, 1)] == [4, 1]  # 55 - 50 = 5 more, split 50 : 10


@pytest.mark.parametrize("kw, match", [
    (dict(ratio=1.0), r"prune ratio must be in \[0, 1\), got 1.0"),
    (dict(ratio=-0.1), r"prune ratio must be in \[0, 1\)"),
    (dict(ratio=0.1, policy="random"), "unknown policy 'random'; valid: global, class"),
    (dict(ratio=0.1, method="nope"), "scores hold no 'nope' array"),
    (dict(ratio=0.1, outliers=1.5), r"outliers must be in \[0, 1\) or 'flagged', got 1.5"),
    (dict(ratio=0.1, detector="vote"), "unknown mislabel detector"),
    (dict(ratio=0.1, budget="all"), "unknown budget 'all'; valid: score, total"),
    (dict(ratio=0.99, policy="global", outliers=0.5), "keeps no sample|cannot prune"),
])
def test_bad_selection_options(kw, match):
    scores, t = scored(N=50)
    kw.setdefault("method", "entropy")
    with pytest.raises(ValueError, match=match):
        select(scores, t["labels"], 5, **kw)


def test_manifest_round_trip_and_export(tmp_path):
    scores, t = scored(N=200, noise=0.2)
    y = t["labels"]
    sel = select(scores, y, 5, method="entropy", ratio=0.3, relabel=True, outliers=0.02)
    fp = made_from(200)["fingerprint"]
    m = write_manifest(tmp_path / "m.json", sel, source_run="run", made_from=made_from(200), n_classes=5)
    assert m["n_pruned"] == 60 and m["ratio_achieved"] == pytest.approx(0.3)
    assert load_manifest(tmp_path / "m.json", labels_N=y).digest == load_manifest(tmp_path / "m.json").digest
    loaded = load_manifest(tmp_path / "m.json", fingerprint=fp)
    np.testing.assert_array_equal(loaded.kept, sel.kept)
    np.testing.assert_array_equal(loaded.labels, sel.labels_final)
    arrays = np.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(arrays["kept"], sel.kept)
    ids = [f"x/{i}.png" for i in range(200)]
    assert export_list(loaded, ids, tmp_path / "kept.tsv") == len(sel.kept)
    first = (tmp_path / "kept.tsv").read_text().splitlines()[0].split("\t")
    i = int(first[0])
    assert first[1] == ids[i] and int(first[2]) == sel.labels_final[i]


def test_manifest_for_another_dataset_is_refused(tmp_path):
    scores, t = scored(N=50)
    sel = select(scores, t["labels"], 5, method="entropy", ratio=0.1)
    write_manifest(tmp_path / "m.json", sel, source_run="r", made_from=made_from(50, "a" * 64), n_classes=5)
    with pytest.raises(ValueError, match="made for a different dataset"):
        load_manifest(tmp_path / "m.json", fingerprint={"n_samples": 50, "sha256": "b" * 64})


def test_corrupt_or_mismatched_manifest_files_are_refused(tmp_path):
    scores, t = scored(N=50)
    sel = select(scores, t["labels"], 5, method="entropy", ratio=0.1)
    path = tmp_path / "m.json"
    write_manifest(path, sel, source_run="r", made_from=made_from(50, "a" * 64), n_classes=5)
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="manifest is corrupt"):
        load_manifest(path)
    path.write_text(good)
    np.savez(tmp_path / "m.npz", kept=np.arange(3), labels=np.zeros(50, int))  # a stale npz
    with pytest.raises(ValueError, match="does not belong to this manifest"):
        load_manifest(path)


def test_a_killed_manifest_write_leaves_a_usable_manifest(tmp_path, monkeypatch):
    scores, t = scored(N=50)
    y = t["labels"]
    path = tmp_path / "m.json"
    first = select(scores, y, 5, method="entropy", ratio=0.1)
    write_manifest(path, first, source_run="r", made_from=made_from(50), n_classes=5)
    before = path.read_bytes()
    second = select(scores, y, 5, method="entropy", ratio=0.5)
    real = fileio._atomic_write

    def dies_half_way(f, _data=None):
        f.write(b'{"format_version": 2, "kind": "dprune-manif')
        raise KeyboardInterrupt("killed")

    # Killed while writing the JSON: the previous pair is untouched and loads.
    monkeypatch.setattr(fileio, "_atomic_write", lambda p, w: real(p, dies_half_way) if p.suffix == ".json" else real(p, w))
    with pytest.raises(KeyboardInterrupt):
        write_manifest(path, second, source_run="r", made_from=made_from(50), n_classes=5)
    assert path.read_bytes() == before and not list(tmp_path.glob(".m.json.*"))
    np.testing.assert_array_equal(load_manifest(path).kept, first.kept)
    # Killed after the JSON, before the npz: the new JSON is complete and usable with the
    # dataset's labels (how training loads it); the stale npz is refused, not trusted.
    monkeypatch.setattr(fileio, "_atomic_write", lambda p, w: real(p, dies_half_way) if p.suffix == ".npz" else real(p, w))
    with pytest.raises(KeyboardInterrupt):
        write_manifest(path, second, source_run="r", made_from=made_from(50), n_classes=5)
    loaded = load_manifest(path, labels_N=y)
    np.testing.assert_array_equal(loaded.kept, second.kept)
    with pytest.raises(ValueError, match="does not belong"):
        load_manifest(path)


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    # mkstemp creates 0600 files; outputs should be as readable as any file the user writes.
    fileio.atomic_write_json(tmp_path / "a.json", {"x": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_torn_pair_is_repaired_from_the_json(tmp_path, monkeypatch):
    from dprune.manifest import npz_is_current, rewrite_npz

    scores, t = scored(N=60, noise=0.2)
    y = t["labels"]
    sel = select(scores, y, 5, method="entropy", ratio=0.3, relabel=True, outliers=0.05)
    path = tmp_path / "m.json"
    write_manifest(path, sel, source_run="r", made_from=made_from(60), n_classes=5)
    good = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").unlink()
    assert not npz_is_current(path)
    rewrite_npz(load_manifest(path, labels_N=y), path)
    assert npz_is_current(path) and (tmp_path / "m.npz").read_bytes() == good


@pytest.mark.parametrize("policy", ["class", "global"])
def test_a_refused_selection_says_what_holds_the_samples_back(policy):
    """A scorer that scores nothing (a windowed one on one epoch) must say so, not only 'at most 0'."""
    N = 40
    scores = {"dual": np.full(N, np.nan, np.float32), "n_observed": np.ones(N, np.int32),
              "nonfinite": np.zeros(N, bool)}
    labels = np.arange(N) % 4
    with pytest.raises(ValueError, match="40 unscored by dual"):
        select(scores, labels, 4, PruneSpec(method="dual", ratio=0.3, policy=policy))
