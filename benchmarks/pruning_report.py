"""The report of ``pruning_quality.py``: verdicts, tables and figures, from the cell files alone.

Key layout (see ``pruning_quality.py``): ``record/SIZE/seedS``,
``retrain/SIZE/seedS/SCORER/TT/rRATIO/MODE``, ``pir/SIZE/seedS/entropy/TT/rRATIO``,
``overlap/SIZE/seedS/r0.5``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from _common import VERDICT_RULE, mean_std, paired_verdict, pyplot

ORDER = ("entropy", "el2n", "dual", "aum", "forgetting_full", "reverse_entropy", "random")


def _parse(cells: dict):
    rec, ret, pir, ovl = {}, {}, {}, {}
    for key, v in cells.items():
        part = key.split("/")
        if part[0] == "record":
            rec[(part[1], int(part[2][4:]))] = v
        elif part[0] == "retrain":
            size, seed, scorer, T, r, mode = part[1], int(part[2][4:]), part[3], int(part[4][1:]), float(part[5][1:]), part[6]
            ret[(size, seed, scorer, T, r, mode)] = v
        elif part[0] == "pir":
            pir[(part[1], int(part[2][4:]), int(part[4][1:]), float(part[5][1:]))] = v
        elif part[0] == "overlap":
            ovl[(part[1], int(part[2][4:]))] = v
    return rec, ret, pir, ovl


def paired(ret: dict, size: str, scorer: str, T: int, r: float, mode: str = "epochs") -> dict[int, float]:
    """{seed: acc(scorer) - acc(random)} over the seeds that have both (percentage points)."""
    out = {}
    for (sz, s, sc, t, rr, m), v in ret.items():
        if (sz, sc, t, rr, m) == (size, scorer, T, r, mode):
            rnd = ret.get((size, s, "random", T, r, mode))
            if rnd is None:  # random does not depend on T: any T of the same seed and ratio
                rnd = next((w for (sz2, s2, sc2, _, rr2, m2), w in ret.items()
                            if (sz2, s2, sc2, rr2, m2) == (size, s, "random", r, mode)), None)
            if rnd is not None:
                out[s] = 100 * (v["acc"] - rnd["acc"])
    return dict(sorted(out.items()))


def verdict(deltas: dict[int, float]) -> str:
    """The rule of :data:`_common.VERDICT_RULE` against random pruning."""
    if len(deltas) < 2:
        return "not testable (fewer than 2 seeds)"
    word, p = paired_verdict(list(deltas.values()))
    pos = sum(d > 0 for d in deltas.values())
    tail = f"p = {p:.3f}, {pos}/{len(deltas)} seeds up"
    return {"beats": f"beats random ({tail})", "worse": f"worse than random ({tail})"}.get(
        word, f"not shown ({tail})")


def _signs(d: dict[int, float]) -> str:
    return " ".join(f"{v:+.2f}" for v in d.values())


def write_report(cells_obj) -> str:
    cells = cells_obj.all()
    cfg = cells_obj.config
    out_dir = Path(cells_obj.dir)
    rec, ret, pir, ovl = _parse(cells)
    plan = cfg["plan_cells"]
    E, T0 = cfg["epochs"], plan["T"]
    main_size = "all"
    lines = [f"# Pruning quality in the paper's protocol: {cfg['dataset']}", ""]

    # ------------------------------------------------------------------ the main grid
    base = {s: v["acc"] for (sz, s), v in rec.items() if sz == main_size}
    n_train = next((v["n_train"] for (sz, _), v in rec.items() if sz == main_size), None)
    scorers = [s for s in ORDER if any(k[2] == s and k[0] == main_size and k[3] in (T0, E) and k[5] == "epochs"
                                       for k in ret)]
    ratios = sorted({k[4] for k in ret if k[0] == main_size and k[5] == "epochs" and k[3] in (T0, E)})

    def T_of(scorer):
        return E if scorer in ("aum", "forgetting_full", "random") else T0

    def accs(size, scorer, T, r, mode="epochs"):
        return {s: v["acc"] for (sz, s, sc, t, rr, m), v in ret.items()
                if (sz, sc, rr, m) == (size, scorer, r, mode) and (t == T or scorer == "random")}

    verdict_rows, delta_rows, acc_rows = [], [], []
    for sc in scorers:
        row = [f"`{sc}`" + (f" (T = {T_of(sc)})" if sc != "random" else "")]
        for r in ratios:
            m, sd, n = mean_std(100 * x for x in accs(main_size, sc, T_of(sc), r).values())
            row.append(f"{m:.2f} ± {sd:.2f} ({n})" if n > 1 else (f"{m:.2f} (1)" if n else ""))
        acc_rows.append("| " + " | ".join(row) + " |")
        if sc == "random":
            continue
        drow, vrow = [f"`{sc}`"], [f"`{sc}`"]
        for r in ratios:
            d = paired(ret, main_size, sc, T_of(sc), r)
            m, sd, n = mean_std(d.values())
            drow.append(f"{m:+.2f} [{_signs(d)}]" if n else "")
            vrow.append(verdict(d))
        delta_rows.append("| " + " | ".join(drow) + " |")
        verdict_rows.append("| " + " | ".join(vrow) + " |")
    bm, bsd, bn = mean_std(100 * x for x in base.values())
    head = "| scorer | " + " | ".join(f"prune {r:.0%} (keep {1 - r:.0%})" for r in ratios) + " |"
    sep = "|---|" + "---|" * len(ratios)

    # ------------------------------------------------------------------ cost claim: Δ against T/E
    cost_rows = []
    for sc in plan["cost_scorers"]:
        for T in plan["cost_Ts"]:
            d = paired(ret, main_size, sc, T, plan["cost_ratio"])
            if not d:
                continue
            m, sd, n = mean_std(d.values())
            a = accs(main_size, sc, T, plan["cost_ratio"])
            am, _, _ = mean_std(100 * x for x in a.values())
            cost_rows.append(f"| `{sc}` | {T} | {T / E:.2f} | {am:.2f} | {m:+.2f} ± {sd:.2f} | {_signs(d)} | {verdict(d)} |")

    # ------------------------------------------------------------------ dataset size
    size_rows = []
    sizes = sorted({k[0] for k in ret}, key=lambda x: (x == "all", x))
    for sz in sizes:
        for sc in plan["small_scorers"]:
            if sc == "random":
                continue
            for r in plan["small_ratios"]:
                d = paired(ret, sz, sc, T0, r)
                if not d:
                    continue
                m, sd, n = mean_std(d.values())
                bmean = mean_std(100 * v["acc"] for (s2, _), v in rec.items() if s2 == sz)[0]
                size_rows.append(f"| {sz} | {bmean:.2f} | `{sc}` | {r:.0%} | {m:+.2f} ± {sd:.2f} ({n}) | {_signs(d)} |")

    # ------------------------------------------------------------------ same epochs vs same steps
    steps_rows = []
    r_steps = plan["steps_ratio"]
    for sc in plan["steps_scorers"]:
        for mode in ("epochs", "steps"):
            a = accs(main_size, sc, T_of(sc) if sc == "random" else T0, r_steps, mode)
            am, asd, an = mean_std(100 * x for x in a.values())
            eps = sorted({v["epochs"] for (sz, s, sc2, t, rr, m), v in ret.items()
                          if (sz, sc2, rr, m) == (main_size, sc, r_steps, mode)})
            steps_rows.append(f"| `{sc}` | same {mode} ({', '.join(map(str, eps))} epochs) | {am:.2f} ± {asd:.2f} ({an}) |")
    d_steps = paired(ret, main_size, "entropy", T0, r_steps, "steps")
    d_epochs = paired(ret, main_size, "entropy", T0, r_steps, "epochs")

    # ------------------------------------------------------------------ prune-in-run vs the paper protocol
    pir_rows = []
    full_cost = mean_std(v["cost"] for (sz, _), v in rec.items() if sz == main_size)[0]
    for rr in plan["pir_ratios"]:
        pv = {s: v for (sz, s, T, x), v in pir.items() if sz == main_size and x == rr and T == T0}
        if not pv:
            continue
        pm, psd, pn = mean_std(100 * v["acc"] for v in pv.values())
        pc = mean_std(v["cost"] for v in pv.values())[0]
        paper = accs(main_size, "entropy", T0, rr)
        am, asd, an = mean_std(100 * x for x in paper.values())
        pcost = mean_std(v["retrain_cost"] + v["score_cost"] for (sz, s, sc, t, x, m), v in ret.items()
                         if (sz, sc, t, x, m) == (main_size, "entropy", T0, rr, "epochs"))[0]
        pir_rows.append(f"| {rr:.0%} | {am:.2f} ± {asd:.2f} ({an}) | {pcost / full_cost:.2f} | "
                        f"{pm:.2f} ± {psd:.2f} ({pn}) | {pc / full_cost:.2f} |")

    # ------------------------------------------------------------------ overlap
    ovl_lines = []
    ov = [v for (sz, _), v in ovl.items() if sz == main_size]
    if ov:
        names = ov[0]["scorers"]
        sp = np.nanmean([np.array(v["spearman"], float) for v in ov], 0)
        jc = np.nanmean([np.array(v["jaccard"], float) for v in ov], 0)
        ovl_lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
        for i, a_ in enumerate(names):
            ovl_lines.append(f"| `{a_}` | " + " | ".join(
                "1" if i == j else f"{sp[i, j]:+.2f} / {jc[i, j]:.2f}" for j in range(len(names))) + " |")

    figs = _figures(out_dir, ret, rec, pir, ovl, cfg, scorers, ratios, T_of)

    # ------------------------------------------------------------------ verdicts first
    claim = []
    for r in ratios:
        claim.append(f"- Entropy at T = {T0} of {E} epochs vs random, prune {r:.0%}: "
                     f"**{verdict(paired(ret, main_size, 'entropy', T0, r))}**.")
    if d_steps:
        claim.append(f"- Same claim when the pruned run gets the full run's steps (prune {r_steps:.0%}): "
                     f"**{verdict(d_steps)}** (same epochs: {verdict(d_epochs)}).")
    for sc in ("el2n", "dual", "aum", "forgetting_full"):
        if sc in scorers:
            vs = [verdict(paired(ret, main_size, sc, T_of(sc), r)) for r in ratios]
            claim.append(f"- `{sc}` vs random at {', '.join(f'{r:.0%}' for r in ratios)}: " + "; ".join(vs) + ".")
    if "reverse_entropy" in scorers:
        claim.append("- Sanity check, pruning the *hardest* by entropy: "
                     + "; ".join(verdict(paired(ret, main_size, 'reverse_entropy', T0, r)) for r in ratios) + ".")
    ent_el2n = {}
    for r in ratios:
        a, b = accs(main_size, "entropy", T0, r), accs(main_size, "el2n", T0, r)
        ent_el2n[r] = {s: 100 * (a[s] - b[s]) for s in a if s in b}
    if any(ent_el2n.values()):
        claim.append("- Entropy vs EL2N (same T), Δ per seed: " + "; ".join(
            f"{r:.0%}: {_signs(d)}" for r, d in ent_el2n.items() if d) + ".")

    machines = []
    runs_path = out_dir / "runs.json"
    if runs_path.exists():
        for run in json.loads(runs_path.read_text()):
            m = run["machine"]
            machines.append(f"- `{run['command']}` started {run['started']} on {m['cpu']} ({m['cores']} cores, "
                            f"{m['torch_threads']} torch thread, load average at start "
                            f"{', '.join(f'{x:.1f}' for x in m['load_average'])})")
    wall = sum(v.get("cell_wall_s", 0) for v in cells.values())

    lines += [
        f"{n_train:,} training images, the full 10,000-image test set, `{cfg['model']}`, E = {E} epochs, batch "
        f"{cfg['batch_size']}, SGD lr {cfg['lr']} with a cosine schedule, no augmentation, class-balanced "
        f"selection. One recorded full run per seed (training seed s) gives the unpruned accuracy and every prefix "
        f"trajectory; pruned runs retrain from scratch with training seed {cfg['retrain_seed']}. Unpruned: "
        f"{bm:.2f} ± {bsd:.2f} % ({bn} seeds).",
        "",
        "## Verdicts",
        "",
        "Rule (restated on 2026-12-07; the earlier rule, > 0 in 4 of 5 or 3 of 3 seeds, was too lenient): "
        f"with Δ = acc(scorer) − acc(random), same seed and ratio, in points: {VERDICT_RULE}.",
        "",
        *claim,
        "",
        "## Test accuracy (%), mean ± std (seeds)",
        "",
        head, sep, *acc_rows,
        "",
        f"![accuracy vs kept fraction]({figs['acc']})",
        "",
        "## Paired Δ(scorer − random) per seed, percentage points (the key comparison)",
        "",
        head.replace("| scorer |", "| scorer | ") , sep, *delta_rows,
        "",
        "| verdict | " + " | ".join(f"prune {r:.0%}" for r in ratios) + " |", sep, *verdict_rows,
        "",
        f"![paired differences]({figs['delta']})",
        "",
        f"## Cost: Δ against the length of the scored trajectory (prune {plan['cost_ratio']:.0%})",
        "",
        "T epochs scored of E; the score costs T/E of one full training (T = E: a score that needs the whole run).",
        "",
        "| scorer | T | T/E | acc (%) | Δ vs random | per seed | verdict |", "|---|---|---|---|---|---|---|",
        *cost_rows,
        "",
        f"![delta vs T]({figs['T']})",
        "",
        "## Dataset size: Δ(scorer − random) at T = " + str(T0),
        "",
        "| training images | unpruned acc (%) | scorer | prune | Δ (seeds) | per seed |", "|---|---|---|---|---|---|",
        *size_rows,
        "",
        f"![delta vs size]({figs['size']})",
        "",
        f"## Less data or less compute? Same epochs vs same steps (prune {r_steps:.0%})",
        "",
        "| scorer | retraining | acc (%) |", "|---|---|---|", *steps_rows,
        "",
        f"Paired Δ(entropy − random): same epochs {_signs(d_epochs)}; same steps {_signs(d_steps)}.",
        "",
        "## Prune-in-run against the paper's protocol (entropy, T = " + f"{T0})",
        "",
        "Cost = sample-epochs relative to one full training. Paper protocol: the T recorded epochs plus a "
        "retraining of E epochs on the kept set (free recording if a full run is trained anyway: add 1). "
        "Prune-in-run: one run, T epochs on all samples then E − T on the kept ones.",
        "",
        "| prune | paper protocol acc (%) | its cost | prune-in-run acc (%) | its cost |", "|---|---|---|---|---|",
        *pir_rows,
        "",
        f"![cost vs accuracy]({figs['cost']})",
        "",
        "## How much the scorers agree (prune 50%, mean over seeds): Spearman of the scores / Jaccard of the pruned sets",
        "",
        *ovl_lines,
        "",
        "## Runs",
        "",
        f"{len(cells)} cells; training and scoring wall time {wall / 3600:.1f} h of one core (two processes side by side).",
        "",
        *machines,
        "",
    ]
    text = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


def _figures(out_dir: Path, ret, rec, pir, ovl, cfg, scorers, ratios, T_of) -> dict[str, str]:
    plt = pyplot()
    E, plan = cfg["epochs"], cfg["plan_cells"]
    T0 = plan["T"]
    colors = {s: c for s, c in zip(ORDER, ("C0", "C1", "C2", "C3", "C4", "C5", "k"))}
    names = {}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = [100 * v["acc"] for (sz, _), v in rec.items() if sz == "all"]
    for sc in scorers:
        xs, means = [], []
        for r in ratios:
            a = [100 * v["acc"] for (sz, s, sc2, t, rr, m), v in ret.items()
                 if (sz, sc2, rr, m) == ("all", sc, r, "epochs") and (t == T_of(sc) or sc == "random")]
            ax.scatter([1 - r] * len(a), a, s=10, color=colors[sc], alpha=0.5)
            if a:
                xs.append(1 - r)
                means.append(np.mean(a))
        ax.plot([1.0] + xs, [np.mean(base)] + means if base else means, color=colors[sc], label=sc, lw=1.2)
    ax.set_xlabel("kept fraction")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs kept fraction (dots: seeds, line: mean)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    names["acc"] = _save(fig, out_dir / "fig_accuracy_vs_kept.png", plt)

    fig, axes = plt.subplots(1, len(ratios), figsize=(4 * len(ratios), 4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], ratios):
        for i, sc in enumerate(s for s in scorers if s != "random"):
            d = paired(ret, "all", sc, T_of(sc), r)
            ax.scatter([i] * len(d), list(d.values()), color=colors[sc], s=18)
            if d:
                ax.plot([i - 0.3, i + 0.3], [np.mean(list(d.values()))] * 2, color=colors[sc])
        ax.axhline(0, color="k", lw=0.8)
        labels = [s for s in scorers if s != "random"]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"prune {r:.0%}")
    axes[0][0].set_ylabel("Δ test top-1 vs random, per seed (pp)")
    names["delta"] = _save(fig, out_dir / "fig_paired_delta.png", plt)

    fig, ax = plt.subplots(figsize=(6, 4))
    for sc in plan["cost_scorers"]:
        xs, ys = [], []
        for T in plan["cost_Ts"]:
            d = paired(ret, "all", sc, T, plan["cost_ratio"])
            ax.scatter([T / E] * len(d), list(d.values()), color=colors[sc], s=12, alpha=0.6)
            if d:
                xs.append(T / E)
                ys.append(np.mean(list(d.values())))
        ax.plot(xs, ys, color=colors[sc], label=sc, marker="o")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("T / E (cost of the score, in full trainings)")
    ax.set_ylabel(f"Δ vs random at {plan['cost_ratio']:.0%} pruned (pp)")
    ax.legend()
    ax.grid(alpha=0.3)
    names["T"] = _save(fig, out_dir / "fig_delta_vs_T.png", plt)

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = sorted({k[0] for k in rec}, key=lambda s: np.mean([v["n_train"] for (sz, _), v in rec.items() if sz == s]))
    n_of = {s: np.mean([v["n_train"] for (sz, _), v in rec.items() if sz == s]) for s in sizes}
    for sc in plan["small_scorers"]:
        if sc == "random":
            continue
        for r, style in zip(plan["small_ratios"], ("-", "--")):
            xs, ys = [], []
            for sz in sizes:
                d = paired(ret, sz, sc, T0, r)
                if d:
                    xs.append(n_of[sz])
                    ys.append(np.mean(list(d.values())))
                    ax.scatter([n_of[sz]] * len(d), list(d.values()), color=colors[sc], s=10, alpha=0.5)
            ax.plot(xs, ys, style, color=colors[sc], label=f"{sc}, prune {r:.0%}", marker="o")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("Δ vs random (pp)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    names["size"] = _save(fig, out_dir / "fig_delta_vs_size.png", plt)

    fig, ax = plt.subplots(figsize=(6, 4))
    full_cost = np.mean([v["cost"] for (sz, _), v in rec.items() if sz == "all"]) if rec else 1
    if base:
        ax.scatter([1.0], [np.mean(base)], color="k", label="full data", marker="s")
    pts = defaultdict(list)
    for (sz, s, sc, t, r, m), v in ret.items():
        if (sz, sc, t, m) == ("all", "entropy", T0, "epochs"):
            pts[r].append(((v["retrain_cost"] + v["score_cost"]) / full_cost, 100 * v["acc"]))
    for r, p in sorted(pts.items()):
        ax.scatter(*np.mean(p, 0), color="C0", marker="o", label="paper protocol" if r == min(pts) else None)
        ax.annotate(f"{r:.0%}", np.mean(p, 0), fontsize=7)
    pp = defaultdict(list)
    for (sz, s, T, r), v in pir.items():
        if sz == "all" and T == T0:
            pp[r].append((v["cost"] / full_cost, 100 * v["acc"]))
    for r, p in sorted(pp.items()):
        ax.scatter(*np.mean(p, 0), color="C3", marker="^", label="prune-in-run" if r == min(pp) else None)
        ax.annotate(f"{r:.0%}", np.mean(p, 0), fontsize=7)
    ax.set_xlabel("cost (sample-epochs / one full training)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    names["cost"] = _save(fig, out_dir / "fig_cost_vs_accuracy.png", plt)
    return names


def _save(fig, path: Path, plt) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
