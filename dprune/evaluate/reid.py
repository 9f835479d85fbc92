"""ReID evaluation: mAP, CMC, mINP under the standard protocol, computed in query blocks.

Protocol (Market-1501 / torchreid / fast-reid): each query ranks the gallery by distance;
gallery images of the query's identity taken by the query's camera are removed from its
ranking (they are near-duplicates); a query left with no true match in the gallery is
skipped and counted.  Per valid query, with ``r_1 < ... < r_K`` the 0-based ranks of its
K true matches in the filtered ranking:

- AP = (1/K) sum_k k / (r_k + 1)
- CMC@n = 1 if r_1 < n
- INP = K / (r_K + 1)  (the "inverse negative penalty" of AGW, Ye et al. TPAMI 2021)

mAP, mINP and the CMC curve are means over valid queries.  Ties in distance are broken by
gallery order (a stable sort), in both implementations.

MSMT17 has 11,659 queries x 82,161 gallery images: a dense float32 distance matrix is
3.8 GB and its argsort 7.7 GB.  :func:`evaluate_reid` never holds more than a block of
queries x G, and sorts only the entries that can change a query's metrics (those ranked
no lower than its last true match).  :func:`evaluate_reid_dense_numpy` is the plain dense
reference the tests and the benchmark compare it with.

Legend: Q queries, G gallery images, D feature dimension, B queries in a block, M
(query, gallery) pairs that are sorted in a block, P true matches in a block.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .features import ReIDFeatures, extract_features

__all__ = ["METRICS", "ReIDFeatures", "evaluate_reid", "evaluate_reid_dense_numpy", "extract_features"]

METRICS = ("euclidean", "cosine")
# Elementwise passes over whole feature arrays go this many rows at a time, so they need
# no [N, D] temporary (the MSMT17 gallery is 673 MB in float32).
_CHUNK_ROWS = 8192


# --------------------------------------------------------------------------- validation

def _as_array(x: Any) -> torch.Tensor | np.ndarray:
    return x if isinstance(x, torch.Tensor) else np.asarray(x)


def _shape(x: torch.Tensor | np.ndarray) -> tuple:
    return tuple(x.shape)


def _check_inputs(qf, gf, q_pids, g_pids, q_cams, g_cams, metric: str, max_rank: int) -> None:
    """Check shapes, dtypes and options once, with messages that name the shapes.

    Arrays must already be tensors or ndarrays (:func:`_as_array`).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}")
    q_shape, g_shape = _shape(qf), _shape(gf)
    if len(q_shape) != 2 or len(g_shape) != 2:
        raise ValueError(f"features must be 2-D [Q, D] and [G, D]; got query {q_shape} "
                         f"and gallery {g_shape}")
    if q_shape[1] != g_shape[1]:
        raise ValueError(f"query features {q_shape} and gallery features {g_shape} differ "
                         f"in dimension")
    if q_shape[0] == 0 or g_shape[0] == 0:
        raise ValueError(f"need at least one query and one gallery image; got query "
                         f"{q_shape} and gallery {g_shape}")
    for name, feats in (("query", qf), ("gallery", gf)):
        if not (torch.is_floating_point(feats) if isinstance(feats, torch.Tensor)
                else np.issubdtype(feats.dtype, np.floating)):
            raise ValueError(f"{name} features must be floating point, got dtype {feats.dtype}")
        chunks = torch.as_tensor(feats).split(_CHUNK_ROWS)
        if not all(bool(torch.isfinite(c).all()) for c in chunks):
            raise ValueError(f"{name} features contain NaN or infinite values")
    for name, arr, n, side in (("q_pids", q_pids, q_shape[0], "query"),
                               ("q_cams", q_cams, q_shape[0], "query"),
                               ("g_pids", g_pids, g_shape[0], "gallery"),
                               ("g_cams", g_cams, g_shape[0], "gallery")):
        if _shape(arr) != (n,):
            raise ValueError(f"{name} has shape {_shape(arr)}, expected ({n},) to match the "
                             f"{side} features {q_shape if side == 'query' else g_shape}")
        dtype = arr.dtype
        is_int = (not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
                  if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.integer))
        if not is_int:
            raise ValueError(f"{name} must be integers, got dtype {dtype}")


def _compute_dtype(qf, gf) -> torch.dtype:
    """float64 if either side is float64 (exact comparisons in tests), else float32."""
    dtypes = {torch.as_tensor(x[:0]).dtype for x in (qf, gf)}
    return torch.float64 if torch.float64 in dtypes else torch.float32


