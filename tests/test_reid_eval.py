"""ReID evaluation: hand-computed cases, blocked == dense, feature extraction and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from dprune.data.reid import ReIDImageDataset, read_market1501
from dprune.data.reid_synth import make_synthetic_reid
from dprune.evaluate.reid import evaluate_reid, evaluate_reid_dense_numpy, extract_features
from dprune.evaluate.reid_cli import eval_reid

BOTH = pytest.mark.parametrize("evaluate", [evaluate_reid, evaluate_reid_dense_numpy],
                               ids=["blocked", "dense"])
SCALARS = ("mAP", "mINP", "rank1", "rank5", "rank10", "mAP_rank1_mean")


def _tiny_case(with_distractor=True):
    """Three queries, six gallery images, 1-D features (squared distances easy by hand).

    q0 (id 1, cam 0, x=0):   g5 0.0025 (distractor) < g0 0.01 (id 1 cam 0: REMOVED)
                             < g1 0.04 (id 2) < g2 0.09 (id 1 cam 1, HIT) < g3 0.16 (id 3)
                             < g4 0.25 (id 1 cam 2, HIT)
        filtered ranking: g5 g1 [g2] g3 [g4] -> hits at ranks 3 and 5
        AP = (1/3 + 2/5) / 2 = 11/30, first hit rank 3, INP = 2/5
    q1 (id 2, cam 1): its only gallery image g1 has cam 1 -> removed -> no valid match,
        skipped.
    q2 (id 3, cam 1, x=0.4): g3 (id 3, cam 0) is at distance 0 -> AP = 1, rank 1, INP = 1.

    mAP = (11/30 + 1) / 2 = 41/60, Rank-1 = 1/2, Rank-5 = 1, mINP = (2/5 + 1) / 2 = 7/10.
    """
    gf = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.05]])
    g_pids = np.array([1, 2, 1, 3, 1, 0])
    g_cams = np.array([0, 1, 1, 0, 2, 1])
    if not with_distractor:
        gf, g_pids, g_cams = gf[:5], g_pids[:5], g_cams[:5]
    qf = np.array([[0.0], [0.2], [0.4]])
    return qf, gf, np.array([1, 2, 3]), g_pids, np.array([0, 1, 1]), g_cams


@BOTH
def test_hand_computed_case(evaluate):
    r = evaluate(*_tiny_case())
    assert r["mAP"] == pytest.approx(41 / 60)
    assert r["rank1"] == pytest.approx(0.5)
    assert r["rank5"] == r["rank10"] == pytest.approx(1.0)
    assert r["mINP"] == pytest.approx(0.7)
    assert r["mAP_rank1_mean"] == pytest.approx((41 / 60 + 0.5) / 2)
    # CMC: q2 hits at rank 1, q0 at rank 3.
    assert r["cmc"][:4] == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert len(r["cmc"]) == 50 and r["cmc"][-1] == 1.0
    assert (r["num_queries"], r["num_valid_queries"], r["num_skipped_queries"]) == (3, 2, 1)


@BOTH
def test_distractor_only_pushes_true_matches_down(evaluate):
    # Without g5, q0's ranking is g1 [g2] g3 [g4]: AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4.
    r = evaluate(*_tiny_case(with_distractor=False))
    assert r["mAP"] == pytest.approx((0.5 + 1) / 2)
    assert r["mINP"] == pytest.approx((0.5 + 1) / 2)
    assert r["cmc"][:2] == pytest.approx([0.5, 1.0])


@BOTH
def test_same_camera_same_id_is_removed_not_counted(evaluate):
    # Query id 1 cam 0.  Gallery: g0 id 1 cam 0 at distance 0 (removed), g1 id 2 at 1,
    # g2 id 1 cam 1 at 4.  Filtered ranking g1 [g2]: AP = 1/2, Rank-1 = 0.  Were g0 kept,
    # AP would be 1.
    qf, gf = np.array([[0.0]]), np.array([[0.0], [1.0], [2.0]])
    r = evaluate(qf, gf, np.array([1]), np.array([1, 2, 1]), np.array([0]), np.array([0, 1, 1]))
    assert r["mAP"] == pytest.approx(0.5) and r["rank1"] == 0.0 and r["rank5"] == 1.0


@BOTH
def test_ties_keep_gallery_order(evaluate):
    # Negative g0 and true match g1 at the same distance: a stable sort ranks g0 first
    # (AP 1/2); swapped gallery order ranks the match first (AP 1).
    qf, gf = np.array([[0.0]]), np.array([[1.0], [-1.0]])
    args = (np.array([1]), np.array([2, 1]), np.array([0]), np.array([1, 1]))
    assert evaluate(qf, gf, *args)["mAP"] == pytest.approx(0.5)
    args = (np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))
    assert evaluate(qf, gf, *args)["mAP"] == pytest.approx(1.0)


@BOTH
def test_cosine_versus_euclidean(evaluate):
    # g0 points the query's way but is long: far in Euclidean terms (81 + 1 = 82), close in
    # angle (cos 0.995).  g1 (other id) is Euclidean-close (0.25 + 0.25) but at 45 degrees.
    qf = np.array([[1.0, 0.0]])
    gf = np.array([[10.0, 1.0], [0.5, 0.5]])
    args = (np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))
    assert evaluate(qf, gf, *args, metric="euclidean")["mAP"] == pytest.approx(0.5)
    assert evaluate(qf, gf, *args, metric="cosine")["mAP"] == pytest.approx(1.0)
    # Cosine ignores feature norms.
    scaled = evaluate(qf * 3, gf * np.array([[0.1], [7.0]]), *args, metric="cosine")
    assert scaled["mAP"] == pytest.approx(1.0)


def _random_case(rng, Q, G, D, n_ids, n_cams, dtype=np.float64):
    return (rng.standard_normal((Q, D)).astype(dtype), rng.standard_normal((G, D)).astype(dtype),
            rng.integers(0, n_ids, Q), rng.integers(0, n_ids, G),
            rng.integers(0, n_cams, Q), rng.integers(0, n_cams, G))


def _assert_same(a, b, tol):
    for k in SCALARS:
        assert a[k] == pytest.approx(b[k], abs=tol), k
    assert np.allclose(a["cmc"], b["cmc"], atol=tol, rtol=0)
    assert a["num_skipped_queries"] == b["num_skipped_queries"]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blocked_equals_dense(metric, block_size):
    rng = np.random.default_rng(block_size)
    # Q = 64 and 7 does not divide it; 1000 > Q is a single block.
    case = _random_case(rng, 64, 700, 16, n_ids=60, n_cams=3)
    case[2][[0, 9, 30]] = 999  # identities absent from the gallery: skipped queries
    dense = evaluate_reid_dense_numpy(*case, metric=metric, max_rank=20)
    blocked = evaluate_reid(*case, metric=metric, block_size=block_size, max_rank=20)
    assert dense["num_skipped_queries"] > 0
    _assert_same(blocked, dense, 1e-12)


def test_blocked_equals_dense_float32_and_tensors():
    case = _random_case(np.random.default_rng(0), 50, 400, 32, 20, 4, dtype=np.float32)
    dense = evaluate_reid_dense_numpy(*case)
    blocked = evaluate_reid(*(torch.from_numpy(x) for x in case), block_size=16)
    # float32 distances from two BLAS libraries may order near-ties differently.
    _assert_same(blocked, dense, 1e-3)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_blocked_equals_dense_with_many_ties(data):
    """Integer features on a 3x3 grid: most distances tie, so tie-breaking is exercised.

    Euclidean only: squared distances of small integers are exact in float64 in both
    implementations, so a tie is a tie in both.  Cosine similarities of such vectors are
    irrational (3 / sqrt(10) for (1, 1) and (2, 1), and for (1, 1) and (1, 2)), and the
    two BLAS paths round mathematically equal ones to different last bits, so the order of
    "tied" cosine distances is not defined (cosine is checked on untied features above).
    """
    Q = data.draw(st.integers(1, 8))
    G = data.draw(st.integers(1, 25))
    ints = st.integers(0, 2)
    qf = np.array(data.draw(st.lists(st.tuples(ints, ints), min_size=Q, max_size=Q)), float)
    gf = np.array(data.draw(st.lists(st.tuples(ints, ints), min_size=G, max_size=G)), float)
    ids = st.lists(st.integers(0, 3), min_size=Q, max_size=Q)
    g_ids = st.lists(st.integers(0, 3), min_size=G, max_size=G)
    args = (qf, gf, np.array(data.draw(ids)), np.array(data.draw(g_ids)),
            np.array(data.draw(ids)), np.array(data.draw(g_ids)))
    metric = "euclidean"
    block_size = data.draw(st.integers(1, 9))
    try:
        dense = evaluate_reid_dense_numpy(*args, metric=metric, max_rank=10)
    except ValueError:  # no query with a valid match: both must say so
        with pytest.raises(ValueError, match="nothing to evaluate"):
            evaluate_reid(*args, metric=metric, block_size=block_size, max_rank=10)
        return
    _assert_same(evaluate_reid(*args, metric=metric, block_size=block_size, max_rank=10),
                 dense, 1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocked_on_cuda_equals_dense():
    case = _random_case(np.random.default_rng(1), 300, 5000, 64, 100, 6)
    dense = evaluate_reid_dense_numpy(*case)
    _assert_same(evaluate_reid(*case, block_size=37, device="cuda"), dense, 1e-12)
    gpu_case = [torch.from_numpy(x).cuda() for x in case]
    _assert_same(evaluate_reid(*gpu_case, block_size=64), dense, 1e-12)


@BOTH
@pytest.mark.parametrize("change,message", [
    (lambda a: {**a, "q_pids": a["q_pids"][:2]}, r"q_pids has shape \(2,\), expected \(3,\)"),
    (lambda a: {**a, "g_cams": a["g_cams"][:, None]}, r"g_cams has shape \(6, 1\)"),
    (lambda a: {**a, "gf": np.zeros((6, 2))}, r"\(3, 1\) .* \(6, 2\) differ in dimension"),
    (lambda a: {**a, "qf": np.zeros(3)}, r"2-D .* query \(3,\)"),
    (lambda a: {**a, "qf": np.zeros((0, 1))}, "at least one query"),
    (lambda a: {**a, "qf": np.array([[np.nan], [0.0], [1.0]])}, "NaN or infinite"),
    (lambda a: {**a, "qf": np.zeros((3, 1), dtype=np.int64)}, "floating point"),
    (lambda a: {**a, "g_pids": a["g_pids"].astype(float)}, "g_pids must be integers"),
    (lambda a: {**a, "metric": "manhattan"}, "euclidean, cosine"),
    (lambda a: {**a, "max_rank": 0}, "max_rank"),
    (lambda a: {**a, "q_pids": np.array([7, 8, 9])}, "nothing to evaluate"),
])
def test_invalid_inputs(evaluate, change, message):
    names = ("qf", "gf", "q_pids", "g_pids", "q_cams", "g_cams")
    args = change(dict(zip(names, _tiny_case())))
    with pytest.raises(ValueError, match=message):
        evaluate(**args)


def test_invalid_block_size():
    with pytest.raises(ValueError, match="block_size"):
        evaluate_reid(*_tiny_case(), block_size=0)


# --------------------------------------------------------------------------- features

class _BandColours(torch.nn.Module):
    """Mean colour of the three horizontal bands the synthetic identities are drawn with."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, (3, 1)).flatten(1)


