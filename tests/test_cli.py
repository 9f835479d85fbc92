"""The dprune command line: import -> score -> prune -> inspect, and its errors."""
import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from dprune.cli import main
from dprune.scoring import load_scores
from dprune.select import RUN_DEFAULTS
from dprune.store import TrajectoryStore
from dprune.synthetic import synthetic_trajectory


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def traj(tmp_path):
    t = synthetic_trajectory(300, 6, 5, noise_rate=0.1, seed=3)
    np.savez(tmp_path / "t.npz", **t)
    return tmp_path / "t.npz", t


def test_help_lists_the_commands():
    out = run("--help").output
    for cmd in ("import", "score", "prune", "inspect", "check-labels"):
        assert cmd in out
    assert "--ratio" in run("prune", "--help").output


def test_import_score_prune_inspect(tmp_path, traj):
    src, t = traj
    run("import", src, "-o", tmp_path / "run")
    out = run("score", tmp_path / "run").output
    assert "numba backend" in out and "entropy" in out
    store = TrajectoryStore.open(tmp_path / "run")
    scores, meta = load_scores(tmp_path / "run" / "scores.npz", n_samples=store.n_samples)
    assert meta["made_from"] == store.identity() and scores["entropy"].shape == (300,)
    # By default, what the default selection of `dprune run` reads, and no other scorer.
    assert meta["methods"] == RUN_DEFAULTS.methods_needed() == ["entropy", "confident"] and "tdds" not in scores
    out = run("prune", tmp_path / "run", "--ratio", 0.25, "--policy", "class", "--relabel", "--remove-outliers", 0.02,
              "-o", tmp_path / "m.json", "--export-list", tmp_path / "kept.tsv").output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n_pruned"] == 75 and m["n_outliers"] == 6 and m["policy"] == "class"
    assert len((tmp_path / "kept.tsv").read_text().splitlines()) == m["n_kept"]
    info = json.loads(run("inspect", tmp_path / "run", "--json").output)
    assert info["epochs_completed"] == 5 and info["never_observed"] == 0 and "scores" in info


def test_prune_reuses_current_scores_and_rescores_stale_ones(tmp_path, traj):
    src, _ = traj
    run("import", src, "-o", tmp_path / "run")
    run("score", tmp_path / "run", "-m", "aum")
    scores_file = tmp_path / "run" / "scores.npz"
    before = scores_file.stat().st_mtime_ns
    run("prune", tmp_path / "run", "-r", 0.1, "-m", "aum", "-o", tmp_path / "a.json", "-q")
    assert scores_file.stat().st_mtime_ns == before
    run("prune", tmp_path / "run", "-r", 0.1, "-m", "tdds", "--param", "tdds.window=3", "-o", tmp_path / "b.json", "-q")
    _, meta = load_scores(scores_file)
    assert meta["params"]["tdds"]["window"] == 3 and "tdds" in meta["methods"]


def test_tdds_folder_import_equals_array_import(tmp_path):
    rng = np.random.default_rng(0)
    E, N, C = 3, 40, 5
    z = rng.normal(size=(E, N, C)).astype(np.float32)
    labels = rng.integers(0, C, N)
    (tmp_path / "dyn").mkdir()
    for e in range(E):
        perm = rng.permutation(N)  # shuffled order, as a DataLoader with shuffle=True writes it
        np.save(tmp_path / "dyn" / f"{e}_Output.npy", z[e, perm])
        np.save(tmp_path / "dyn" / f"{e}_Index.npy", perm)
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "arr.npz", logits=z, labels=labels)
    run("import", tmp_path / "dyn", "--labels", tmp_path / "labels.npy", "-o", tmp_path / "a", "--dtype", "float32")
    run("import", tmp_path / "arr.npz", "-o", tmp_path / "b", "--dtype", "float32")
    za, ca = TrajectoryStore.open(tmp_path / "a").read(0, N)
    zb, cb = TrajectoryStore.open(tmp_path / "b").read(0, N)
    np.testing.assert_array_equal(za, zb)
    np.testing.assert_array_equal(ca, cb)


def one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_exit_non_zero_with_one_line(tmp_path, traj):
    src, t = traj
    run("import", src, "-o", tmp_path / "run")
    one_line_error(run("prune", tmp_path / "run", "-r", 1.0, ok=False), "prune ratio must be in [0, 1)")
    one_line_error(run("prune", tmp_path / "run", "-r", 0.1, "-m", "magic", ok=False),
                   "unknown scoring method magic; valid: entropy, entropy_prob")
    one_line_error(run("score", tmp_path / "run", "--param", "tdds", ok=False), "NAME.OPTION=VALUE")
    bad = dict(t, labels=np.full(300, 9))
    np.savez(tmp_path / "bad.npz", **bad)
    one_line_error(run("import", tmp_path / "bad.npz", "-o", tmp_path / "x", ok=False), "labels must lie in [0, 6)")
    np.savez(tmp_path / "short.npz", logits=t["logits"], labels=t["labels"][:10])
    one_line_error(run("import", tmp_path / "short.npz", "-o", tmp_path / "y", ok=False), "labels have length 10, expected N = 300")
    (tmp_path / "run" / "meta.json").write_text("{oops")
    one_line_error(run("inspect", tmp_path / "run", ok=False), "meta.json is corrupt")


