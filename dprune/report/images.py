"""Training images for the visual report: rebuilt with the dataset's own loader, shown as thumbnails.

A run records the training configuration it was made with (``pipeline.json`` of ``dprune
run``, the checkpoint of ``dprune train``), so the report can rebuild the training set and
fetch an image by its index in the store.  The rebuilt set must name the same samples as
the store (its sample ids), or no image is shown: a thumbnail of another image under a
sample's caption would mislead.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB_SIDE = 96
"""Largest side of an embedded thumbnail, in pixels (smaller images are embedded as they are)."""
TINY_SIDE = 32
"""Images up to this side are embedded losslessly (PNG) and enlarged with visible pixels."""


def training_config(manifest_dir: Path, store_dir: Path) -> tuple[dict | None, str]:
    """The training configuration (``TrainConfig`` fields) that recorded ``store_dir``, and where it came from.

    Looked for in ``manifest_dir/pipeline.json`` (a ``dprune run`` folder), then in the checkpoint
    of the ``dprune train`` folder holding the store.  Returns ``(None, why)`` when there is none
    (an imported trajectory, a DeepSpeed run).
    """
    import json

    pipeline = manifest_dir / "pipeline.json"
    if pipeline.is_file():
        try:
            return json.loads(pipeline.read_text(encoding="utf-8"))["base"], str(pipeline)
        except (ValueError, KeyError, TypeError) as e:
            return None, f"{pipeline} is unreadable ({e})"
    ckpt = store_dir.parent / "checkpoint.pt"
    if ckpt.is_file():
        import torch

        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
            return dict(state["config"]), str(ckpt)
        except Exception as e:  # a foreign or torn file: the page says so instead of failing
            return None, f"{ckpt} holds no readable training configuration ({type(e).__name__})"
    return None, (f"the store {store_dir} was not recorded by dprune train or dprune run here (no "
                  f"{pipeline.name} beside the manifest, no {ckpt.name} beside the store), e.g. an imported "
                  f"trajectory: there is no dataset to take images from")


def open_images(cfg: dict | None, cfg_source: str, sample_ids: list[str]):
    """``(images, why)``: the :class:`ImageSource` of the configuration ``training_config`` found, or
    None and why there is none (``cfg_source``'s reason, or why the images could not be read)."""
    if cfg is None:
        return None, cfg_source
    try:
        return ImageSource.from_config(cfg, sample_ids), None
    except (ValueError, OSError) as e:
        return None, f"the training images could not be read ({e})"


class ImageSource:
    """The training images of a store, by sample index, and the names of its classes.

    Build it with :meth:`from_config`; it refuses a dataset whose sample ids differ from the store's.
    """

    def __init__(self, dataset, class_names: list[str] | None, description: str):
        self.dataset = dataset
        self.class_names = class_names
        self.description = description

    @classmethod
    def from_config(cls, cfg: dict, sample_ids: list[str]) -> "ImageSource":
        """Rebuild the training set of ``cfg`` (``task``, ``dataset``, ``data_root``) without transforms.

        Raises ValueError or OSError naming the reason when the data cannot be read or do not match
        ``sample_ids`` (the store's, length N).
        """
        task, name, root = cfg.get("task", "classification"), cfg.get("dataset"), cfg.get("data_root")
        if task == "reid":
            from ..data.reid import ReIDImageDataset, build_reid_dataset

            reid = build_reid_dataset(name, root)
            ds = ReIDImageDataset(reid.train, reid.root, None)
            original = {label: pid for pid, label in reid.pid_map.items()}
            names = [f"id {original.get(c, c)}" for c in range(ds.num_classes)]
        else:
            from ..data import build_dataset

            ds, _ = build_dataset(name, root, train_transform=None, test_transform=None,
                                  image_size=int(cfg.get("image_size", 224)))
            names = ds.class_names
        if list(ds.sample_ids) != list(sample_ids):
            raise ValueError(f"the {name} training set read from {root or 'its default place'} holds other samples "
                             f"({len(ds)}) than the store ({len(sample_ids)}): not the data it was recorded on")
        where = f" from {root}" if root else ""
        return cls(ds, names, f"{name} training set{where}, read with dprune's loader")

    def thumbnail(self, i: int) -> Image.Image:
        """Sample ``i`` as a PIL image (grey ``L`` or ``RGB``), at most :data:`THUMB_SIDE` on its longer side."""
        from ..data import to_float_chw

        x_CHW = to_float_chw(self.dataset.load_image(int(i))).clamp(0, 1).mul(255).round().byte().numpy()
        img = Image.fromarray(x_CHW[0], "L") if x_CHW.shape[0] == 1 else Image.fromarray(
            np.ascontiguousarray(x_CHW[:3].transpose(1, 2, 0)), "RGB")
        if max(img.size) > THUMB_SIDE:
            img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)
        return img