def test_extract_features_and_end_to_end(tmp_path):
    make_synthetic_reid(tmp_path, "market1501", n_ids=16, n_cams=3, images_per_id=5, seed=1)
    ds = read_market1501(tmp_path)
    query = ReIDImageDataset(ds.query, ds.root)
    gallery = ReIDImageDataset(ds.gallery, ds.root)
    model = _BandColours().train()
    # A shuffling loader: the features still come back in dataset order.
    q = extract_features(model, DataLoader(query, batch_size=3, shuffle=True), "cpu")
    assert model.training  # mode restored
    assert q.features.shape == (len(query), 9) and q.features.dtype == np.float32
    assert q.indices.tolist() == list(range(len(query)))
    assert q.pids.tolist() == query.labels.tolist()
    assert q.camids.tolist() == query.camids.tolist()
    g = extract_features(model, DataLoader(gallery, batch_size=8), "cpu", flip=False)
    r = evaluate_reid(q.features, g.features, q.pids, g.pids, q.camids, g.camids)
    # Identities differ by band colour, so colour features retrieve them well.
    assert r["mAP"] > 0.8 and r["num_skipped_queries"] == 0


def test_extract_features_flip_averages_mirror_images():
    class Loader:
        def __iter__(self):
            images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
            yield images, torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([1, 0])

    model = torch.nn.Flatten()  # the feature is the image itself: [B, 6]
    out = extract_features(model, Loader(), "cpu", flip=True)
    images = torch.arange(12, dtype=torch.float32).view(2, 1, 2, 3)
    expected = ((images + images.flip(-1)) / 2).flatten(1).numpy()[[1, 0]]
    assert np.allclose(out.features, expected)
    assert out.pids.tolist() == [2, 1] and out.indices.tolist() == [0, 1]