def test_scores_file_that_is_torn_is_never_read_as_valid(tmp_path, traj):
    src, _ = traj
    run("import", src, "-o", tmp_path / "run")
    run("score", tmp_path / "run", "-q")
    f = tmp_path / "run" / "scores.npz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="scores file is corrupt"):
        load_scores(f)
    info = json.loads(run("inspect", tmp_path / "run", "--json").output)
    assert "corrupt" in info["scores"]["error"]
    # prune notices and rescores instead of trusting the torn file
    run("prune", tmp_path / "run", "-r", 0.2, "-o", tmp_path / "m.json", "-q")
    assert load_scores(f)[0]["entropy"].shape == (300,)


def test_synth_command_writes_a_loadable_trajectory(tmp_path):
    run("synth", tmp_path / "s.npz", "--samples", 50, "--classes", 3, "--epochs", 2)
    z = np.load(tmp_path / "s.npz")
    assert z["logits"].shape == (2, 50, 3) and z["labels"].shape == (50,)


def test_synth_reid_writes_a_readable_layout(tmp_path):
    from dprune.data.reid import build_reid_dataset

    out = run("synth-reid", tmp_path / "m", "--layout", "market1501", "--ids", 8, "--images-per-id", 4).output
    assert "market1501" in out
    ds = build_reid_dataset("market1501", tmp_path / "m")
    assert ds.num_train_pids == 4 and len(ds.query) > 0 and len(ds.gallery) > 0


def test_score_and_prune_on_the_first_epochs(tmp_path, traj):
    src, t = traj
    run("import", src, "-o", tmp_path / "run")
    assert "over 2 epochs" in run("score", tmp_path / "run", "--first-epochs", 2).output
    store = TrajectoryStore.open(tmp_path / "run")
    scores, meta = load_scores(tmp_path / "run" / "scores.npz")
    assert meta["made_from"]["epochs"] == 2
    scores_file = tmp_path / "run" / "scores.npz"
    before = scores_file.stat().st_mtime_ns
    run("prune", tmp_path / "run", "-r", 0.2, "--first-epochs", 2, "-o", tmp_path / "a.json", "-q")
    assert scores_file.stat().st_mtime_ns == before  # the 2-epoch scores are reused
    run("prune", tmp_path / "run", "-r", 0.2, "-o", tmp_path / "b.json", "-q")
    assert load_scores(scores_file)[1]["made_from"]["epochs"] == store.epochs_completed  # all epochs: rescored
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["n_pruned"] == b["n_pruned"] == 60
    assert "[1, 5]" in run("score", tmp_path / "run", "--first-epochs", 6, ok=False).output


def test_run_set_options_reach_every_stage(tmp_path):
    """--set wins over run's own options: pass recording into a summary store, 3 epochs not 2."""
    from dprune.store import SummaryStore, open_store

    out = tmp_path / "p"
    run("run", "--out", out, "--record-epochs", 1, "--epochs", 2, "--batch-size", 256, "--set", "record=pass",
        "--set", "store=summary", "--set", "epochs=3", "--set", "progress=false")
    for stage in ("full", "prune-in-run"):
        store = open_store(out / stage / "trajectory")
        assert isinstance(store, SummaryStore) and store.epochs_completed == 1
        assert (store.counts() == 1).all()  # pass recording sees every sample once, unaugmented
        metrics = json.loads((out / stage / "metrics.json").read_text())
        assert len(metrics) == 3
    assert len(json.loads((out / "pruned" / "metrics.json").read_text())) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == 3 and report["record_epochs"] == 1
    assert "full data" in (out / "report.md").read_text()
    store = open_store(out / "full" / "trajectory")
    assert json.loads(run("inspect", store.run_dir, "--json").output)["kind"] == "summary"


def test_commands_accept_a_train_out_folder_for_its_trajectory(tmp_path):
    run("train", "--out", tmp_path / "r", "--epochs", 1, "--batch-size", 256, "--no-progress")
    run("score", tmp_path / "r", "-q", "-m", "entropy")
    assert (tmp_path / "r" / "trajectory" / "scores.npz").exists()
    assert json.loads(run("inspect", tmp_path / "r", "--json").output)["n_samples"] == 1437
    run("prune", tmp_path / "r", "-r", 0.2, "-o", tmp_path / "m.json", "-q")
    # The sheet's page shows each drawn sample's picture, in the sheet's order, with its class name.
    run("check-labels", tmp_path / "r", "--draw", 12, "--out", tmp_path / "sheet.csv")
    page = (tmp_path / "sheet.html").read_text()
    ids = [row[0] for row in csv.reader((tmp_path / "sheet.csv").open())][1:]
    assert re.findall(r"<b>row \d+</b><br>([^<]+)<br>", page) == ids and page.count('src="data:image/png;') == 12
    assert "No pictures" not in page and re.search(r"given \d</figcaption>", page)  # digits' names are their indices


