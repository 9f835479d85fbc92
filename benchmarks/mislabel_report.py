"""The report of ``mislabel_detection.py``, from its cell files alone.

Keys: ``detect/NOISE/seedS/TT``, ``threshold/NOISE/seedS/TT`` (AUM against threshold samples, a
recording of its own), ``cleanlab/NOISE/seedS``, ``retrain/NOISE/seedS/VARIANT``.
"""
from __future__ import annotations

import json
from pathlib import Path

from _common import fmt_pm, mean_std

VARIANTS = {"noisy": "noisy labels, all samples", "oracle_remove": "oracle: the true flips removed",
            "random_remove": "random removal (as many as confident flags)",
            "confident_remove": "dprune confident: flagged removed",
            "selfconf_remove": "dprune confident, self_confidence: flagged removed",
            "argmax_remove": "dprune argmax rule: flagged removed",
            "cleanlab_remove": "cleanlab K-fold: flagged removed",
            "confident_relabel": "dprune confident: relabelled (removed where no agreed label)",
            "selfconf_relabel": "dprune confident, self_confidence: relabelled (removed where no agreed label)",
            "argmax_relabel": "dprune argmax rule: relabelled", "cleanlab_relabel": "cleanlab K-fold: relabelled to its argmax",
            "clean": "clean labels (the ceiling)"}


