"""``report.md`` of ``benchmarks/noisy_method.py``, rebuilt from its cell files alone.

The verdict rule is :func:`verdict` (declared in ``benchmarks/RESULTS.md`` before the test
settings ran): A beats B when the paired per-seed differences A - B are positive by a one-sided
paired t-test at p < 0.05, or positive in every one of at least 5 seeds; A is worse when the
same holds for B - A; otherwise the difference is not shown.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from _common import paired_verdict, pyplot

ARM_TITLES = {
    "clean": "clean labels (ceiling)",
    "noisy": "full noisy data (anchor)",
    "short": "control: full noisy data, same cost",
    "random": "control: random prune-in-run, as many kept",
    "default": "**dprune run's defaults (prune-in-run)**",
    "nobudget": "the defaults with the ratio counting the score's pruning only",
    "nobudget_short": "control: full noisy data, the cost of the row above",
    "score": "entropy alone (prune-in-run)",
    "relabel": "entropy + argmax relabel",
    "paper": "entropy + relabel + 1% outliers (paper's full method)",
    "dual": "dual alone (prune-in-run)",
    "cleanlab": "cleanlab 5-fold, flagged removed, then E epochs",
    "protocol": "paper's protocol with the defaults (record T, retrain E)",
    "cleaned": "the default detector's flags removed, then E epochs (record T, retrain E)",
    "cleaned_random": "control: as many as the row above kept at random, then E epochs",
    "cleaned_short": "control: full noisy data, the cost of the cleaned row",
    "checked": "the defaults with `confident.rate` from checked labels (prune-in-run)",
}
# Each arm's random control and same-cost run (the columns "Δ vs random" and "Δ vs short"); None:
# no such comparison.  nobudget keeps another count than the random control; cleanlab and the
# protocol cost more than the defaults' short run and have no control of their own; a control is
# set against the other control of its arm.  Every other arm (default, checked, score, relabel,
# paper, dual) prunes in the run at the defaults' ratio: the defaults' controls.
CONTROLS_OF = {"nobudget": (None, "nobudget_short"), "cleaned": ("cleaned_random", "cleaned_short"),
               "cleanlab": (None, None), "protocol": (None, None), "random": (None, "short"),
               "short": ("random", None), "nobudget_short": (None, None), "cleaned_random": (None, "cleaned_short"),
               "cleaned_short": ("cleaned_random", None)}


FIGURE = "fig_cost_accuracy.png"
# Marker and colour of each arm in the figure; arms without an entry are not drawn.
ARM_STYLE = {"noisy": ("s", "black"), "short": ("v", "tab:gray"), "random": ("x", "tab:red"),
             "default": ("o", "tab:blue"), "cleanlab": ("D", "tab:green"), "protocol": ("^", "tab:purple"),
             "clean": ("*", "tab:olive")}


def verdict(deltas) -> tuple[str, float]:
    return paired_verdict(deltas)


def _cells_by(cells: dict, pattern: str) -> dict[tuple, dict]:
    out = {}
    for key, value in cells.items():
        m = re.fullmatch(pattern, key)
        if m:
            out[m.groups()] = value
    return out


def write_report(cells) -> str:
    data = cells.all()
    config = cells.config
    arms = _cells_by(data, r"arm/([^/]+)/seed(\d+)/([a-z_]+)")
    clean = {seed: v for (seed,), v in _cells_by(data, r"clean/seed(\d+)").items()}
    detect = _cells_by(data, r"detect/([^/]+)/seed(\d+)")
    settings = sorted({k[0] for k in arms} | {k[0] for k in detect})
    E = config["epochs"]
    n = config.get("n_train") or 60000
    lines = [f"# The full method on noisy Fashion-MNIST ({n:,} training images{'' if n == 60000 else ', a class-stratified subset'}), "
             f"E = {E}, T = {E // 10}", "",
             "Verdict: one-sided paired t-test p < 0.05 over seeds, or all of >= 5 seeds (see the module docstring). "
             "The defaults under test are recorded in each `default` cell (`spec`).", ""]
    specs = sorted({str(v["spec"]) for k, v in data.items() if k.endswith("/default") and "spec" in v})
    if specs:
        lines += [f"Default specs in the cells: {'; '.join(specs)}", ""]
    for setting in settings:
        lines += _setting_section(setting, arms, clean, E)
    lines += _detection_section(detect, settings)
    if _cost_accuracy_figure(settings, arms, clean, E, Path(cells.dir) / FIGURE):
        lines += [f"![cost against accuracy]({FIGURE})", ""]
    text = "\n".join(lines) + "\n"
    (Path(cells.dir) / "report.md").write_text(text)
    return text


def _by_arm(setting: str, arms: dict, clean: dict) -> dict[str, dict[int, dict]]:
    """The cells of one setting, arm -> seed -> cell; the clean-label runs count in every setting."""
    by_arm: dict[str, dict[int, dict]] = {}
    for (s, seed, arm), v in arms.items():
        if s == setting:
            by_arm.setdefault(arm, {})[int(seed)] = v
    if setting.startswith(("symmetric", "class", "instance")) and clean:
        by_arm["clean"] = {int(k): v for k, v in clean.items()}
    return by_arm


def _setting_section(setting: str, arms: dict, clean: dict, E: int) -> list[str]:
    by_arm = _by_arm(setting, arms, clean)
    noisy = by_arm.get("noisy", {})
    if not noisy:
        return [f"## {setting}", "", "(no noisy run yet)", ""]
    full_cost = np.mean([v["cost"] for v in noisy.values()])
    lines = [f"## {setting}", ""]
    curve = np.mean([v["curve"] for v in noisy.values() if len(v["curve"]) == E], axis=0) if any(
        len(v["curve"]) == E for v in noisy.values()) else None
    if curve is not None:
        peak = int(np.argmax(curve))
        lines.append(f"Memorisation: the noisy run's test accuracy (mean of {len(noisy)} seeds) peaks at "
                     f"{curve[peak]:.4f} after epoch {peak + 1} and ends at {curve[-1]:.4f} "
                     f"({(curve[-1] - curve[peak]) * 100:+.2f} points).")
        lines.append("")
    lines += ["| way | seeds | top-1 (mean ± std) | × full cost | kept | noise among kept | Δ vs noisy | "
              "Δ vs random | Δ vs short |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, title in ARM_TITLES.items():
        runs = by_arm.get(arm)
        if not runs:
            continue
        if arm in ("relabel", "paper") and any(v.get("spec", {}).get("mislabelled") != "relabel" for v in runs.values()):
            # Cells made before 2026-12-07 15:05 UTC: the arm took dprune run's default and removed the flags.
            title = {"relabel": "entropy + argmax flags removed",
                     "paper": "entropy + argmax flags removed + 1% outliers (the paper relabels them)"}[arm]
        acc = np.array([v["acc"] for v in runs.values()])
        cost = np.mean([v["cost"] for v in runs.values()]) / full_cost
        kept = np.mean([v.get("n_kept", np.nan) for v in runs.values()])
        noise = np.mean([v.get("kept_noise", np.nan) for v in runs.values()])
        cells = []
        for ref in ("noisy", *CONTROLS_OF.get(arm, ("random", "short"))):
            control = by_arm.get(ref, {}) if ref and ref != arm else {}
            seeds = sorted(set(runs) & set(control))
            if arm == "checked":  # the defaults' controls fit where it kept as many at the same cost
                default = by_arm.get("default", {})
                seeds = [s for s in seeds if s in default and all(
                    runs[s][k] == default[s][k] for k in ("n_kept", "cost"))]
            d = [(runs[s]["acc"] - control[s]["acc"]) * 100 for s in seeds]
            if not d:
                cells.append("")
                continue
            v, p = verdict(d)
            cells.append(f"{np.mean(d):+.2f} ({v}{'' if math.isnan(p) else f', p={p:.3f}'}; "
                         + " ".join(f"{x:+.2f}" for x in d) + ")")
        std = f" ± {acc.std(ddof=1) * 100:.2f}" if len(acc) > 1 else ""
        lines.append(f"| {title} | {len(acc)} | {acc.mean() * 100:.2f}{std} | {cost:.2f} | "
                     f"{'' if math.isnan(kept) else f'{kept:,.0f}'} | {'' if math.isnan(noise) else f'{noise:.3f}'} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines += _budget_comparison(by_arm)
    lines += _pair_line(by_arm, "cleaned", "cleanlab", "retrained on dprune's cleaning − retrained on cleanlab's")
    lines += _pair_line(by_arm, "checked", "default", "the defaults with the checked rate − the defaults")
    return lines


def _pair_line(by_arm: dict, a: str, b: str, what: str) -> list[str]:
    """Arm ``a`` against arm ``b`` over their common seeds, by the verdict rule."""
    seeds = sorted(set(by_arm.get(a, {})) & set(by_arm.get(b, {})), key=int)
    if not seeds:
        return []
    d = [(by_arm[a][s]["acc"] - by_arm[b][s]["acc"]) * 100 for s in seeds]
    return [f"{what}: {_paired_points(d, seeds)}", ""]


def _paired_points(d: list[float], seeds: list) -> str:
    """Per-seed differences ``d`` (points) as '<mean> points (<verdict>, p; seeds ...: <each>)'."""
    v, p = verdict(d)
    return (f"{np.mean(d):+.2f} points ({v}{'' if math.isnan(p) else f', p={p:.3f}'}; seeds "
            f"{', '.join(map(str, seeds))}: " + " ".join(f"{x:+.2f}" for x in d) + ")")


def _budget_comparison(by_arm: dict) -> list[str]:
    """H-budget (RESULTS.md): the defaults' Δ to their same-cost run minus that of the defaults
    with ``budget="score"`` to theirs, per seed, by the verdict rule."""
    arms = ("default", "short", "nobudget", "nobudget_short")
    if not all(by_arm.get(a) for a in arms):
        return []
    seeds = sorted(set.intersection(*(set(by_arm[a]) for a in arms)), key=int)
    if not seeds:
        return []
    acc = {a: {s: by_arm[a][s]["acc"] for s in seeds} for a in arms}
    d = [((acc["default"][s] - acc["short"][s]) - (acc["nobudget"][s] - acc["nobudget_short"][s])) * 100
         for s in seeds]
    return [f"H-budget: (defaults − their same-cost run) − (budget score − its same-cost run) = "
            f"{_paired_points(d, seeds)}", ""]


def _detection_section(detect: dict, settings: list[str]) -> list[str]:
    """F1 by T, and each cleanlab fold budget against dprune at the largest recorded T that costs no
    more (the detection cell records at most E / 5 epochs): paired over seeds, cleanlab's rule
    being the best by its mean over the seeds."""
    if not detect:
        return []
    lines = ["## Label cleaning: dprune's detector against cleanlab", "",
             "F1 (%) of the flags against the injected flips; dprune reads the first T epochs of the noisy run; "
             "cleanlab's best `filter_by` (by its mean over the seeds) on its own 5-fold out-of-sample "
             "probabilities. Each cleanlab budget is compared with dprune at the largest T that costs no more "
             "(sample-epochs), paired over seeds.", "",
             "| noise | seeds | dprune `confident` by T | argmax rule by T | cleanlab budget: best rule | "
             "dprune at ≤ its cost | Δ (verdict, p; per seed) |", "|---|---|---|---|---|---|---|"]
    for setting in settings:
        rows = [v for (s, seed), v in sorted(detect.items(), key=lambda kv: int(kv[0][1])) if s == setting]
        if not rows:
            continue
        Ts = sorted(rows[0]["dprune"], key=lambda t: int(t[1:]))
        conf = {T: np.mean([r["dprune"][T]["flags"]["confident"]["f1"] for r in rows]) for T in Ts}
        arg = {T: np.mean([r["dprune"][T]["flags"]["argmax"]["f1"] for r in rows]) for T in Ts}
        by_T = " ".join(f"{T}: {conf[T] * 100:.1f}" for T in Ts)
        by_T_arg = " ".join(f"{T}: {arg[T] * 100:.1f}" for T in Ts)
        for cv in rows[0]["cleanlab"]:
            cost = rows[0]["cleanlab"][cv]["cost"]
            rules = rows[0]["cleanlab"][cv]["rules"]
            rule = max(rules, key=lambda q: np.mean([r["cleanlab"][cv]["rules"][q]["f1"] for r in rows]))
            cl = np.mean([r["cleanlab"][cv]["rules"][rule]["f1"] for r in rows])
            within = [T for T in Ts if rows[0]["dprune"][T]["cost"] <= cost]
            if not within:
                continue
            T = within[-1]
            d = [(r["dprune"][T]["flags"]["confident"]["f1"] - r["cleanlab"][cv]["rules"][rule]["f1"]) * 100
                 for r in rows]
            v, p = verdict(d)
            lines.append(f"| {setting} | {len(rows)} | {by_T} | {by_T_arg} | {cv}: {cl * 100:.1f} ({rule}) | "
                         f"{T}: {conf[T] * 100:.1f} | {np.mean(d):+.2f} ({v}, p={p:.3f}; "
                         + " ".join(f"{x:+.2f}" for x in d) + ") |")
            by_T = by_T_arg = "〃"
    lines.append("")
    return lines


def _cost_accuracy_figure(settings: list[str], arms: dict, clean: dict, E: int, path: Path) -> bool:
    """One panel per setting: each arm's mean top-1 (± its std over seeds) against its cost in full
    trainings, and the full noisy run's test accuracy by epoch (a dashed line, cost = epoch / E).
    Returns whether anything was drawn."""
    panels = [(setting, {arm: list(runs.values()) for arm, runs in _by_arm(setting, arms, clean).items()})
              for setting in settings]
    panels = [(setting, by_arm) for setting, by_arm in panels if by_arm.get("noisy")]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (setting, by_arm) in zip(axes[0], panels):
        full = np.mean([v["cost"] for v in by_arm["noisy"]])
        curves = [v["curve"] for v in by_arm["noisy"] if len(v["curve"]) == E]
        if curves:
            ax.plot(np.arange(1, E + 1) / E, np.mean(curves, 0) * 100, "--", color="black", lw=0.8, alpha=0.6,
                    label="full noisy run, by epoch")
        for arm, (marker, colour) in ARM_STYLE.items():
            runs = by_arm.get(arm)
            if not runs:
                continue
            acc = np.array([v["acc"] for v in runs]) * 100
            cost = np.mean([v["cost"] for v in runs]) / full
            ax.errorbar(cost, acc.mean(), yerr=acc.std(ddof=1) if len(acc) > 1 else None, fmt=marker,
                        color=colour, capsize=3, label=f"{arm} ({len(acc)})")
        ax.set(title=setting, xlabel="× one full training (sample-epochs)", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
