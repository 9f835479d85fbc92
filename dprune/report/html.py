"""The visual report: one self-contained ``report.html`` (thumbnails as data URIs), and PNG contact sheets.

    dprune report RUN_OR_MANIFEST [-o report.html] [--png]

The page opens from disk with no server and no network: every image is embedded.  What it
shows is decided in :mod:`dprune.report.content`; this module only lays it out.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ..fileio import atomic_write_text
from .content import Gallery, Item, ReportContent, collect

GALLERY_BG = "#efe9dc"
"""Background of every gallery: a colour nothing else on the page uses, so a screenshot test can find them."""

_RUN_HEADERS = {"rel": "× one full training", "cost": "sample-epochs", "seconds": "wall s",
            "kept": "train samples after pruning", "run": "way to the model"}

_CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fff; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: 6px 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
table.sources td {{ text-align: left; border: none; padding: 0 8px 0 0; color: #555; }}
p.note {{ color: #555; margin: 4px 0; }} p.warn {{ color: #8a4b00; background: #fff4e0; padding: 4px 8px; }}
.plots img {{ max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 6px; background: {GALLERY_BG}; padding: 8px; }}
.item {{ width: 118px; margin: 0; padding: 3px; background: #fff; border: 3px solid #bbb; font-size: 11px;
        line-height: 1.25; overflow-wrap: anywhere; }}
.item.good {{ border-color: #2a9d4b; }} .item.bad {{ border-color: #d62728; }}
.item b {{ font-size: 13px; }}
.thumb {{ display: block; width: 96px; height: 96px; margin: 0 auto 2px; object-fit: contain; }}
.thumb.px {{ image-rendering: pixelated; }}
div.thumb {{ background: #ddd; color: #444; font-size: 10px; padding: 4px; box-sizing: border-box; }}
.xrow {{ display: flex; gap: 10px; align-items: stretch; margin-bottom: 8px; }}
.xrow .name {{ width: 90px; font-weight: bold; align-self: center; }}
.xrow .gallery {{ flex: 1; }} .xrow .item {{ width: 88px; }} .xrow .thumb {{ width: 80px; height: 80px; }}
.xhead {{ display: flex; gap: 10px; font-weight: bold; }} .xhead div {{ flex: 1; }}
.xhead div:first-child {{ flex: 0 0 90px; }}
.bar {{ display: inline-block; width: 120px; height: 10px; background: #f2c9c9; vertical-align: middle; }}
.bar span {{ display: block; height: 10px; background: #4c72b0; }}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _table(rows: list[dict], cls: str, *, headers: dict | None = None, bar_key: str | None = None) -> str:
    """Every key of every row, in order of first appearance (rows may differ: missing cells stay empty)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    head = "".join(f"<th>{_e((headers or {}).get(k, k))}</th>" for k in keys)
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            text = _e(_fmt(v))
            if k == bar_key and isinstance(v, float) and math.isfinite(v):
                text = f'<span class="bar"><span style="width:{100 * v:.0f}%"></span></span> {text}'
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(body)}</table>'


def _thumb_html(sample_ids: list[str], i: int, thumbs: dict[int, tuple[str, bool] | None]) -> str:
    t = thumbs.get(i)
    if t is None:
        return f'<div class="thumb">#{i}<br>{_e(sample_ids[i])}</div>'
    uri, tiny = t
    return f'<img class="thumb{" px" if tiny else ""}" src="{uri}" alt="#{i}">'


def _item_html(content: ReportContent, it: Item, thumbs) -> str:
    lines = "".join(f"<br>{_e(line)}" for line in it.lines)
    tone = f" {it.tone}" if it.tone else ""
    return (f'<figure class="item{tone}" data-index="{it.index}">{_thumb_html(content.sample_ids, it.index, thumbs)}'
            f"<figcaption><b>{_e(it.title)}</b>{lines}</figcaption></figure>")


