"""How the default detector rule was chosen: F1 of flagging rules on the development setting.

The development setting (benchmarks/RESULTS.md, "The declared default"): one run of
``dprune train --dataset fashion-mnist --epochs 30 --batch-size 128 --label-noise 0.2
--noise-kind symmetric`` (seed 0), its first T = 1..6 recorded epochs.  Prints, per T, the F1
of each rule against the injected flips.  Output of the run behind the declaration:
``results/noisy/dev_detectors.txt``.

    python benchmarks/detector_dev.py RUN/trajectory
"""
import sys, json
import numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dprune.store import open_store
from dprune.scoring.confident import confident_learning, calibrated_joint
from _common import prf, auc

store = open_store(sys.argv[1])
truth = np.load(store.run_dir.parent / "label_noise.npz")
flipped, clean = truth["flipped"], truth["clean_labels"]
y = store.labels
N, C = store.n_samples, store.n_classes
logits, counts = store.read(0, N)
logits = logits.astype(np.float32)
def softmax(z):
    z = z - z.max(-1, keepdims=True); e = np.exp(z); return e / e.sum(-1, keepdims=True)
P = softmax(logits)  # [E, N, C]
res = {}
for T in range(1, min(store.epochs_completed, 6) + 1):
    pbar = P[:T].mean(0).astype(np.float32)
    valid = np.ones(N, bool)
    row = {}
    for rule in ("noise_rate", "self_confidence"):
        out = confident_learning(pbar, y, valid, filter_by=rule)
        f = out["confident"]; rel = out["confident_relabel"]
        row[rule] = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in prf(f, flipped).items()},
                     "relabel_n": int(rel.sum()), "relabel_right": round(float((out["confident_label"][rel] == clean[rel]).mean()), 4)}
    # new rule: raw joint per pair, margin ranking (noise_rate's ranking, the joint's own count)
    thr = np.array([pbar[y == j, j].mean() for j in range(C)])
    cand = pbar >= thr[None, :] - 1e-6
    masked = np.where(cand, pbar, -1)
    conf = np.where(cand.any(1), masked.argmax(1), -1)
    has = conf >= 0
    joint = np.bincount(y[has] * C + conf[has], minlength=C * C).reshape(C, C)
    other = pbar.copy(); other[np.arange(N), y] = -1
    oth = other.argmax(1)
    py = pbar[np.arange(N), y]; po = other.max(1)
    margin = py - po
    flag = np.zeros(N, bool)
    for k in range(C):
        rows = np.flatnonzero(y == k)
        for j in range(C):
            if j == k or joint[k, j] == 0: continue
            m = pbar[rows, j] - pbar[rows, k]
            flag[rows[np.argsort(-m, kind="stable")[: joint[k, j]]]] = True
    flag &= ~(py + 1e-6 > po)
    row["joint_margin"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in prf(flag, flipped).items()}
    # the off-diagonal joint directly (cleanlab's 'confident_learning' filter)
    cl = has & (conf != y)
    row["joint_offdiag"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in prf(cl, flipped).items()}
    # count from raw off-diagonal, rank by label margin globally
    n = int(joint.sum() - np.trace(joint))
    g = np.zeros(N, bool); g[np.argsort(margin, kind="stable")[:n]] = True
    row["global_margin_rawcount"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in prf(g, flipped).items()}
    row["auroc"] = {"margin": round(auc(-margin, flipped)["auroc"], 4), "p_label": round(auc(-py, flipped)["auroc"], 4)}
    row["n_offdiag"] = n
    sugg_right = float((oth[flipped] == clean[flipped]).mean())
    row["argmax_other_right_on_flips"] = round(sugg_right, 4)
    res[f"T{T}"] = row
    print(f"T{T}", json.dumps(row))

print("---- class-conditional counts")
for T in range(1, min(store.epochs_completed, 6) + 1):
    pbar = P[:T].mean(0).astype(np.float32)
    thr = np.array([pbar[y == j, j].mean() for j in range(C)])
    cand = pbar >= thr[None, :] - 1e-6
    conf = np.where(cand.any(1), np.where(cand, pbar, -1).argmax(1), -1)
    has = conf >= 0
    joint = np.bincount(y[has] * C + conf[has], minlength=C * C).reshape(C, C)
    other = pbar.copy(); other[np.arange(N), y] = -1
    py = pbar[np.arange(N), y]; po = other.max(1)
    out = {}
    for name, key in (("v1_class_selfconf", py), ("v2_class_margin", py - po)):
        f = np.zeros(N, bool)
        for k in range(C):
            rows = np.flatnonzero(y == k)
            n_k = int(joint[k].sum() - joint[k, k])
            f[rows[np.argsort(key[rows], kind="stable")[:n_k]]] = True
        out[name] = round(prf(f, flipped)["f1"], 4), int(f.sum())
    # v3: calibrated row counts (cleanlab's calibration) with within-class self-confidence ranking
    q = calibrated_joint(joint, np.bincount(y, minlength=C))
    f = np.zeros(N, bool)
    for k in range(C):
        rows = np.flatnonzero(y == k); n_k = int(q[k].sum() - q[k, k])
        f[rows[np.argsort(py[rows], kind="stable")[:n_k]]] = True
    out["v3_calib_class_selfconf"] = round(prf(f, flipped)["f1"], 4), int(f.sum())
    print(f"T{T}", out)

print("---- global count (raw off-diagonal), ranking p_label - a * p_other_max")
for T in (2, 3, 4, 6):
    pbar = P[:T].mean(0).astype(np.float32)
    thr = np.array([pbar[y == j, j].mean() for j in range(C)])
    cand = pbar >= thr[None, :] - 1e-6
    conf = np.where(cand.any(1), np.where(cand, pbar, -1).argmax(1), -1)
    has = conf >= 0
    n = int((has & (conf != y)).sum())
    other = pbar.copy(); other[np.arange(N), y] = -1
    py = pbar[np.arange(N), y]; po = other.max(1)
    out = {}
    for a in (0.0, 0.25, 0.5, 1.0):
        s = py - a * po
        f = np.zeros(N, bool); f[np.argsort(s, kind="stable")[:n]] = True
        out[a] = round(prf(f, flipped)["f1"], 4)
    # the same rankings with the true count (how much is the count)
    f = np.zeros(N, bool); f[np.argsort(py, kind="stable")[:int(flipped.sum())]] = True
    out["p_label@true_count"] = round(prf(f, flipped)["f1"], 4)
    print(f"T{T} n={n}", out)