def test_extract_features_errors():
    class Twice:
        def __iter__(self):
            for _ in range(2):
                one = torch.tensor([0])
                yield torch.zeros(1, 1, 2, 2), one + 1, one, one

    with pytest.raises(ValueError, match="more than once"):
        extract_features(torch.nn.Flatten(), Twice(), "cpu")
    with pytest.raises(ValueError, match=r"features \[B, D\]"):
        extract_features(torch.nn.Identity(), Twice(), "cpu")
    with pytest.raises(ValueError, match="no batch"):
        extract_features(torch.nn.Flatten(), [], "cpu")


# --------------------------------------------------------------------------- CLI

def _write_npz(path, drop=None, **override):
    qf, gf, q_pids, g_pids, q_cams, g_cams = _tiny_case()
    arrays = {**dict(query=qf, gallery=gf, query_ids=q_pids, gallery_ids=g_pids,
                     query_cams=q_cams, gallery_cams=g_cams), **override}
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return str(path)


def test_cli_json(tmp_path):
    path = _write_npz(tmp_path / "f.npz")
    result = CliRunner().invoke(eval_reid, [path, "--json", "--block-size", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["mAP"] == pytest.approx(41 / 60) and out["num_skipped_queries"] == 1
    assert out["metric"] == "euclidean"

    cosine = json.loads(CliRunner().invoke(eval_reid, [path, "--json", "--metric",
                                                       "cosine"]).output)
    assert cosine["metric"] == "cosine"


def test_cli_table(tmp_path):
    result = CliRunner().invoke(eval_reid, [_write_npz(tmp_path / "f.npz")])
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and " 68.33%" in result.output
    assert "Rank-1       50.00%" in result.output
    assert "2 evaluated, 1 skipped" in result.output


@pytest.mark.parametrize("kwargs,message", [
    ({"drop": "gallery_cams"}, "lacks array(s) gallery_cams"),
    ({"query_ids": np.array([1, 2])}, "q_pids has shape (2,), expected (3,)"),
])
def test_cli_errors_are_one_line(tmp_path, kwargs, message):
    result = CliRunner().invoke(eval_reid, [_write_npz(tmp_path / "f.npz", **kwargs)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_cli_missing_or_corrupt_file(tmp_path):
    result = CliRunner().invoke(eval_reid, [str(tmp_path / "none.npz")])
    assert result.exit_code != 0 and "not found" in result.output
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    result = CliRunner().invoke(eval_reid, [str(tmp_path / "bad.npz")])
    assert result.exit_code != 0 and "corrupt" in result.output