def _gallery_html(content: ReportContent, g: Gallery, thumbs) -> str:
    shown = f" (showing {len(g.items)})" if len(g.items) < g.total else ""
    body = "".join(_item_html(content, it, thumbs) for it in g.items) or '<p class="note">none</p>'
    return (f'<section id="{g.key}"><h2>{_e(g.title)}{shown}</h2><p class="note">{_e(g.note)}</p>'
            f'<div class="gallery">{body}</div></section>')


def _thumbnails(images, indices) -> tuple[dict[int, tuple[str, bool] | None], list[str]]:
    """Index -> (data URI, tiny) for each of ``indices`` (None where no image could be read; nothing when
    ``images``, an :class:`~dprune.report.images.ImageSource`, is None), and a note on the images that
    could not be read."""
    from .images import data_uri, is_tiny

    out: dict[int, tuple[str, bool] | None] = {}
    if images is None:
        return out, []
    failed = []
    for i in indices:
        try:
            img = images.thumbnail(i)
            out[i] = (data_uri(img), is_tiny(img))
        except (ValueError, OSError) as e:
            out[i] = None
            failed.append(f"#{i}: {e}")
    return out, [f"{len(failed)} images could not be read, e.g. {failed[0]}"] if failed else []


def render_html(content: ReportContent) -> str:
    """The whole page as one string (images embedded)."""
    shown = {it.index for g in content.galleries for it in g.items}
    shown |= {it.index for x in content.extremes for it in x.easiest_pruned + x.hardest_kept}
    thumbs, unread = _thumbnails(content.images, sorted(shown))
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(content.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(content.title)}</h1>"]
    parts.append('<table class="sources">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                                     for k, v in content.sources) + "</table>")
    parts += [f'<p class="warn">{_e(n)}</p>' for n in content.notes + unread]
    if content.run_rows or content.summary or content.plots:
        parts.append('<section id="runs"><h2>Accuracy and cost</h2>')
        if content.run_rows:
            parts.append(_table(content.run_rows, "runs", headers=_RUN_HEADERS))
        if content.summary:
            parts.append("<ul>" + "".join(f"<li>{_e(s.replace('**', '').replace('`', ''))}</li>"
                                          for s in content.summary) + "</ul>")
        if content.plots:
            parts.append('<div class="plots">' + "".join(
                f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode("ascii")}" '
                f'alt="{_e(p.name)}">' for p in content.plots) + "</div>")
        parts.append("</section>")
    if content.noise is not None:
        n = content.noise
        parts.append(
            '<section id="noise"><h2>Corrections against the injected label noise</h2>'
            f'<p>{n["flipped"]:,} labels were flipped on purpose. Acted on as mislabelled: {n["acted"]:,} '
            f'(relabelled {n["relabelled"]:,}, removed {n["removed_as_mislabelled"]:,}), of which '
            f'{n["true_positives"]:,} were flipped: <b>precision {_fmt(n["precision"])}, recall '
            f'{_fmt(n["recall"])}</b>. New labels equal to the clean ones: {n["corrections_right"]:,} of '
            f'{n["relabelled"]:,}.</p></section>')
    parts += [_gallery_html(content, g, thumbs) for g in content.galleries]
    parts.append(f'<section id="extremes"><h2>Per class: easiest pruned, hardest kept</h2>'
                 f'<p class="note">{_e(content.extremes_note)}</p>')
    if content.extremes:
        parts.append('<div class="xhead"><div></div><div>easiest pruned</div><div>hardest kept</div></div>')
    for x in content.extremes:
        sides = ["".join(_item_html(content, it, thumbs) for it in items) or '<p class="note">none</p>'
                 for items in (x.easiest_pruned, x.hardest_kept)]
        parts.append(f'<div class="xrow"><div class="name">{_e(x.name)}</div><div class="gallery pruned">'
                     f'{sides[0]}</div><div class="gallery kept">{sides[1]}</div></div>')
    parts.append("</section>")
    unit = "identity" if content.below_k is not None else "class"
    parts.append(f'<section id="classes"><h2>Kept and pruned per {unit}</h2><p class="note">'
                 f'{_e(content.class_note)}</p>{_table(content.class_rows, "classes", bar_key="kept fraction")}'
                 "</section>")
    if content.below_k is not None:
        K = content.below_k[0]["K"] if content.below_k else None
        body = (_table(content.below_k, "below-k") if content.below_k
                else '<p class="note">none: every identity kept at least K images or had fewer to start with</p>')
        parts.append(f'<section id="below-k"><h2>Identities that fell below K images{f" (K = {K})" if K else ""}'
                     f'</h2><p class="note">the P×K sampler repeats their images to fill a group</p>{body}</section>')
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(content: ReportContent, path) -> Path:
    path = Path(path)
    atomic_write_text(path, render_html(content))
    return path


