"""Scorers and flags against the independent float64 numpy reference (tests/numpy_reference.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dprune.scoring import METHODS, score_arrays, score_store
from dprune.store import TrajectoryStore
from dprune.synthetic import synthetic_trajectory
from numpy_reference import reference_scores
from strategies import random_trajectory

FLOAT_KEYS = METHODS + ("p_label", "p_max", "margin")
EXACT_KEYS = ("soft_argmax", "nonfinite", "n_observed")


def assert_matches(got, want, keys=FLOAT_KEYS, rtol=2e-4, atol=2e-5):
    for k in keys:
        g, w = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        assert (nan_g == nan_w).all(), f"{k}: NaN at {np.flatnonzero(nan_g != nan_w)} (got {g}, want {w})"
        ok = np.isclose(g, w, rtol=rtol, atol=atol) | nan_g
        assert ok.all(), f"{k}: differs at {np.flatnonzero(~ok)}: got {g[~ok]}, want {w[~ok]}"
    for k in EXACT_KEYS:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


shapes = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=60, deadline=None)
@given(shapes, st.booleans())
def test_scorers_match_numpy_reference(shape, nonfinite):
    seed, E, N, C = shape
    z, c, y = random_trajectory(seed, E, N, C, nonfinite=nonfinite)
    got = score_arrays(z, c, y)
    want = reference_scores(z, c, y)
    assert_matches(got, want)
    # Flags can flip on float rounding exactly at a threshold; compare away from it.
    near = np.abs(np.nan_to_num(want["p_max"]) - 0.5) < 1e-4
    np.testing.assert_array_equal(got["mislabel"][~near], want["mislabel"][~near])


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(2, 5), st.floats(0.05, 0.95), st.integers(-3, 2))
def test_parameters_reach_the_scorers(shape, window, decay, el2n_epoch):
    seed, E, N, C = shape
    z, c, y = random_trajectory(seed, E, N, C)
    el2n_epoch = el2n_epoch % E
    params = {"tdds": {"window": window, "decay": decay}, "dyn_unc": {"window": window}, "dual": {"window": window},
              "el2n": {"epoch": el2n_epoch}, "random": {"seed": seed % 1000}}
    got = score_arrays(z, c, y, params=params)
    want = reference_scores(z, c, y, window=window, decay=decay, el2n_epoch=el2n_epoch, seed=seed % 1000)
    assert_matches(got, want, keys=("tdds", "dyn_unc", "dual", "el2n", "random"))


def test_entropy_is_the_papers_formula_on_a_hand_example():
    # Two epochs of logits [0, 0] and [2, 0]: mean [1, 0] -> p = [e/(e+1), 1/(e+1)].
    z = np.array([[[0.0, 0.0]], [[2.0, 0.0]]], np.float32)
    p = np.array([np.e, 1.0]) / (np.e + 1)
    got = score_arrays(z, None, [0], methods=["entropy", "entropy_prob"])
    assert got["entropy"][0] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-6)
    # Averaging probabilities instead gives a different (higher) entropy here.
    assert got["entropy_prob"][0] > got["entropy"][0]


def test_unobserved_epochs_are_excluded_not_averaged_as_zero():
    z = np.array([[[5.0, 0.0]], [[0.0, 0.0]]], np.float32)
    with_gap = score_arrays(z, np.array([[1], [0]]), [0], methods=["entropy"])
    only_first = score_arrays(z[:1], None, [0], methods=["entropy"])
    assert with_gap["entropy"][0] == pytest.approx(only_first["entropy"][0])


def test_nonfinite_sample_is_flagged_and_unscored():
    z, c, y = random_trajectory(1, 3, 5, 4)
    c[:] = 1
    z[1, 2, 0] = np.nan
    z[0, 3, 1] = np.inf
    out = score_arrays(z, c, y)
    assert out["nonfinite"].tolist() == [False, False, True, True, False]
    for m in METHODS:
        assert np.isnan(out[m][[2, 3]]).all() and not np.isnan(out[m][[0, 1, 4]]).any(), m
    assert not out["mislabel"][[2, 3]].any() and (out["soft_argmax"][[2, 3]] == -1).all()


def test_nonfinite_in_an_unobserved_epoch_is_ignored():
    z, c, y = random_trajectory(2, 3, 2, 3)
    c[:] = 1
    z[1, 0, :] = np.nan
    c[1, 0] = 0
    out = score_arrays(z, c, y)
    assert not out["nonfinite"][0] and not np.isnan(out["entropy"][0])


@pytest.mark.parametrize("bad, match", [
    (dict(logits=np.zeros((2, 3))), r"\[E, N, C\], got shape \(2, 3\)"),
    (dict(counts=np.ones((2, 4))), r"counts must be \[E, N\] = \[2, 3\], got shape \(2, 4\)"),
    (dict(labels=np.array([0, 1])), r"labels have length 2, expected N = 3"),
    (dict(labels=np.array([0, 1, 4])), r"labels must lie in \[0, 4\), got range \[0, 4\]"),
    (dict(labels=np.array([0, -1, 2])), r"labels must lie in \[0, 4\)"),
    (dict(labels=np.array([0.0, 1.0, 2.0])), r"labels must be integers, got dtype float64"),
    (dict(counts=-np.ones((2, 3), int)), "non-negative"),
    (dict(methods=["entropy", "bogus"]), "unknown scoring method bogus; valid: entropy, entropy_prob, forgetting"),
    (dict(params={"tdds": {"windw": 3}}), r"unknown parameter tdds.windw; valid: tdds.window, tdds.decay"),
    (dict(params={"tdds": {"window": 1}}), r"tdds.window must be in \[2, 1,000,000\], got 1"),
    (dict(params={"tdds": {"window": 2.5}}), "tdds.window must be an integer, got 2.5"),
    (dict(params={"tdds": {"decay": float("inf")}}), "tdds.decay must be a finite number"),
    (dict(params={"mislabel": {"min_confidence": "high"}}), "mislabel.min_confidence must be a number"),
])
def test_bad_input_raises_value_error_naming_the_problem(bad, match):
    args = dict(logits=np.zeros((2, 3, 4), np.float32), counts=np.ones((2, 3), int), labels=np.array([0, 1, 2]))
    kw = {k: bad.pop(k) for k in ("methods", "params") if k in bad}
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        score_arrays(args["logits"], args["counts"], args["labels"], **kw)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 5), st.integers(1, 40), st.integers(2, 13), st.integers(1, 17))
def test_chunked_store_scoring_equals_whole_array_scoring(seed, E, N, C, chunk):
    import tempfile

    z, c, y = random_trajectory(seed, E, N, C)
    with tempfile.TemporaryDirectory() as d:
        store = TrajectoryStore.create(d, y, C, dtype="float32")
        for e in range(E):
            store.begin_epoch(e)
            store.put(e, 0, z[e], c[e])
            store.complete_epoch(e)
        chunked, backend = score_store(TrajectoryStore.open(d), chunk_size=chunk)
    assert backend == ("triton" if torch.cuda.is_available() else "numba")
    whole = score_arrays(z, c, y)
    assert_matches(chunked, whole, rtol=1e-5, atol=1e-6)
    for k in ("mislabel", "outlier"):
        np.testing.assert_array_equal(chunked[k], whole[k])


def test_scores_accept_fp16_and_bf16_inputs():
    z, c, y = random_trajectory(3, 4, 6, 5)
    ref = score_arrays(z, c, y)
    for dt in (torch.float16, torch.bfloat16):
        got = score_arrays(torch.from_numpy(z).to(dt), c, y)
        rounded = reference_scores(torch.from_numpy(z).to(dt).float().numpy(), c, y)
        assert_matches(got, rounded, keys=("entropy", "aum", "loss_mean"), rtol=1e-3, atol=1e-4)
        assert np.isfinite(got["entropy"]).sum() == np.isfinite(ref["entropy"]).sum()


def test_first_epochs_scores_the_run_as_if_it_had_stopped_there(tmp_path):
    E, N, C = 5, 23, 7
    z, c, y = random_trajectory(11, E, N, C)
    store = TrajectoryStore.create(tmp_path / "s", y, C, dtype="float32")
    for e in range(E):
        store.begin_epoch(e)
        store.put(e, 0, z[e], c[e])
        store.complete_epoch(e)
    store = TrajectoryStore.open(tmp_path / "s")
    for k in (1, 3, E):
        first, _ = score_store(store, first_epochs=k, chunk_size=5)
        assert_matches(first, score_arrays(z[:k], c[:k], y), rtol=1e-5, atol=1e-6)
    assert not np.allclose(score_store(store, first_epochs=2)[0]["entropy"], score_store(store)[0]["entropy"])
    for bad in (0, E + 1):
        with pytest.raises(ValueError, match=rf"first_epochs must be in \[1, {E}\]"):
            score_store(store, first_epochs=bad)


# ------------------------------------------------------------------------- confident learning
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 60), st.integers(2, 6), st.floats(0.1, 3.0), st.floats(0.0, 1.0),
       st.sampled_from(["margin", "noise_rate", "self_confidence"]), st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_confident_learning_matches_the_reference(seed, N, C, alpha, agree, filter_by, rate):
    from dprune.scoring.confident import confident_learning
    from dprune.scoring.confident_reference import confident_learning_reference

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(C, alpha), N).astype(np.float32)
    if N > 3:
        p[1] = p[0]  # exact ties between samples
        p[2] = np.float32(1 / C)  # and between every class of one sample
    y = rng.integers(0, C, N)
    valid = rng.random(N) > 0.1
    rate = None if filter_by == "noise_rate" else rate
    got = confident_learning(p, y, valid, agree=agree, filter_by=filter_by, rate=rate, chunk_bytes=7 * 4 * C)
    want = confident_learning_reference(p, y, valid, agree=agree, filter_by=filter_by, rate=rate)
    for k in ("confident", "confident_label", "confident_relabel"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for k in ("label_margin", "p_avg_label"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("filter_by", ["margin", "self_confidence"])
def test_a_given_rate_flags_that_share_of_the_judged_samples_even_where_the_label_is_most_probable(filter_by):
    from dprune.scoring.confident import confident_learning

    rng = np.random.default_rng(4)
    N, C = 500, 5
    p = rng.dirichlet(np.full(C, 0.5), N).astype(np.float32)
    y = p.argmax(1)  # every label is its sample's most probable class: the joint's count flags none
    y[:50] = (y[:50] + 1) % C
    valid = np.ones(N, bool)
    valid[-20:] = False
    default = confident_learning(p, y, valid, filter_by=filter_by)
    got = confident_learning(p, y, valid, filter_by=filter_by, rate=0.3)
    assert got["confident"].sum() == round(0.3 * 480) > default["confident"].sum()
    assert not got["confident"][~valid].any()
    key = got["label_margin"] if filter_by == "margin" else got["p_avg_label"]
    assert key[got["confident"]].max() <= key[valid & ~got["confident"]].min()  # the lowest of the judged
    assert (got["confident"] & (p.argmax(1) == y)).any()  # step 5 does not apply
    np.testing.assert_array_equal(got["label_margin"], default["label_margin"])
    assert confident_learning(p, y, valid, filter_by=filter_by, rate=0.0)["confident"].sum() == 0


def test_a_rate_with_the_noise_rate_rule_or_outside_0_1_is_refused():
    from dprune.scoring.confident import confident_learning

    t = synthetic_trajectory(50, 3, 4, noise_rate=0.2, seed=1)
    with pytest.raises(ValueError, match="noise_rate takes its counts from the calibrated joint"):
        score_arrays(t["logits"], t["counts"], t["labels"], methods=["confident"],
                     params={"confident": {"filter_by": "noise_rate", "rate": 0.2}})
    with pytest.raises(ValueError, match=r"confident.rate must be in \[0, 1\], got 1.5"):
        confident_learning(np.full((3, 2), 0.5, np.float32), np.zeros(3, np.int64), np.ones(3, bool), rate=1.5)


@pytest.mark.parametrize("N, C, chunk, top_k", [(700, 3, 37, 2), (300, 70, 11, 16), (300, 70, 11, 3)])
@pytest.mark.parametrize("filter_by", ["margin", "noise_rate", "self_confidence"])
def test_confident_learning_streamed_through_a_spill_file_matches_the_reference(tmp_path, N, C, chunk, top_k,
                                                                                 filter_by):
    # The scoring path's detector: p-bar handed in ragged chunks, each row's top_k classes
    # spilled to a file; whole rows read again (in chunks of `chunk` rows) only where those
    # cannot decide, or for noise_rate's step 4 (its heaps fill and are replaced across chunks).
    # C = 70 crosses the kernels' 64-class blocks.  Class 0's samples hold little of their own
    # class, so its threshold is low: flat rows (30-89) may have it as a candidate outside
    # their top_k, which top_k = 3 cannot see and must read again.
    from dprune.scoring.confident import ConfidentSpill
    from dprune.scoring.confident_reference import confident_learning_reference

    rng = np.random.default_rng(C)
    p = rng.dirichlet(np.full(C, 0.3), N).astype(np.float32)
    p[30:90] = rng.dirichlet(np.full(C, 5.0), 60)
    p[10:20] = p[9]  # ties between samples
    p[21] = np.float32(1 / C)  # and between the classes of one sample
    y = np.where(rng.random(N) < 0.7, p.argmax(1), rng.integers(0, C, N))
    p[y == 0, 0] *= 0.05
    p /= p.sum(1, keepdims=True)
    valid = rng.random(N) > 0.05
    reads = []

    def rows(only):
        reads.append(N if only is None else only.sum())
        for a in range(0, N, chunk):
            if only is None or only[a:a + chunk].any():
                yield a, min(a + chunk, N), p[a:a + chunk]

    spill = ConfidentSpill(y, C, tmp_path, chunk_bytes=chunk * 8 * min(C, top_k), top_k=top_k)
    a = 0
    for size in rng.integers(1, 90, N):
        b = min(a + int(size), N)
        spill.add(a, p[a:b], valid[a:b])
        a = b
        if a == N:
            break
    got = spill.finish(rows, agree=0.4, filter_by=filter_by)
    want = confident_learning_reference(p, y, valid, agree=0.4, filter_by=filter_by)
    assert 0 < got["confident"].sum() < valid.sum()
    for k in ("confident", "confident_label", "confident_relabel"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for k in ("label_margin", "p_avg_label"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert list(tmp_path.iterdir()) == []  # the spill file is unnamed and closed
    if filter_by == "noise_rate":
        assert reads and spill.rows_reread == valid.sum()  # step 4 reads every row
    elif top_k >= C:  # every class kept: the rows are read once
        assert reads == [] and spill.rows_reread == 0
    elif (C, top_k) == (70, 3):  # only the rows the entries cannot decide
        assert reads == [spill.rows_reread] and 0 < spill.rows_reread < valid.sum() / 2


def test_scoring_reads_again_only_the_chunks_holding_rows_the_detector_cannot_decide(tmp_path, monkeypatch):
    # 70 classes, the default 4 entries a row: flat rows can have class 0 (a low threshold) as a
    # candidate outside their entries; the second pass streams only the chunks holding them and
    # gives the reference's flags.
    import dprune.scoring.api as api
    from dprune.scoring.confident_reference import confident_learning_reference
    from dprune.scoring.stats import compute_stats

    rng = np.random.default_rng(3)
    N, C = 400, 70
    y = rng.integers(1, C, N)
    y[rng.random(N) < 0.05] = 0
    top = np.where(y == 0, rng.integers(1, C, N), y)
    p = np.full((N, C), 0.1 / (C - 1)) * rng.uniform(0.5, 1.5, (N, C))
    p[np.arange(N), top] = 0.9
    p[y == 0, 0] = 0.02  # class 0's threshold: 0.02
    flat = np.zeros(N, bool)
    flat[:100] = (rng.random(100) < 0.2) & (y[:100] != 0)  # in the first 5 chunks only
    for i in np.flatnonzero(flat):  # four classes at 0.05, then class 0 (a candidate) at 0.025
        p[i] = 0.725 / (C - 5)
        p[i, rng.choice(np.arange(1, C), 4, replace=False)] = 0.05
        p[i, 0] = 0.025
    z = np.log(p / p.sum(1, keepdims=True)).astype(np.float32)[None]
    store = TrajectoryStore.create(tmp_path / "s", y, C, dtype="float32")
    store.begin_epoch(0)
    store.put(0, 0, z[0], np.ones(N, np.int32))
    store.complete_epoch(0)
    passes = []
    real = api.stream_stats_cpu

    def spy(*args, **kw):
        seen = passes.append([]) or passes[-1]
        for item in real(*args, **kw):
            seen.append(item[0])
            yield item

    monkeypatch.setattr(api, "stream_stats_cpu", spy)
    got, _ = score_store(TrajectoryStore.open(tmp_path / "s"), methods=["confident"], chunk_size=20, backend="numba")
    soft = compute_stats(torch.from_numpy(z), torch.ones(1, N, dtype=torch.int32), torch.from_numpy(y)).p_soft.numpy()
    want = confident_learning_reference(soft, y, np.ones(N, bool))
    np.testing.assert_array_equal(got["confident"], want["confident"])
    np.testing.assert_array_equal(got["confident_label"], want["confident_label"])
    assert len(passes) == 2 and len(passes[0]) == N // 20
    assert 0 < len(passes[1]) and set(passes[1]) <= {0, 20, 40, 60, 80}  # the chunks holding flat rows


def test_confident_spill_refuses_a_top_k_without_room_for_the_other_class(tmp_path):
    from dprune.scoring.confident import ConfidentSpill

    with pytest.raises(ValueError, match="top_k must be >= 2"):
        ConfidentSpill(np.zeros(3, np.int64), 4, tmp_path, top_k=1)


def test_a_sample_whose_logits_overflow_their_mean_is_not_judged_by_the_soft_label_detector():
    # Finite float32 logits whose epoch sum overflows: not 'nonfinite', but the soft label is NaN.
    # The detector leaves that sample out instead of letting a NaN into its class's threshold.
    t = synthetic_trajectory(300, 4, 3, noise_rate=0.2, seed=5)
    z = t["logits"].astype(np.float32).copy()
    z[:, 0, 1] = 3e38
    out = score_arrays(z, t["counts"], t["labels"], methods=["entropy", "confident"])
    assert not out["nonfinite"][0] and np.isnan(out["p_max"][0])
    assert not out["confident"][0] and np.isnan(out["label_margin"][0])
    counts = t["counts"].copy()
    counts[:, 0] = 0  # the same data with sample 0 unobserved: the same flags for the others
    ref = score_arrays(z, counts, t["labels"], methods=["entropy", "confident"])
    np.testing.assert_array_equal(out["confident"], ref["confident"])


@pytest.mark.parametrize("probs,field,filter_by", [("soft_label", "p_soft", "margin"), ("mean_softmax", "p_avg", "margin"),
                                                   ("soft_label", "p_soft", "noise_rate")])
def test_confident_detector_through_scoring_store_and_arrays(tmp_path, probs, field, filter_by):
    from dprune.scoring.confident import confident_learning
    from dprune.scoring.stats import compute_stats

    t = synthetic_trajectory(400, 5, 4, noise_rate=0.2, seed=2)
    params = {"confident": {"probs": probs, "filter_by": filter_by}}
    arrays = score_arrays(t["logits"], t["counts"], t["labels"], methods=["entropy", "confident"], params=params)
    st_ = compute_stats(torch.from_numpy(t["logits"]), torch.from_numpy(t["counts"]), torch.from_numpy(t["labels"]))
    valid = arrays["n_observed"] > 0
    direct = confident_learning(getattr(st_, field).numpy(), t["labels"], valid, filter_by=filter_by)
    np.testing.assert_array_equal(arrays["confident"], direct["confident"])
    other = confident_learning(getattr(st_, {"p_soft": "p_avg", "p_avg": "p_soft"}[field]).numpy(), t["labels"], valid,
                               filter_by=filter_by)
    assert not np.array_equal(other["label_margin"], arrays["label_margin"])  # the parameter chose the input
    # Through a store, chunked, with the numba kernel's rows (noise_rate reads them in a second
    # pass over the store, which must give the same rows): the same flags.
    store = TrajectoryStore.create(tmp_path / "s", t["labels"], 5, dtype="float32")
    for e in range(4):
        store.begin_epoch(e)
        store.put(e, 0, t["logits"][e], t["counts"][e])
        store.complete_epoch(e)
    streamed, _ = score_store(TrajectoryStore.open(tmp_path / "s"), methods=["confident"], chunk_size=33,
                              params=params)
    np.testing.assert_array_equal(streamed["confident"], arrays["confident"])
    np.testing.assert_allclose(streamed["label_margin"], arrays["label_margin"], rtol=1e-5, atol=1e-6)
    # On this synthetic data the flags find the flipped labels, and most suggestions are right.
    flipped = t["labels"] != t["true_labels"]
    f = arrays["confident"]
    precision, recall = (f & flipped).sum() / f.sum(), (f & flipped).sum() / flipped.sum()
    assert 2 * precision * recall / (precision + recall) > 0.8, (precision, recall)
    assert np.mean(arrays["confident_label"][f & flipped] == t["true_labels"][f & flipped]) > 0.9


def test_default_scoring_never_holds_the_mean_probabilities_of_all_samples(tmp_path):
    # Issue 22: the detector keeps each row's top classes in a file, not p-bar [N, C], so
    # memory is bounded by the chunk at any N (before, p-bar was held in memory up to 256 MB).
    import tracemalloc

    N, C, E = 60_000, 300, 2  # p-bar: 69 MiB; the spill is read back in 16 MiB chunks
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(tmp_path / "s", rng.integers(0, C, N), C)
    for e in range(E):
        store.begin_epoch(e)
        store.put(e, 0, rng.standard_normal((N, C), np.float32).astype(np.float16), np.ones(N, np.int32))
        store.complete_epoch(e)
    store.close()
    store = TrajectoryStore.open(tmp_path / "s")
    score_store(store, methods=["entropy", "confident"], chunk_size=1000)  # compiles, warms up
    tracemalloc.start()
    try:
        scores, _ = score_store(store, methods=["entropy", "confident"], chunk_size=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scores["confident"].any()
    assert peak < N * C * 4 / 2, f"peak {peak / 2**20:.0f} MiB, p-bar is {N * C * 4 / 2**20:.0f} MiB"