def test_check_labels_draws_a_sheet_and_turns_the_checked_rows_into_the_detectors_rate(tmp_path, traj):
    src, t = traj
    run("import", src, "-o", tmp_path / "run")
    sheet = tmp_path / "sheet.csv"
    assert "wrote 120 samples to check" in run("check-labels", tmp_path / "run", "--draw", 120, "--seed", 4,
                                               "--out", sheet).output
    assert "exists" in run("check-labels", tmp_path / "run", "--draw", 5, "--out", sheet, ok=False).output
    assert "would overwrite" in run("check-labels", tmp_path / "run", "--draw", 5, "--out",
                                    tmp_path / "run" / "meta.json", ok=False).output
    rows = list(csv.reader(sheet.open()))
    assert rows[0] == ["sample_id", "given_label", "checked_label"] and len(rows) == 121
    # An imported trajectory has no dataset to take pictures from: its page says so and lists the ids.
    page = (tmp_path / "sheet.html").read_text()
    assert "No pictures" in page and re.findall(r"<b>row \d+</b><br>([^<]+)<br>", page) == [r[0] for r in rows[1:]]
    sheet.rename(tmp_path / "kept.csv")  # a page someone may be reading is not overwritten either
    assert "sheet's page" in run("check-labels", tmp_path / "run", "--draw", 5, "--out", sheet, ok=False).output
    (tmp_path / "kept.csv").rename(sheet)
    # A sheet named like its page would be overwritten by it: refused in one line.
    out = run("check-labels", tmp_path / "run", "--draw", 5, "--out", tmp_path / "s.HTML", ok=False).output
    assert "give a name ending in .csv" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "s.HTML").exists()
    ids = [int(r[0]) for r in rows[1:]]
    assert len(set(ids)) == 120 and all(int(r[1]) == t["labels"][int(r[0])] and r[2] == "" for r in rows[1:])
    # The person fills 100 rows with the true class and leaves 20 empty: the rate is the sample's.
    with sheet.open("w", newline="", encoding="utf-8-sig") as f:  # as a spreadsheet saves it
        w = csv.writer(f)
        w.writerow(rows[0])
        for k, (i, g, _) in enumerate(rows[1:]):
            w.writerow([i, g, t["true_labels"][int(i)] if k < 100 else ""])
    wrong = sum(t["true_labels"][i] != t["labels"][i] for i in ids[:100])
    out = run("check-labels", tmp_path / "run", "--checked", sheet).output
    assert f"100 labels checked, {wrong} wrong: rate {wrong / 100:.3f}" in out
    rate = out.split("confident.rate=")[1].split()[0]
    run("score", tmp_path / "run", "-m", "entropy,confident", "--param", f"confident.rate={rate}")
    scores, _ = load_scores(tmp_path / "run" / "scores.npz")
    assert scores["confident"].sum() == round(float(rate) * 300)


def test_check_labels_leaves_no_sheet_behind_when_its_page_cannot_be_written(tmp_path, traj, monkeypatch):
    import dprune.fileio

    src, _ = traj
    run("import", src, "-o", tmp_path / "run")
    real = dprune.fileio.atomic_write_text

    def full_disk(path, text):
        if str(path).endswith(".html"):
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(dprune.fileio, "atomic_write_text", full_disk)
    assert "No space left" in run("check-labels", tmp_path / "run", "--draw", 5, "--out", tmp_path / "s.csv",
                                  ok=False).output
    assert not (tmp_path / "s.csv").exists()  # so the same command can be run again
    monkeypatch.setattr(dprune.fileio, "atomic_write_text", real)
    run("check-labels", tmp_path / "run", "--draw", 5, "--out", tmp_path / "s.csv")
    assert (tmp_path / "s.csv").exists() and (tmp_path / "s.html").exists()


@pytest.mark.parametrize("line, message", [
    ("999,0,1", "sample id '999' is not in the store"),
    ("0,{wrong},1", "is not the store's"),
    ("0,{given},7", r"checked label '7' must be a class index in \[0, 6\)"),
    ("0,{given},", "no row has a checked label"),
    ("0,{given},\u00b2", "checked label '\u00b2' must be a class index"),
])
def test_check_labels_refuses_a_sheet_that_does_not_match_the_store_in_one_line(tmp_path, traj, line, message):
    src, t = traj
    run("import", src, "-o", tmp_path / "run")
    g = int(t["labels"][0])
    (tmp_path / "s.csv").write_text("sample_id,given_label,checked_label\n"
                                    + line.format(given=g, wrong=(g + 1) % 6) + "\n")
    result = run("check-labels", tmp_path / "run", "--checked", tmp_path / "s.csv", ok=False)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output)
    assert run("check-labels", tmp_path / "run", ok=False).exit_code != 0  # neither --draw nor --checked