def write_html_report(run_or_manifest, out=None) -> Path:
    """Write the report of a ``dprune run`` folder, a ``dprune train`` folder or a manifest; return its path.

    Default output: ``report.html`` beside the manifest.
    """
    content = collect(run_or_manifest)
    return write_html(content, out if out is not None else content.run_dir / "report.html")


def write_contact_sheets(content: ReportContent, prefix) -> list[Path]:
    """The report's galleries as PNG grids: ``{prefix}_relabelled.png``, ``_removed.png``, ``_extremes.png``."""
    from .images import contact_sheet

    def tile(it: Item):
        img = None
        if content.images is not None:
            try:
                img = content.images.thumbnail(it.index)
            except (ValueError, OSError):
                pass
        return img, [it.title, *it.lines], it.tone

    prefix = Path(prefix)
    paths = []
    for g in content.galleries:
        paths.append(contact_sheet(g.title, [("", [tile(it) for it in g.items])],
                                   f"{prefix}_{g.key}.png", columns=10))
    rows = [(x.name, [tile(it) for it in x.easiest_pruned] + [None] + [tile(it) for it in x.hardest_kept])
            for x in content.extremes]
    paths.append(contact_sheet("Per class: easiest pruned | hardest kept", rows, f"{prefix}_extremes.png"))
    return paths


def render_check_page(sample_ids: list[str], labels_N, idx_M, images, note: str | None = None) -> str:
    """The page beside a ``dprune check-labels`` sheet: row k of the sheet as sample ``idx_M[k]``'s picture,
    its id and its given label (with the class name where the dataset has names).

    ``images``: a :class:`dprune.report.images.ImageSource`, or None (no pictures; ``note`` says why).
    Self-contained like ``report.html``: it opens from disk with no server and no network.  An image
    that cannot be read becomes a tile without a picture, as in the report, and the page says how many.
    """
    names = images.class_names if images is not None and images.class_names else None
    if names and all(n == str(c) for c, n in enumerate(names)):
        names = None  # the names are the indices (digits): nothing to add

    def name(c: int) -> str:
        return f"{c} ({names[c]})" if names and 0 <= c < len(names) else str(c)

    title = f"Labels to check: {len(idx_M)} samples drawn uniformly"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             '<p class="note">Tile k is row k of the sheet (the CSV beside this page). Fill its checked_label '
             "with the class index the picture really shows; leave a row empty when you cannot tell (empty rows "
             "are not counted). Check the tiles in order: the first rows of a half-filled sheet are still a "
             "uniform sample.</p>"]
    if names:
        parts.append("<p>Classes: " + ", ".join(f"<b>{c}</b> {_e(n)}" for c, n in enumerate(names)) + "</p>")
    idx = [int(i) for i in idx_M]
    thumbs, unread = _thumbnails(images, idx)
    parts += [f'<p class="warn">{_e(n)}</p>' for n in ([note] if note else []) + unread]
    tiles = [f'<figure class="item" data-index="{i}">{_thumb_html(sample_ids, i, thumbs)}<figcaption><b>row {k}'
             f"</b><br>{_e(sample_ids[i])}<br>given {_e(name(int(labels_N[i])))}</figcaption></figure>"
             for k, i in enumerate(idx, start=1)]
    parts.append(f'<div class="gallery">{"".join(tiles)}</div></body></html>\n')
    return "".join(parts)