# --------------------------------------------------------------------------- metrics

def _summarise(ap_Q: np.ndarray, inp_Q: np.ndarray, first_Q: np.ndarray,
               max_rank: int) -> dict:
    """Means over valid queries (``first_Q >= 0``) of per-query AP, INP and CMC."""
    valid_Q = first_Q >= 0
    n_valid = int(valid_Q.sum())
    if n_valid == 0:
        raise ValueError(f"none of the {len(first_Q)} queries has a true match in the "
                         f"gallery from another camera; nothing to evaluate")
    first_V = first_Q[valid_Q]
    # A rank past max_rank (or past the gallery's end) counts in no CMC bin below it.
    hits = np.bincount(np.minimum(first_V, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hits) / n_valid
    m_ap = float(ap_Q[valid_Q].mean())
    rank1 = float((first_V < 1).mean())
    return {
        "mAP": m_ap,
        "mINP": float(inp_Q[valid_Q].mean()),
        "rank1": rank1,
        "rank5": float((first_V < 5).mean()),
        "rank10": float((first_V < 10).mean()),
        "mAP_rank1_mean": (m_ap + rank1) / 2,
        "cmc": [float(c) for c in cmc],
        "num_queries": int(len(first_Q)),
        "num_valid_queries": n_valid,
        "num_skipped_queries": int(len(first_Q) - n_valid),
    }


class _Gallery(NamedTuple):
    """The gallery on the device: features, ids and cameras, plus the gallery grouped by identity."""

    feats_GD: torch.Tensor
    """In the compute dtype; L2-normalised for ``cosine``."""
    sq_G: torch.Tensor
    """Squared norms of ``feats_GD``."""
    pids_G: torch.Tensor
    cams_G: torch.Tensor
    by_pid_G: torch.Tensor
    """Gallery indices sorted by pid (stable: increasing index within an identity)."""
    sorted_pids_G: torch.Tensor
    """``pids_G[by_pid_G]``"""

    @classmethod
    def build(cls, gf, g_pids, g_cams, metric: str, dev: torch.device, dtype: torch.dtype) -> "_Gallery":
        feats_GD = torch.as_tensor(gf).to(dev, dtype)
        if metric == "cosine":
            feats_GD = F.normalize(feats_GD, dim=1)
        sq_G = torch.cat([(c * c).sum(1) for c in feats_GD.split(_CHUNK_ROWS)])
        pids_G = torch.as_tensor(g_pids).to(dev, torch.int64)
        by_pid_G = torch.sort(pids_G, stable=True).indices
        return cls(feats_GD, sq_G, pids_G, torch.as_tensor(g_cams).to(dev, torch.int64), by_pid_G,
                   pids_G[by_pid_G])

    def distances(self, q_BD: torch.Tensor, metric: str) -> torch.Tensor:
        """Distances [B, G] of a block of queries (in the compute dtype, on the device)."""
        if metric == "cosine":
            q_BD = F.normalize(q_BD, dim=1)
            return torch.addmm(torch.ones_like(self.sq_G)[None, :], q_BD, self.feats_GD.T, alpha=-1)
        dist_BG = torch.addmm(self.sq_G[None, :], q_BD, self.feats_GD.T, alpha=-2)
        return dist_BG.add_((q_BD * q_BD).sum(1)[:, None]).clamp_min_(0)


def _rank_block(dist_BG: torch.Tensor, q_pids_B: torch.Tensor, q_cams_B: torch.Tensor,
                gallery: _Gallery) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query AP, INP and rank of the first true match (-1: no valid match).

    Only O(block) passes touch all G entries (one comparison, one nonzero); the rest is
    linear in the number of pairs that can influence the metrics.
    """
    B, G = dist_BG.shape
    dev = dist_BG.device
    # Same-identity gallery entries, found through the pid-sorted gallery instead of a
    # [B, G] comparison: S pairs in all, a few dozen per query.
    start_B = torch.searchsorted(gallery.sorted_pids_G, q_pids_B, side="left")
    n_same_B = torch.searchsorted(gallery.sorted_pids_G, q_pids_B, side="right") - start_B
    row_S = torch.repeat_interleave(torch.arange(B, device=dev), n_same_B)
    offset_S = torch.arange(len(row_S), device=dev) - (n_same_B.cumsum(0) - n_same_B)[row_S]
    col_S = gallery.by_pid_G[start_B[row_S] + offset_S]
    removed_S = gallery.cams_G[col_S] == q_cams_B[row_S]
    row_P, col_P = row_S[~removed_S], col_S[~removed_S]

    # Entries ranked after a query's last true match cannot change its AP, CMC or INP, so
    # only the others are sorted: for trained features, a few hundred of the G entries.
    last_B = torch.full((B,), float("-inf"), dtype=dist_BG.dtype, device=dev)
    last_B.scatter_reduce_(0, row_P, dist_BG[row_P, col_P], reduce="amax")
    relevant_BG = dist_BG <= last_B[:, None]
    # Same identity and camera: out of the ranking altogether.
    relevant_BG[row_S[removed_S], col_S[removed_S]] = False
    flat_M = relevant_BG.view(-1).nonzero().squeeze(1)  # row-major: gallery order in a row
    del relevant_BG
    row_M = flat_M // G
    col_M = flat_M - row_M * G
    # Two stable sorts order the pairs by (query, distance, gallery index): the ranking a
    # stable argsort of the whole row gives, ties included.
    order_M = torch.sort(dist_BG.view(-1)[flat_M], stable=True).indices
    order_M = order_M[torch.sort(row_M[order_M], stable=True).indices]
    row_M, col_M = row_M[order_M], col_M[order_M]
    per_row_B = torch.bincount(row_M, minlength=B)
    rank_M = torch.arange(len(row_M), device=dev) - (per_row_B.cumsum(0) - per_row_B)[row_M]

    is_pos_M = gallery.pids_G[col_M] == q_pids_B[row_M]
    row_P, rank_P = row_M[is_pos_M], rank_M[is_pos_M].to(torch.float64)
    n_pos_B = torch.bincount(row_P, minlength=B)
    k_P = torch.arange(1, len(row_P) + 1, device=dev) - (n_pos_B.cumsum(0) - n_pos_B)[row_P]
    ap_B = torch.zeros(B, dtype=torch.float64, device=dev).index_add_(0, row_P, k_P / (rank_P + 1))
    ap_B /= n_pos_B.clamp_min(1)
    first_B = torch.full((B,), -1, dtype=torch.int64, device=dev)
    is_first_P = k_P == 1
    first_B[row_P[is_first_P]] = rank_P[is_first_P].to(torch.int64)
    last_rank_B = torch.zeros(B, dtype=torch.float64, device=dev)
    is_last_P = k_P == n_pos_B[row_P]
    last_rank_B[row_P[is_last_P]] = rank_P[is_last_P]
    inp_B = n_pos_B / (last_rank_B + 1)
    return ap_B, inp_B, first_B


def evaluate_reid(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    q_pids: torch.Tensor | np.ndarray,
    g_pids: torch.Tensor | np.ndarray,
    q_cams: torch.Tensor | np.ndarray,
    g_cams: torch.Tensor | np.ndarray,
    *,
    metric: str = "euclidean",
    block_size: int = 256,
    max_rank: int = 50,
    device: str | torch.device | None = None,
) -> dict:
    """Evaluate ReID features under the standard protocol, a block of queries at a time.

    Parameters
    ----------
    qf : tensor or ndarray, float [Q, D]
        Query features.
    gf : tensor or ndarray, float [G, D]
        Gallery features.
    q_pids, g_pids : tensor or ndarray, int [Q] and [G]
        Identities (gallery distractors: any id no query has, e.g. 0).
    q_cams, g_cams : tensor or ndarray, int [Q] and [G]
        Cameras.
    metric : {"euclidean", "cosine"}
        Squared Euclidean distance, or 1 - cosine similarity (features L2-normalised).
    block_size : int
        Queries per block.  Memory is O(block_size x G): about 40 bytes per entry in the
        worst case (random features), ~360 MB for 256 x 82,161; plus, on the device, a
        copy of the gallery unless it is already there in the compute dtype (always for
        ``cosine``, which normalises it).
    max_rank : int
        Length of the returned CMC curve.  Ranks past the gallery's end count as hits for
        every valid query (its true matches have all been seen by then).
    device : str or torch.device, optional
        Where distances are computed (``"cpu"``, ``"cuda"``); default: the device of
        ``qf`` if it is a tensor, else the CPU.  The gallery is copied there once.

    Returns
    -------
    dict
        ``mAP``, ``mINP``, ``rank1``, ``rank5``, ``rank10``, ``mAP_rank1_mean`` ((mAP +
        Rank-1) / 2), all fractions in [0, 1]; ``cmc`` (list of ``max_rank`` floats);
        ``num_queries``, ``num_valid_queries``, ``num_skipped_queries``.  Distances are
        computed in float64 if either feature array is float64, else in float32.

    Raises
    ------
    ValueError
        On mismatched shapes (the message names them), non-integer ids, non-finite
        features, an unknown metric, a non-positive ``block_size`` or ``max_rank``, or if
        no query has a valid match.
    """
    qf, gf, q_pids, g_pids, q_cams, g_cams = map(_as_array, (qf, gf, q_pids, g_pids, q_cams,
                                                              g_cams))
    _check_inputs(qf, gf, q_pids, g_pids, q_cams, g_cams, metric, max_rank)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if device is None:
        device = qf.device if isinstance(qf, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    dtype = _compute_dtype(qf, gf)

    gallery = _Gallery.build(gf, g_pids, g_cams, metric, dev, dtype)
    q_pids_Q = torch.as_tensor(q_pids).to(torch.int64)
    q_cams_Q = torch.as_tensor(q_cams).to(torch.int64)
    qf_QD = torch.as_tensor(qf)

    Q = qf_QD.shape[0]
    ap_Q, inp_Q = np.zeros(Q), np.zeros(Q)
    first_Q = np.full(Q, -1, dtype=np.int64)
    for s in range(0, Q, block_size):
        e = min(s + block_size, Q)
        dist_BG = gallery.distances(qf_QD[s:e].to(dev, dtype), metric)
        ap_B, inp_B, first_B = _rank_block(dist_BG, q_pids_Q[s:e].to(dev),
                                           q_cams_Q[s:e].to(dev), gallery)
        ap_Q[s:e], inp_Q[s:e], first_Q[s:e] = ap_B.cpu(), inp_B.cpu(), first_B.cpu()
    return _summarise(ap_Q, inp_Q, first_Q, max_rank)


def evaluate_reid_dense_numpy(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    *,
    metric: str = "euclidean",
    max_rank: int = 50,
) -> dict:
    """Dense NumPy reference of :func:`evaluate_reid` (torchreid's formulation).

    Builds the whole ``[Q, G]`` distance matrix and its stable argsort (12 bytes per
    entry in float32: 11.5 GB at MSMT17 scale), then walks the queries one by one.
    Parameters and result as in :func:`evaluate_reid` (no ``block_size``, CPU only).
    """
    qf, gf, q_pids, g_pids, q_cams, g_cams = (
        x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        for x in (qf, gf, q_pids, g_pids, q_cams, g_cams))
    _check_inputs(qf, gf, q_pids, g_pids, q_cams, g_cams, metric, max_rank)
    dtype = np.float64 if _compute_dtype(qf, gf) == torch.float64 else np.float32
    qf_QD, gf_GD = np.asarray(qf, dtype=dtype), np.asarray(gf, dtype=dtype)
    q_pids, g_pids = np.asarray(q_pids, np.int64), np.asarray(g_pids, np.int64)
    q_cams, g_cams = np.asarray(q_cams, np.int64), np.asarray(g_cams, np.int64)
    if metric == "cosine":
        qf_QD = qf_QD / np.maximum(np.linalg.norm(qf_QD, axis=1, keepdims=True), 1e-12)
        gf_GD = gf_GD / np.maximum(np.linalg.norm(gf_GD, axis=1, keepdims=True), 1e-12)
        dist_QG = qf_QD @ gf_GD.T
        dist_QG *= -1
        dist_QG += 1
    else:
        dist_QG = qf_QD @ gf_GD.T
        dist_QG *= -2
        dist_QG += (gf_GD * gf_GD).sum(1)[None, :]
        dist_QG += (qf_QD * qf_QD).sum(1)[:, None]
        np.maximum(dist_QG, 0, out=dist_QG)
    order_QG = np.argsort(dist_QG, axis=1, kind="stable")

    Q = len(q_pids)
    ap_Q, inp_Q = np.zeros(Q), np.zeros(Q)
    first_Q = np.full(Q, -1, dtype=np.int64)
    for q in range(Q):
        order_G = order_QG[q]
        keep = ~((g_pids[order_G] == q_pids[q]) & (g_cams[order_G] == q_cams[q]))
        matches = (g_pids[order_G][keep] == q_pids[q]).astype(np.int64)
        if not matches.any():
            continue
        hits_cum = matches.cumsum()
        first_Q[q] = int(np.argmax(matches))
        ap_Q[q] = (hits_cum / np.arange(1, len(matches) + 1) * matches).sum() / matches.sum()
        last = int(np.flatnonzero(matches)[-1])
        inp_Q[q] = hits_cum[last] / (last + 1)
    return _summarise(ap_Q, inp_Q, first_Q, max_rank)