def write_report(cells_obj) -> str:
    cells, cfg = cells_obj.all(), cells_obj.config
    out_dir = Path(cells_obj.dir)
    det, thr, cl, ret = {}, {}, {}, {}
    for key, v in cells.items():
        p = key.split("/")
        if p[0] in ("detect", "threshold"):
            (det if p[0] == "detect" else thr).setdefault((p[1], int(p[3][1:])), {})[int(p[2][4:])] = v
        elif p[0] == "cleanlab":
            cl.setdefault(p[1], {})[int(p[2][4:])] = v
        elif p[0] == "retrain":
            ret.setdefault((p[1], p[3]), {})[int(p[2][4:])] = v
    noises = sorted({k[0] for k in det} | set(cl))
    lines = [f"# Label cleaning: {cfg['dataset']}" + (f", {cfg['n_train']:,} training images" if cfg.get("n_train") else
                                                     ", all training images"), "",
             f"`{cfg['model']}`, batch {cfg['batch_size']}, lr {cfg['lr']}. dprune reads the first T epochs of one "
             f"normal {cfg['epochs']}-epoch run on the noisy labels; cleanlab trains {cfg['folds']} folds of "
             f"{cfg['cv_epochs']} epochs each on {cfg['folds'] - 1}/{cfg['folds']} of the data and flags with "
             f"`find_label_issues` on the out-of-sample probabilities. Detection: seeds {cfg['seeds']} (mean ± std); "
             f"retraining: seeds {cfg['retrain_seeds']}, E = {cfg['epochs']} epochs from scratch, T = "
             f"{cfg['retrain_T']} for dprune's detectors. Cost: sample-epochs of training each detector needs.", ""]
    verdicts = []
    for nz in noises:
        clv = cl.get(nz, {})
        cl_f1 = mean_std(v["flags"]["f1"] for v in clv.values())
        cl_cost = mean_std(v["cost"] for v in clv.values())[0]
        rows = ["| detector | T | flagged | precision | recall | F1 | suggested label right | cost | x cleanlab's cost |",
                "|---|---|---|---|---|---|---|---|---|"]
        best = None
        groups = [(T, det[(nz, T)]) for T in sorted(t for n, t in det if n == nz)] + \
                 [(T, thr[(nz, T)]) for T in sorted(t for n, t in thr if n == nz)]
        for T, vs in groups:
            names = list(next(iter(vs.values()))["flags"])
            for d in names:
                g = lambda f, d=d: mean_std(v["flags"][d].get(f, float("nan")) for v in vs.values())  # noqa: E731
                cost = mean_std(v["cost"] for v in vs.values())[0]
                f1 = g("f1")
                rows.append(f"| dprune {d} | {T} | {g('flagged')[0]:.0f} | {fmt_pm(*g('precision'))} | "
                            f"{fmt_pm(*g('recall'))} | {fmt_pm(*f1)} | {fmt_pm(*g('suggestion_right'))} | {cost:,.0f} | "
                            + (f"{cost / cl_cost:.2f} |" if clv else "(no cleanlab cell yet) |"))
                if cost <= cl_cost / 5 and (best is None or f1[0] > best[0]):
                    best = (f1[0], d, T, cost)
        if clv:
            g = lambda f: mean_std(v["flags"][f] for v in clv.values())  # noqa: E731
            rows.append(f"| cleanlab, {cfg['folds']}-fold | - | {g('flagged')[0]:.0f} | {fmt_pm(*g('precision'))} | "
                        f"{fmt_pm(*g('recall'))} | {fmt_pm(*g('f1'))} | "
                        f"{fmt_pm(*mean_std(v['suggestion_right'] for v in clv.values()))} | {cl_cost:,.0f} | 1.00 |")
        auc_rows = ["| score | T | AUROC | average precision |", "|---|---|---|---|"]
        for T, vs in groups:
            for k in next(iter(vs.values()))["scores"]:
                auc_rows.append(f"| dprune {k} | {T} | {fmt_pm(*mean_std(v['scores'][k]['auroc'] for v in vs.values()))} "
                                f"| {fmt_pm(*mean_std(v['scores'][k]['ap'] for v in vs.values()))} |")
        for k in (next(iter(clv.values()))["scores"] if clv else {}):
            auc_rows.append(f"| cleanlab {k} | - | {fmt_pm(*mean_std(v['scores'][k]['auroc'] for v in clv.values()))} | "
                            f"{fmt_pm(*mean_std(v['scores'][k]['ap'] for v in clv.values()))} |")
        if best and clv:
            diff = 100 * (best[0] - cl_f1[0])
            verdicts.append(f"- {nz}: dprune's best detector within 1/5 of cleanlab's cost (`{best[1]}`, T = {best[2]}, "
                            f"{best[3] / cl_cost:.2f}x) reaches F1 {100 * best[0]:.1f} against cleanlab's "
                            f"{100 * cl_f1[0]:.1f}: **goal {'met' if diff >= 0 else 'not met'}** ({diff:+.1f} points).")
        ret_rows = ["| training set | samples | labels right (%) | relabelled | test top-1 (%) "
                    "| Δ vs noisy labels, per seed (pp) |", "|---|---|---|---|---|---|"]
        noisy_acc = {s: x["acc"] for s, x in ret.get((nz, "noisy"), {}).items()}
        for v in list(VARIANTS):
            key = ("all", v) if v == "clean" else (nz, v)
            if key not in ret:
                continue
            vs = ret[key]
            ret_rows.append(f"| {VARIANTS[v]} | {mean_std(x['n_kept'] for x in vs.values())[0]:,.0f} | "
                            f"{fmt_pm(*mean_std(x.get('labels_right', 1.0) for x in vs.values()))} | "
                            f"{mean_std(x.get('relabelled', 0) for x in vs.values())[0]:,.0f} | "
                            f"{fmt_pm(*mean_std(x['acc'] for x in vs.values()))} | "
                            + " ".join(f"{100 * (x['acc'] - noisy_acc[s]):+.2f}" for s, x in sorted(vs.items())
                                       if s in noisy_acc and v != "noisy") + " |")
        lines += [f"## {nz}", "", "### Detection of the flipped labels (%)", "", *rows, "", "### Continuous scores",
                  "", *auc_rows, "", "### Retraining with the same action for every detector", "", *ret_rows, ""]
        thr_cells = [(key, c) for key, seeds in thr.items() if key[0] == nz for c in seeds.items()]
        if thr_cells:
            seed, v = thr_cells[0][1]
            lines += [f"`aum, threshold samples` reads a recording of its own (seed {seed}) with {v['n_threshold']:,} "
                      f"threshold samples in a fake class (Pleiss et al.), which it cannot judge: their flips count as "
                      f"missed. That run's final top-1: {100 * v['final_acc_of_run']:.2f}%.", ""]
    runs = out_dir / "runs.json"
    mach = []
    if runs.exists():
        for r in json.loads(runs.read_text()):
            m = r["machine"]
            mach.append(f"- `{r['command']}` started {r['started']} on {m['cpu']} ({m['cores']} cores, load average "
                        f"{', '.join(f'{x:.1f}' for x in m['load_average'])})")
    text = "\n".join(["\n".join(lines[:3]), "", "## Verdict", "", "Goal: F1 at least cleanlab's, at no more than 1/5 of "
                      "its training cost.", "", *verdicts, "", *lines[3:], "## Runs", "", *mach]) + "\n"
    (out_dir / "report.md").write_text(text)
    return text
