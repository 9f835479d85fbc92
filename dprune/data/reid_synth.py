"""Tiny synthetic ReID datasets in the real on-disk layouts, with known label errors.

Tests and examples need Market-1501, MSMT17 and VeRi-776 folders without downloading
them, and pruning experiments need to know which training labels are wrong.  Each
identity gets its own appearance (three coloured bands, like head / torso / legs, and a
stripe pattern) so a small CNN can learn it; each camera tints and shifts the images a
little, and every identity is seen by at least two cameras.

A fraction of the training images are deliberately mislabelled: the file depicts one
training identity but is named (and listed) with another one's pid.  The ground truth is
returned and written to ``_synthetic_truth.json`` at ``root``.
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write_json

LAYOUTS = ("market1501", "msmt17_v1", "msmt17_v2", "veri776")
TRUTH_FILE = "_synthetic_truth.json"


class _Renderer:
    """Draws ``[H, W, 3]`` uint8 images of identities seen by cameras.

    ``hardness`` 0 draws every image of an identity almost alike (easy: a small CNN
    retrieves them perfectly).  Above 0, the identities' colours move towards grey (they
    look more alike), and each image gets its own brightness, a larger shift, more pixel
    noise and, with probability ``hardness / 2``, an occluder hiding a third to a half of
    the body: images of one identity range from typical to hard, as in real data.
    """

    def __init__(self, rng: np.random.Generator, n_identities: int, n_cams: int,
                 size: tuple[int, int], hardness: float = 0.0) -> None:
        self.rng = rng
        self.h, self.w = size
        self.hardness = hardness
        # Band colours far from each other on average: uniform RGB over [20, 235].
        self.colours = rng.integers(20, 236, size=(n_identities, 3, 3)).astype(np.float64)
        self.colours = (1.0 - 0.6 * hardness) * self.colours + 0.6 * hardness * 128.0
        self.stripes = rng.integers(0, 4, size=n_identities)  # 0 = none, else period + 1
        self.cam_tint = rng.uniform(0.85, 1.15, size=(n_cams, 3))

    def identity(self, who: int, cam: int) -> np.ndarray:
        bounds = np.linspace(0, self.h, 4).round().astype(int)
        img = np.empty((self.h, self.w, 3), dtype=np.float64)
        for band in range(3):
            img[bounds[band]:bounds[band + 1]] = self.colours[who, band]
        if self.stripes[who]:
            period = int(self.stripes[who]) + 1
            torso = slice(bounds[1], bounds[2])
            img[torso, ::period] = 255 - img[torso, ::period]
        img *= self.cam_tint[cam]
        h = self.hardness
        if h > 0:
            img *= self.rng.uniform(1.0 - 0.4 * h, 1.0 + 0.4 * h)
            if self.rng.random() < h / 2:
                top = int(self.rng.integers(0, self.h // 2 + 1))
                height = int(self.rng.integers(self.h // 3, self.h // 2 + 1))
                img[top:top + height] = self.rng.integers(0, 256, size=3)
            img = np.roll(img, int(self.rng.integers(-(self.h // 8), self.h // 8 + 1)), axis=0)
        shift = max(1, round(h * self.w / 4))
        img = np.roll(img, int(self.rng.integers(-shift, shift + 1)), axis=1)
        img += self.rng.normal(0.0, 8.0 + 32.0 * h, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    def noise(self) -> np.ndarray:
        return self.rng.integers(0, 256, size=(self.h, self.w, 3), dtype=np.uint8)


def _check_args(layout: str, n_ids: int, n_cams: int, images_per_id: int, noise_rate: float,
                junk: int, distractors: int, size: tuple[int, int], image_format: str,
                hardness: float) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    for name, value, low in (("n_ids", n_ids, 2), ("n_cams", n_cams, 2),
                             ("images_per_id", images_per_id, 2), ("junk", junk, 0),
                             ("distractors", distractors, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must lie in [0, 1], got {noise_rate!r}")
    if not 0.0 <= hardness <= 1.0:
        raise ValueError(f"hardness must lie in [0, 1], got {hardness!r}")
    if layout.startswith("msmt17") and n_cams > 99:
        raise ValueError(f"MSMT17 names hold a 2-digit camera; got n_cams={n_cams}")
    if layout == "market1501" and n_cams > 9:
        raise ValueError(f"Market-1501 names hold a 1-digit camera; got n_cams={n_cams}")
    if len(size) != 2 or min(size) < 3:
        raise ValueError(f"size must be (height, width) with both >= 3, got {size!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")


def make_synthetic_reid(
    root: str | os.PathLike,
    layout: str,
    *,
    n_ids: int = 12,
    n_cams: int = 4,
    images_per_id: int = 6,
    noise_rate: float = 0.1,
    junk: int = 3,
    distractors: int = 3,
    seed: int = 0,
    size: tuple[int, int] = (32, 16),
    image_format: str = "jpg",
    hardness: float = 0.0,
) -> dict:
    """Write a small ReID dataset in a real layout under ``root``.

    Parameters
    ----------
    root : str or path-like
        Output folder (created).  Market-1501 and VeRi-776 are written directly in it;
        MSMT17 in ``root/MSMT17_V1`` or ``root/MSMT17_V2``, as torchreid expects.
    layout : str
        ``market1501``, ``msmt17_v1``, ``msmt17_v2`` or ``veri776``.
    n_ids : int
        Identities in all; the first ``ceil(n_ids / 2)`` are training identities, the
        others test identities (disjoint, as in the real datasets).
    n_cams : int
        Cameras.  The images of an identity cycle through the cameras from a random
        start, so with ``images_per_id >= 2`` every identity is seen by two cameras.
    images_per_id : int
        Images of each identity.  Test identities give their first image to the query
        set and the rest to the gallery (VeRi-776: ``image_test/`` also holds the query
        images, as in the real dataset).  MSMT17: the last image of every other training
        identity goes to ``list_val.txt``.
    noise_rate : float
        Fraction of the training images (``list_train.txt`` for MSMT17) that depict a
        different training identity than the pid they are named with, rounded half up.
    junk, distractors : int
        Market-1501 only: gallery images of pid -1 (random noise) and pid 0 (people who
        are not in the dataset), as in ``bounding_box_test/``.
    seed : int
        The same arguments and seed write the same files.
    size : (int, int)
        Image (height, width).
    image_format : str
        ``jpg`` or ``png``.
    hardness : float
        In [0, 1].  0: every image of an identity looks almost alike (easy).  Larger values
        make identities look more alike and give each image its own brightness, shift,
        noise and, with probability ``hardness / 2``, an occluder (see ``_Renderer``).

    Returns
    -------
    dict
        The ground truth, also written to ``root/_synthetic_truth.json``: ``dataset_dir``
        (the folder the readers' relative paths start from, relative to ``root``),
        original ``train_ids`` and ``test_ids``, expected split sizes after the readers'
        filtering in ``counts`` (``train``, ``val``, ``query``, ``gallery``, ``junk``,
        ``distractors``), and ``mislabelled``: one ``{"relpath", "given_pid",
        "true_pid"}`` per corrupted training image (original pids; ``relpath`` as in the
        readers' records).
    """
    _check_args(layout, n_ids, n_cams, images_per_id, noise_rate, junk, distractors,
                tuple(size), image_format, hardness)
    rng = np.random.default_rng(seed)
    n_train = math.ceil(n_ids / 2)
    renderer = _Renderer(rng, n_ids + distractors, n_cams, tuple(size), hardness)
    original = _original_pids(rng, layout, n_ids, n_train)
    slots = _slots(rng, layout, n_ids, n_train, n_cams, images_per_id)
    wrong, depicted = _mislabel(rng, slots, noise_rate, n_ids, n_train)

    dataset_dir, files, lists = _LAYOUT_FILES[layout](slots, original, image_format)
    base = Path(root) / dataset_dir
    _write_images(base, files, lists, slots, depicted, renderer)
    if layout == "market1501":
        _write_junk_and_distractors(base, rng, renderer, len(slots), junk, distractors, n_ids, n_cams,
                                    image_format)

    slot_file = {}
    for relpath, slot in files:
        slot_file.setdefault(slot, relpath)
    truth = {
        "layout": layout,
        "dataset_dir": dataset_dir,
        "seed": seed,
        "hardness": hardness,
        "n_cams": n_cams,
        "train_ids": [int(p) for p in original[:n_train]],
        "test_ids": [int(p) for p in original[n_train:]],
        "counts": _counts(layout, slots, junk, distractors),
        "mislabelled": [
            {"relpath": slot_file[i], "given_pid": int(original[slots[i][0]]),
             "true_pid": int(original[depicted[i]])}
            for i in sorted(wrong)],
    }
    atomic_write_json(Path(root) / TRUTH_FILE, truth)
    return truth


def _counts(layout: str, slots: list, junk: int, distractors: int) -> dict[str, int]:
    """The split sizes the readers will find (after dropping junk), and the extras written."""
    by_role = {r: sum(1 for s in slots if s[2] == r) for r in ("train", "val", "query", "gallery")}
    if layout == "veri776":
        by_role["gallery"] += by_role["query"]
    if layout == "market1501":
        by_role["gallery"] += distractors
    return {**by_role, "junk": junk if layout == "market1501" else 0,
            "distractors": distractors if layout == "market1501" else 0}


def _original_pids(rng: np.random.Generator, layout: str, n_ids: int, n_train: int) -> np.ndarray:
    """The pids in the file names, train identities first: int [n_ids]."""
    if layout == "market1501":
        return np.sort(rng.choice(np.arange(1, 1502), size=n_ids, replace=False))
    if layout == "veri776":
        return np.sort(rng.choice(np.arange(1, 777), size=n_ids, replace=False))
    # MSMT17 numbers train and test identities from 0 separately.
    return np.concatenate([np.arange(n_train), np.arange(n_ids - n_train)])


def _slots(rng: np.random.Generator, layout: str, n_ids: int, n_train: int, n_cams: int,
           images_per_id: int) -> list[tuple[int, int, str]]:
    """Every image slot: (identity index, camera, role)."""
    slots = []
    for who in range(n_ids):
        start = int(rng.integers(n_cams))
        for k in range(images_per_id):
            cam = (start + k) % n_cams
            if who < n_train:
                role = "val" if (layout.startswith("msmt17") and who % 2 == 1
                                 and k == images_per_id - 1 and images_per_id > 2) else "train"
            else:
                role = "query" if k == 0 else "gallery"
            slots.append((who, cam, role))
    return slots


def _mislabel(rng: np.random.Generator, slots: list, noise_rate: float, n_ids: int,
              n_train: int) -> tuple[list[int], dict[int, int]]:
    """The training slots that depict another identity, and the identity each slot depicts."""
    train_slots = [i for i, s in enumerate(slots) if s[2] == "train"]
    n_wrong = math.floor(noise_rate * len(train_slots) + 0.5)
    wrong = [int(i) for i in rng.choice(train_slots, size=n_wrong, replace=False)]
    depicted = {i: slots[i][0] for i in range(len(slots))}
    if n_wrong and n_train < 2:
        raise ValueError(f"noise_rate > 0 needs two training identities; n_ids={n_ids} gives "
                         f"{n_train}")
    for i in wrong:
        # An offset in [1, n_train) never gives back the named identity.
        depicted[i] = (slots[i][0] + int(rng.integers(1, n_train))) % n_train
    return wrong, depicted


def _write_images(base: Path, files: list, lists: dict, slots: list, depicted: dict[int, int],
                  renderer: _Renderer) -> None:
    cache: dict[int, np.ndarray] = {}
    for relpath, slot in files:
        # VeRi's image_test/ holds copies of the query images: the same picture.
        if slot not in cache:
            cache[slot] = renderer.identity(depicted[slot], slots[slot][1])
        (base / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cache[slot]).save(base / relpath)
    for relpath, text in lists.items():
        (base / relpath).write_text(text, encoding="utf-8")


def _write_junk_and_distractors(base: Path, rng: np.random.Generator, renderer: _Renderer, n_slots: int,
                                junk: int, distractors: int, n_ids: int, n_cams: int, ext: str) -> None:
    """Market-1501's gallery extras: pid -1 (noise images) and pid 0 (identities not in the dataset)."""
    frame = n_slots
    for pid, count, first_identity in (("-1", junk, None), ("0000", distractors, n_ids)):
        for j in range(count):
            frame += 1
            cam = int(rng.integers(n_cams))
            name = f"{pid}_c{cam + 1}s1_{frame:06d}_00.{ext}"
            image = (renderer.noise() if first_identity is None
                     else renderer.identity(first_identity + j, cam))
            Image.fromarray(image).save(base / "bounding_box_test" / name)


# Each layout maps the image slots to (dataset_dir, [(relpath, slot)], {list relpath: text}).

def _market_files(slots: list, original: np.ndarray, ext: str) -> tuple[str, list, dict]:
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    files = []
    for i, (who, cam, role) in enumerate(slots):
        name = f"{original[who]:04d}_c{cam + 1}s{1 + i % 6}_{i + 1:06d}_01.{ext}"
        files.append((f"{folders[role]}/{name}", i))
    return "", files, {}


def _msmt_files(version: str, train_dir: str, test_dir: str, slots: list,
                original: np.ndarray, ext: str) -> tuple[str, list, dict]:
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    files = []
    for i, (who, cam, role) in enumerate(slots):
        pid = int(original[who])
        rel = f"{pid:04d}/{pid:04d}_{i % 1000:03d}_{cam + 1:02d}_0303morning_{i:04d}_0.{ext}"
        folder = train_dir if role in ("train", "val") else test_dir
        lists[role].append(f"{rel} {pid}\n")
        files.append((f"{folder}/{rel}", i))
    return version, files, {f"list_{role}.txt": "".join(lines) for role, lines in lists.items()}


def _veri_files(slots: list, original: np.ndarray, ext: str) -> tuple[str, list, dict]:
    folders = {"train": ["image_train"], "query": ["image_query", "image_test"],
               "gallery": ["image_test"]}
    files = []
    for i, (who, cam, role) in enumerate(slots):
        name = f"{original[who]:04d}_c{cam + 1:03d}_{i + 1:08d}_0.{ext}"
        files += [(f"{folder}/{name}", i) for folder in folders[role]]
    return "", files, {}


_LAYOUT_FILES = {
    "market1501": _market_files,
    "msmt17_v1": partial(_msmt_files, "MSMT17_V1", "train", "test"),
    "msmt17_v2": partial(_msmt_files, "MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    "veri776": _veri_files,
}
