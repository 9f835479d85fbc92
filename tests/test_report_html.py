"""The visual report (dprune report, and report.html of dprune run): structure, content, PNG sheets, a browser."""
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dprune.cli import main
from dprune.report.content import (MAX_RELABELLED, PER_CLASS, easiest_and_hardest, epochs_agreeing, identities_below,
                                   split_reason)
from dprune.report.html import GALLERY_BG
from dprune.scoring import load_scores
from dprune.synthetic import synthetic_trajectory


def cli(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


class Page(HTMLParser):
    """Figures (gallery items) per section and per gallery, images, tables, and text, from report.html."""

    def __init__(self, text):
        super().__init__()
        self.section = self.gallery = None
        self.items: dict[str, list[dict]] = {}
        self.galleries: dict[str, list[int]] = {}
        self.imgs: list[dict] = []
        self.rows: dict[str, int] = {}
        self.table = None
        self.figure = None
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a["id"]
        elif tag == "div" and "gallery" in a.get("class", ""):
            self.gallery = f"{self.section}/{a['class']}"
            self.galleries.setdefault(self.gallery, [])
        elif tag == "figure":
            self.figure = {"index": int(a["data-index"]), "class": a["class"], "img": None, "caption": ""}
            self.items.setdefault(self.section, []).append(self.figure)
            self.galleries[self.gallery].append(self.figure["index"])
        elif tag == "img":
            self.imgs.append(a)
            if self.figure is not None:
                self.figure["img"] = a
        elif tag == "table":
            self.table = a.get("class")
            self.rows[self.table] = 0
        elif tag == "tr" and self.table:
            self.rows[self.table] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        self.text.append(data)
        if self.figure is not None:
            self.figure["caption"] += data + "\n"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny dprune run on digits with 10% injected noise (it writes report.html itself), with the
    paper's relabelling and outlier removal so that every gallery has something to show."""
    out = tmp_path_factory.mktemp("report") / "run"
    cli("run", "--out", out, "--epochs", 4, "--record-epochs", 2, "--batch-size", 64, "--label-noise", 0.1,
        "--detector", "argmax", "--mislabelled", "relabel", "--remove-outliers", 0.01, "--no-controls",
        "--set", "progress=false")
    return out


def test_run_writes_a_self_contained_report_of_its_decisions(digits_run):
    page_path = digits_run / "report.html"
    text = page_path.read_text(encoding="utf-8")
    assert page_path.stat().st_size < 3e6
    page = Page(text)
    m = json.loads((digits_run / "manifest.json").read_text())
    labels = np.load(digits_run / "full" / "label_noise.npz")["noisy_labels"]
    clean = np.load(digits_run / "full" / "label_noise.npz")["clean_labels"]
    # Nothing to fetch: every image is embedded, no script, no link out.
    assert all(img["src"].startswith("data:image/") for img in page.imgs)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # Relabelled: every relabelled sample (fewer than the cap here), given -> new, framed by its truth.
    rel = {int(k): v for k, v in m["relabelled"].items()}
    assert 0 < len(rel) <= MAX_RELABELLED
    shown = page.items["relabelled"]
    assert sorted(f["index"] for f in shown) == sorted(rel)
    for f in shown:
        i = f["index"]
        assert f["img"]["src"].startswith("data:image/png") and "px" in f["img"]["class"]
        assert f"{labels[i]} → {rel[i]}" in f["caption"]
        assert ("good" in f["class"]) == (clean[i] == rel[i]) and ("bad" in f["class"]) == (clean[i] != rel[i])
        assert "epochs say" in f["caption"]
    # Removed, each with its reason.
    reasons = {o["index"]: o["reason"] for o in m["removed_outliers"]}
    assert reasons and {f["index"] for f in page.items["removed"]} == set(reasons)
    for f in page.items["removed"]:
        what, detail = split_reason(reasons[f["index"]])
        assert f"{what}\n{detail}" in f["caption"]
    # Per class: the pruned side holds pruned samples, the easiest of their class; the kept side kept ones.
    scores, _ = load_scores(digits_run / "full" / "trajectory" / "scores.npz")
    ent = scores["entropy"]
    pruned, kept = set(m["pruned"]), set(m["kept"])
    assert len(page.items["extremes"]) == 10 * 2 * PER_CLASS
    assert set(page.galleries["extremes/gallery pruned"]) <= pruned
    assert set(page.galleries["extremes/gallery kept"]) <= kept
    final = labels.copy()
    final[list(rel)] = list(rel.values())
    for i in page.galleries["extremes/gallery pruned"]:
        same_class = sorted(ent[[j for j in pruned if final[j] == final[i]]])
        assert ent[i] <= same_class[PER_CLASS - 1]
    for i in page.galleries["extremes/gallery kept"]:
        same_class = sorted(ent[[j for j in kept if final[j] == final[i]]])
        assert ent[i] >= same_class[-PER_CLASS]
    # Kept / pruned per class adds up to the manifest; the run table has every row of report.json.
    assert page.rows["classes"] == 1 + 10
    report_rows = json.loads((digits_run / "report.json").read_text())["rows"]
    assert page.rows["runs"] == 1 + len(report_rows)
    body = "".join(page.text)
    for row in report_rows:
        assert row["run"] in body
    # Precision and recall of the corrections against the known flips.
    flipped = np.load(digits_run / "full" / "label_noise.npz")["flipped"]
    acted = set(rel) | {o["index"] for o in m["removed_outliers"] if o["reason"].startswith("mislabelled")}
    tp = sum(bool(flipped[i]) for i in acted)
    assert f"precision {tp / len(acted):.4g}, recall {tp / flipped.sum():.4g}" in body


def test_report_command_writes_the_page_and_contact_sheets(digits_run, tmp_path):
    out = cli("report", digits_run, "-o", tmp_path / "r.html", "--png").output
    assert "report: " in out and (tmp_path / "r.html").exists()
    n_rel = len(json.loads((digits_run / "manifest.json").read_text())["relabelled"])
    for key in ("relabelled", "removed", "extremes"):
        sheet = np.asarray(Image.open(tmp_path / f"r_{key}.png").convert("L"), np.float32)
        assert sheet.std() > 20, key  # pictures, not a blank sheet
    rel = Image.open(tmp_path / "r_relabelled.png")
    assert rel.height >= 28 + -(-n_rel // 10) * 96  # one row of up to 10 tiles per 10 samples
    assert Image.open(tmp_path / "r_extremes.png").height >= 28 + 10 * 96  # a row per class


def test_an_imported_trajectory_is_shown_by_ids_sampled_least_confident_first(tmp_path):
    t = synthetic_trajectory(3000, 5, 4, noise_rate=0.2, seed=1)
    np.savez(tmp_path / "t.npz", **t)
    cli("import", tmp_path / "t.npz", "-o", tmp_path / "imp")
    cli("prune", tmp_path / "imp", "-r", 0.3, "--relabel", "--remove-outliers", 0.02, "-o", tmp_path / "m.json", "-q")
    out = cli("report", tmp_path / "m.json").output
    text = (tmp_path / "report.html").read_text()
    page = Page(text)
    assert not page.imgs
    assert "No thumbnails" in out and "imported trajectory" in text
    assert text.count('<div class="thumb">') == sum(len(v) for v in page.items.values())
    # More relabelled samples than the page shows: the least confident corrections are the ones shown.
    m = json.loads((tmp_path / "m.json").read_text())
    rel = np.array(sorted(int(k) for k in m["relabelled"]))
    assert len(rel) > MAX_RELABELLED
    assert f"Relabelled samples ({len(rel)}) (showing {MAX_RELABELLED})" in text
    p_max = load_scores(tmp_path / "imp" / "scores.npz")[0]["p_max"]
    shown = np.array([f["index"] for f in page.items["relabelled"]])
    assert len(shown) == MAX_RELABELLED and set(shown) <= set(rel)
    assert p_max[shown].max() <= np.sort(p_max[rel])[MAX_RELABELLED - 1]
    assert (np.diff(p_max[shown]) >= 0).all()
    # A configuration that names another dataset: its images are not shown under these samples' captions.
    (tmp_path / "pipeline.json").write_text(json.dumps({"base": {"task": "classification", "dataset": "digits"}}))
    out = cli("report", tmp_path / "m.json").output
    assert "holds other samples (1437) than the store (3000)" in out
    assert not Page((tmp_path / "report.html").read_text()).imgs


def test_a_train_prune_at_folder_takes_its_images_from_the_checkpoint_config(tmp_path):
    cli("train", "--out", tmp_path / "r", "--epochs", 2, "--prune-at", 1, "--ratio", 0.5, "--batch-size", 256,
        "--no-progress", "--eval-every", 0)
    cli("report", tmp_path / "r")
    page = Page((tmp_path / "r" / "report.html").read_text())
    assert "training configuration" in "".join(page.text) and "checkpoint.pt" in "".join(page.text)
    assert "runs" not in page.rows  # no dprune run table in a training folder
    assert len(page.items["extremes"]) == 10 * 2 * PER_CLASS
    assert all(f["img"] is not None and f["img"]["src"].startswith("data:image/png") for f in page.items["extremes"])


def test_report_refuses_a_folder_without_a_manifest_in_one_line(tmp_path):
    r = cli("report", tmp_path, ok=False)
    assert r.exit_code == 1 and "holds no manifest.json" in r.output and len(r.output.strip().splitlines()) == 1


def test_epochs_agreeing_counts_observed_finite_epochs_only():
    logits = np.array([[[0, 5.0], [3, 0]], [[0, 1.0], [np.nan, 0]], [[9, 0.0], [0, 2]]])  # [E=3, n=2, C=2]
    counts = np.array([[1, 1], [0, 1], [1, 1]])
    agree, observed = epochs_agreeing(logits, counts, np.array([1, 1]))
    np.testing.assert_array_equal(agree, [1, 1])  # sample 0: epoch 1 unobserved; sample 1: epoch 1 NaN
    np.testing.assert_array_equal(observed, [2, 3])


def test_extremes_and_identities_below_k():
    score = np.array([0.5, 0.1, np.nan, 0.9, 0.3, 0.2])
    labels = np.array([0, 0, 0, 0, 1, 0])
    pruned = np.array([1, 1, 1, 0, 1, 0], bool)
    easy, hard = easiest_and_hardest(score, labels, pruned, ~pruned, 0, 2)
    np.testing.assert_array_equal(easy, [1, 0])
    np.testing.assert_array_equal(hard, [3, 5])
    np.testing.assert_array_equal(identities_below(np.array([4, 3, 1, 0]), np.array([8, 4, 3, 2]), 4), [1])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(page: Path, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_as_a_browser_shows_it(digits_run, tmp_path):
    page = digits_run / "report.html"
    dom = _chromium(page, tmp_path, "--dump-dom").stdout
    parsed = Page(dom)
    n_rel = len(json.loads((digits_run / "manifest.json").read_text())["relabelled"])
    assert len(parsed.items["relabelled"]) == n_rel
    thumbs = [img for img in Page(page.read_text()).imgs if "thumb" in img.get("class", "")]
    assert sum(1 for img in parsed.imgs if "thumb" in img.get("class", "")) == len(thumbs) > n_rel
    shot = tmp_path / "shot.png"
    _chromium(page, tmp_path, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}")
    rgb = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    bg = np.array([int(GALLERY_BG[k:k + 2], 16) for k in (1, 3, 5)])
    is_bg = (np.abs(rgb - bg).sum(-1) <= 3)
    rows = np.flatnonzero(is_bg.sum(1) > 50)
    assert rows.size, "no gallery on the first screen"
    # The first gallery (relabelled) band: rows of gallery background, from its top to the first gap.
    top = rows[0]
    bottom = rows[np.flatnonzero(np.diff(rows) > 1)[0]] if (np.diff(rows) > 1).any() else rows[-1]
    cols = np.flatnonzero(is_bg[top:bottom + 1].any(0))
    band = rgb[top:bottom + 1, cols[0]:cols[-1] + 1]
    assert band.shape[0] > 100 and band.std() > 70  # thumbnails and captions, not an empty box
    # The digits' own black background: with images that fail to decode (a broken-image icon on white) it is 0.
    assert (band.sum(-1) < 60).mean() > 0.05
    target = os.environ.get("DPRUNE_REPORT_SCREENSHOT")
    if target:  # the README's picture: docs/report.png, made by this test
        Image.open(shot).convert("RGB").crop((0, 0, 1280, 1500)).save(target, optimize=True)


def test_the_check_page_names_classes_and_says_which_pictures_could_not_be_read(tmp_path):
    from dprune.report.html import render_check_page

    class Source:  # an ImageSource with class names; two images unreadable (the reader's two errors)
        class_names = ["cat", "dog", "owl"]

        def thumbnail(self, i):
            if i == 3:
                raise OSError("truncated file")
            if i == 0:
                raise ValueError("cannot read image: decompression bomb")
            return Image.new("L", (8, 8), 40 * i)

    labels = np.array([0, 2, 1, 2, 0, 7])  # 7: a class without a name
    page = render_check_page([f"img{i}" for i in range(6)], labels, np.array([4, 3, 1, 0, 5]), Source())
    assert "<b>0</b> cat, <b>1</b> dog, <b>2</b> owl" in page
    tiles = re.findall(r"<b>row (\d)</b><br>(\w+)<br>given ([^<]+)</figcaption>", page)
    assert tiles == [("1", "img4", "0 (cat)"), ("2", "img3", "2 (owl)"), ("3", "img1", "2 (owl)"),
                     ("4", "img0", "0 (cat)"), ("5", "img5", "7")]
    assert page.count("<img class=") == 3 and "2 images could not be read, e.g. #3: truncated file" in page