def is_tiny(img: Image.Image) -> bool:
    return max(img.size) <= TINY_SIDE


def data_uri(img: Image.Image) -> str:
    """The image as a ``data:`` URI: PNG for tiny images (exact pixels), JPEG for photographs (small)."""
    buf = io.BytesIO()
    if is_tiny(img):
        img.save(buf, "PNG", optimize=True)
        mime = "image/png"
    else:
        img.save(buf, "JPEG", quality=85)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------- contact sheets
TILE = 96
CAPTION_LINES = 3
CAPTION_CHARS = 22
LINE_H = 12
CELL_W = 140  # CAPTION_CHARS of PIL's default font, and a margin


def _fit(img: Image.Image, side: int) -> Image.Image:
    """``img`` scaled to fit a ``side`` square (tiny images enlarged with visible pixels)."""
    img = img.convert("RGB")
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.NEAREST if is_tiny(img) else Image.LANCZOS)


def contact_sheet(title: str, rows: list[tuple[str, list]], path, *, columns: int | None = None) -> Path:
    """Write a PNG grid of captioned tiles.

    ``rows``: ``(row label, tiles)``; a tile is ``(PIL image or None, caption lines, tone)`` or None
    for a gap; tone ``"good"``/``"bad"`` draws a green/red frame.  ``columns`` wraps long rows.
    """
    font = ImageFont.load_default()
    wrapped: list[tuple[str, list]] = []
    for label, tiles in rows:
        step = columns or max(1, len(tiles))
        for k in range(0, max(1, len(tiles)), step):
            wrapped.append((label if k == 0 else "", tiles[k:k + step]))
    label_w = 90 if any(label for label, _ in wrapped) else 0
    n_cols = max([len(t) for _, t in wrapped] + [1])
    cell_w, cell_h = CELL_W, TILE + 8 + CAPTION_LINES * LINE_H
    W, H = label_w + n_cols * cell_w + 8, 28 + len(wrapped) * cell_h + 8
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), title, fill="black", font=font)
    for r, (label, tiles) in enumerate(wrapped):
        y = 28 + r * cell_h
        if label:
            draw.text((8, y + TILE // 2), label[:14], fill="black", font=font)
        for c, tile in enumerate(tiles):
            if tile is None:
                continue
            img, lines, tone = tile
            x = label_w + c * cell_w + (cell_w - TILE) // 2
            if img is None:
                draw.rectangle([x, y, x + TILE - 1, y + TILE - 1], fill="#dddddd")
                draw.text((x + 4, y + TILE // 2 - 6), "no image", fill="#555555", font=font)
            else:
                t = _fit(img, TILE)
                sheet.paste(t, (x + (TILE - t.width) // 2, y + (TILE - t.height) // 2))
            if tone in ("good", "bad"):
                draw.rectangle([x - 2, y - 2, x + TILE + 1, y + TILE + 1], outline="#2a9d4b" if tone == "good"
                               else "#d62728", width=2)
            for k, line in enumerate(lines[:CAPTION_LINES]):
                line = line.replace("→", "->")[:CAPTION_CHARS]  # the default font has no arrow
                draw.text((label_w + c * cell_w + 4, y + TILE + 3 + k * LINE_H), line, fill="black", font=font)
    path = Path(path)
    sheet.save(path, "PNG", optimize=True)
    return path
