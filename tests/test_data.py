"""Tests of dprune.data: loaders on fixtures written in the real release layouts, path and
pickle safety, the index-carrying wrapper and synthetic label noise."""
from __future__ import annotations

import gzip
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dprune.data import (
    DATASET_NAMES,
    FASHION_MNIST_ROOT,
    IndexedDataset,
    RefusedPickleError,
    TensorImageDataset,
    build_dataset,
    class_dependent_noise,
    load_cifar,
    load_cub200,
    load_digits_dataset,
    load_imagefolder,
    load_mnist,
    load_restricted_pickle,
    read_idx,
    resolve_under,
    symmetric_noise,
)


# --------------------------------------------------------------------------- helpers

def _py2_pickle(obj: dict) -> bytes:
    """The bytes Python 2's ``cPickle.dump(obj, f, 2)`` writes for a CIFAR batch dict.

    The released CIFAR files were made this way: str keys (SHORT_BINSTRING, loading as
    bytes), numpy 1.x globals under ``numpy.core``, the array's raw data as one BINSTRING.
    Handles str, int, list and uint8 arrays, which is all a CIFAR batch holds.
    """
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        if len(b) < 256:
            out.extend(b"U" + bytes([len(b)]) + b)
        else:
            out.extend(b"T" + struct.pack("<I", len(b)) + b)

    def integer(v: int) -> None:
        out.extend(b"J" + struct.pack("<i", v))

    def value(v: object) -> None:
        if isinstance(v, str):
            string(v.encode())
        elif isinstance(v, int):
            integer(v)
        elif isinstance(v, list):
            out.extend(b"](")
            for x in v:
                value(x)
            out.extend(b"e")
        else:
            assert isinstance(v, np.ndarray) and v.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            string(b"b")
            out.extend(b"\x87R(K\x01(")
            for d in v.shape:
                integer(d)
            out.extend(b"tcnumpy\ndtype\n")
            string(b"u1")
            out.extend(b"K\x00K\x01\x87R(K\x03")
            string(b"|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(v.tobytes())
            out.extend(b"tb")

    out.extend(b"}(")
    for k, v in obj.items():
        string(k.encode())
        value(v)
    out.extend(b"u.")
    return bytes(out)


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_cifar100(root: Path, n_train: int = 7, n_test: int = 3, protocol: int = 2) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data = _cifar_images(n, seed)
        fine = [(7 * k + seed) % 100 for k in range(n)]
        batch = {b"filenames": [f"img_{k}.png".encode() for k in range(n)],
                 b"batch_label": split.encode(), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine], b"data": data}
        with open(base / split, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        out[split] = (data, fine)
    meta = {b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
            b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)]}
    with open(base / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return out


def _write_cifar10_py2(root: Path, per_batch: int = 2) -> np.ndarray:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    all_data = []
    for k, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        data = _cifar_images(per_batch, 10 + k)
        labels = [(k + j) % 10 for j in range(per_batch)]
        all_data.append((data, labels))
        (base / name).write_bytes(_py2_pickle(
            {"batch_label": name, "labels": labels, "data": data,
             "filenames": [f"f{k}_{j}.png" for j in range(per_batch)]}))
    (base / "batches.meta").write_bytes(_py2_pickle(
        {"num_cases_per_batch": per_batch, "num_vis": 3072,
         "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                         "horse", "ship", "truck"]}))
    return all_data


def _png(path: Path, size=(6, 5), mode="RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = np.full(shape, value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _write_cub(root: Path, images: list[tuple[str, int, int]], *, create_files=True) -> Path:
    """CUB_200_2011 with ``images`` = [(relpath, class 1-based, is_train)], ids from 1."""
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    lines = [f"{k} {rel}" for k, (rel, _, _) in enumerate(images, 1)]
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "image_class_labels.txt").write_text(
        "".join(f"{k} {c}\n" for k, (_, c, _) in enumerate(images, 1)))
    (base / "train_test_split.txt").write_text(
        "".join(f"{k} {t}\n" for k, (_, _, t) in enumerate(images, 1)))
    (base / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n3 003.Blackbird\n")
    if create_files:
        for k, (rel, _, _) in enumerate(images):
            _png(base / "images" / rel, mode="L" if k == 0 else "RGB", value=10 * k)
    return base


CUB_IMAGES = [("001.Albatross/a0.jpg", 1, 1), ("001.Albatross/a1.jpg", 1, 0),
              ("002.Auklet/b0.jpg", 2, 1), ("003.Blackbird/c0.jpg", 3, 1),
              ("003.Blackbird/c1.jpg", 3, 0)]


def _write_idx(path: Path, arr: np.ndarray, magic: int | None = None) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    if magic is None:
        magic = (codes[arr.dtype] << 8) | arr.ndim
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _write_mnist(root: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(3)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


# --------------------------------------------------------------------------- paths

def test_resolve_under_accepts_paths_inside_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert resolve_under(tmp_path, "a/b/x.png") == (tmp_path / "a/b/x.png").resolve()
    assert resolve_under(tmp_path, "a/../a/b/x.png") == (tmp_path / "a/b/x.png").resolve()
    (tmp_path / "a" / "inside").symlink_to(tmp_path / "a" / "b")
    assert resolve_under(tmp_path, "a/inside/x.png") == (tmp_path / "a/b/x.png").resolve()


@pytest.mark.parametrize("relpath, message", [
    ("../../etc/passwd", "outside"),
    ("a/../../x", "outside"),
    ("/etc/passwd", "absolute"),
    ("C:\\Windows\\win.ini", "absolute"),
    ("", "invalid"),
    ("a\x00b", "invalid"),
])
def test_resolve_under_refuses_escapes(tmp_path, relpath, message):
    with pytest.raises(ValueError, match=message):
        resolve_under(tmp_path / "root", relpath)


def test_resolve_under_refuses_symlinks_leaving_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (root / "file_link").symlink_to(secret)
    (root / "dir_link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the dataset root"):
        resolve_under(root, "file_link")
    with pytest.raises(ValueError, match="outside the dataset root"):
        resolve_under(root, "dir_link/secret.txt")


# --------------------------------------------------------------------------- restricted pickles

def test_py2_pickle_helper_matches_stock_unpickler():
    data = _cifar_images(2, 0)
    loaded = pickle.loads(_py2_pickle({"data": data, "labels": [3, 4]}), encoding="bytes")
    assert np.array_equal(loaded[b"data"], data) and loaded[b"labels"] == [3, 4]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_pickle_loads_plain_data_and_arrays(tmp_path, protocol):
    obj = {b"data": _cifar_images(3, 0), "s": "text", b"l": [1, 2.5, None, True],
           b"t": (1, b"x"), b"scalar": np.uint8(7), b"f": np.arange(4, dtype=np.float32)}
    path = tmp_path / "p.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    loaded = load_restricted_pickle(path)
    assert np.array_equal(loaded[b"data"], obj[b"data"])
    assert loaded[b"data"].dtype == np.uint8
    assert loaded["s"] == "text" and loaded[b"l"] == [1, 2.5, None, True]
    assert loaded[b"scalar"] == 7 and np.array_equal(loaded[b"f"], obj[b"f"])


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _EvalCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('os').mkdir({str(self.marker)!r})",))


@pytest.mark.parametrize("hostile, refused", [(_SystemCall, "posix.system"),
                                              (_EvalCall, r"__builtin__\.eval")])
def test_hostile_cifar_pickle_is_refused_without_side_effect(tmp_path, hostile, refused):
    _write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    train = tmp_path / "cifar-100-python" / "train"
    with open(train, "wb") as f:
        pickle.dump({b"data": hostile(marker), b"fine_labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=refused) as info:
        load_cifar(tmp_path, 100)
    assert str(train) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload, refused", [
    (b"\x80\x02csubprocess\nPopen\nX\x02\x00\x00\x00ls\x85R.", "subprocess.Popen"),
    (b"\x80\x02cbuiltins\ngetattr\n.", "builtins.getattr"),
    (b"\x80\x02cnumpy\nload\n.", "numpy.load"),
    (b"\x80\x02cnumpy.core.multiarray\nfrombuffer\n.", "numpy.core.multiarray.frombuffer"),
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x0a\x00\x00\x00zlib_codec\x86R.",
     "zlib_codec"),
    (b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent id"),
])
def test_restricted_pickle_refuses_other_globals(tmp_path, payload, refused):
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(RefusedPickleError, match=refused):
        load_restricted_pickle(path)


def test_restricted_pickle_reports_corrupt_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_restricted_pickle(path)


# --------------------------------------------------------------------------- CIFAR

def test_cifar100_layout(tmp_path):
    written = _write_cifar100(tmp_path)
    train, test = load_cifar(tmp_path, 100)
    assert (len(train), len(test)) == (7, 3)
    assert train.num_classes == 100 and train.in_channels == 3
    assert train.class_names[:2] == ["fine0", "fine1"]
    assert train.sample_ids[4] == "cifar100/train/00004"
    assert test.sample_ids == ["cifar100/test/00000", "cifar100/test/00001", "cifar100/test/00002"]
    data, fine = written["train"]
    assert train.labels.tolist() == fine and train.labels.dtype == np.int64
    x, y = train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == fine[4]
    # Row layout is R plane, G plane, B plane, each row-major.
    c, h, w = 2, 5, 9
    assert x[c, h, w].item() == pytest.approx(data[4, c * 1024 + h * 32 + w] / 255.0)
    # The folder itself is accepted as root too.
    again, _ = load_cifar(tmp_path / "cifar-100-python", 100)
    assert again.sample_ids == train.sample_ids


def test_cifar10_python2_release_pickles(tmp_path):
    written = _write_cifar10_py2(tmp_path, per_batch=2)
    train, test = build_dataset("cifar10", tmp_path, train_transform=None, test_transform=None)
    assert (len(train), len(test)) == (10, 2)
    assert train.class_names[9] == "truck"
    expected_labels = sum((labels for _, labels in written[:5]), [])
    assert train.labels.tolist() == expected_labels
    data = written[3][0]
    assert torch.equal(train[6][0], torch.from_numpy(data[0].reshape(3, 32, 32)).float() / 255)
    assert test.labels.tolist() == written[5][1]


def test_cifar_incomplete_layout_names_the_missing_file(tmp_path):
    _write_cifar10_py2(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(tmp_path, 10)
    with pytest.raises(ValueError, match="10 or 100"):
        load_cifar(tmp_path, 20)


def test_cifar_wrong_array_shape_is_reported(tmp_path):
    _write_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"uint8 array \[N, 3072\]"):
        load_cifar(tmp_path, 100)


# --------------------------------------------------------------------------- CUB

def test_cub_layout(tmp_path):
    _write_cub(tmp_path, CUB_IMAGES)
    train, test = load_cub200(tmp_path)
    assert train.sample_ids == ["001.Albatross/a0.jpg", "002.Auklet/b0.jpg", "003.Blackbird/c0.jpg"]
    assert test.sample_ids == ["001.Albatross/a1.jpg", "003.Blackbird/c1.jpg"]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 2]
    assert train.num_classes == 3 and train.class_names[1] == "002.Auklet"
    x, y = train[0]  # written as a grey image: comes back RGB
    assert x.shape == (3, 5, 6) and y == 0
    assert torch.allclose(x, torch.zeros(3, 5, 6))
    train_r, _ = build_dataset("cub200", tmp_path / "CUB_200_2011", image_size=16)
    assert train_r[1][0].shape == (3, 16, 16)


@pytest.mark.parametrize("bad_path, message", [("../../etc/passwd", "outside"),
                                               ("/etc/passwd", "absolute")])
def test_cub_refuses_paths_leaving_images(tmp_path, bad_path, message):
    _write_cub(tmp_path, CUB_IMAGES)
    images_txt = tmp_path / "CUB_200_2011" / "images.txt"
    images_txt.write_text(images_txt.read_text().replace("002.Auklet/b0.jpg", bad_path))
    with pytest.raises(ValueError, match=message) as info:
        load_cub200(tmp_path)
    assert "images.txt, image 3" in str(info.value)


def test_cub_refuses_symlink_leaving_root(tmp_path):
    base = _write_cub(tmp_path, CUB_IMAGES)
    outside = tmp_path / "outside.png"
    _png(outside)
    link = base / "images" / "002.Auklet" / "b0.jpg"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(ValueError, match="outside the dataset root"):
        load_cub200(tmp_path)


def test_cub_incomplete_or_inconsistent(tmp_path):
    base = _write_cub(tmp_path, CUB_IMAGES)
    (base / "images" / "003.Blackbird" / "c1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="c1.jpg"):
        load_cub200(tmp_path)
    _png(base / "images" / "003.Blackbird" / "c1.jpg")
    split = base / "train_test_split.txt"
    split.write_text(split.read_text() + "6 1\n")
    with pytest.raises(ValueError, match="different image ids"):
        load_cub200(tmp_path)
    split.unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        load_cub200(tmp_path)


def test_cub_labels_must_count_from_one(tmp_path):
    base = _write_cub(tmp_path, CUB_IMAGES)
    (base / "image_class_labels.txt").write_text("1 0\n2 1\n3 2\n4 3\n5 3\n")
    with pytest.raises(ValueError, match="numbered from 1"):
        load_cub200(tmp_path)


# --------------------------------------------------------------------------- MNIST idx

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    written = _write_mnist(tmp_path / "mnist", gz)
    train, test = load_mnist(tmp_path / "mnist")
    assert (len(train), len(test)) == (6, 4)
    assert train.in_channels == 1 and train.num_classes == 10
    assert train.sample_ids[5] == "mnist/train/00005" and test.sample_ids[0] == "mnist/test/00000"
    assert train.labels.tolist() == written["train"][1].tolist()
    x, y = test[3]
    assert x.shape == (1, 28, 28) and y == 3
    assert torch.equal(x[0], torch.from_numpy(written["t10k"][0][3]).float() / 255)


def test_fashion_mnist_via_build_dataset(tmp_path):
    _write_mnist(tmp_path, gz=True)
    train, test = build_dataset("fashion-mnist", tmp_path)
    assert train.class_names[9] == "Ankle boot"
    assert train.sample_ids[0] == "fashion-mnist/train/00000"
    x, _ = train[0]
    assert x.shape == (1, 28, 28) and x.min() < 0  # normalised by default


def test_idx_wrong_magic_is_explained(tmp_path):
    _write_mnist(tmp_path, gz=False)
    labels = np.arange(6, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", labels)  # a labels file in its place
    with pytest.raises(ValueError, match="magic number 0x00000801, expected 0x00000803"):
        load_mnist(tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", labels, magic=0x12345678)
    with pytest.raises(ValueError, match="not an idx file: magic number 0x12345678"):
        load_mnist(tmp_path)


def test_idx_size_checks(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    good = struct.pack(">II", 0x801, 5) + bytes(5)
    path.write_bytes(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    path.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="longer than its header"):
        read_idx(path)
    path.write_bytes(struct.pack(">II", 0x801, 2**31))  # absurd size, no data
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    gz = tmp_path / "x.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read idx file"):
        read_idx(gz)


def test_idx_other_dtypes_and_count_mismatch(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    _write_idx(tmp_path / "ints.idx", arr)
    loaded = read_idx(tmp_path / "ints.idx")
    assert loaded.dtype == np.int32 and loaded.dtype.isnative and np.array_equal(loaded, arr)
    _write_mnist(tmp_path / "m", gz=False)
    _write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="holds 4 images but .* holds 3 labels"):
        load_mnist(tmp_path / "m")
    _write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.full(4, 10, np.uint8))
    with pytest.raises(ValueError, match="label 10; expected 0..9"):
        load_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path / "m")


@pytest.mark.skipif(not (FASHION_MNIST_ROOT / "train-labels-idx1-ubyte.gz").exists()
                    and not (FASHION_MNIST_ROOT / "train-labels-idx1-ubyte").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train, test = build_dataset("fashion-mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train[0][0].shape == (1, 28, 28)


# --------------------------------------------------------------------------- digits

def test_digits_split_is_stratified_deterministic_and_stable():
    from sklearn.datasets import load_digits

    train, test = load_digits_dataset(seed=0)
    assert (len(train), len(test)) == (1437, 360)
    assert set(train.sample_ids).isdisjoint(test.sample_ids)
    full = np.bincount(np.concatenate([train.labels, test.labels]))
    assert np.all(np.abs(np.bincount(test.labels, minlength=10) - 0.2 * full) <= 1)
    x, y = train[10]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    original = int(train.sample_ids[10].split("/")[1])
    bunch = load_digits()
    assert y == bunch.target[original]
    assert torch.allclose(x[0], torch.from_numpy(bunch.images[original] / 16).float())
    again, _ = load_digits_dataset(seed=0)
    other, _ = load_digits_dataset(seed=1)
    assert again.sample_ids == train.sample_ids and other.sample_ids != train.sample_ids


def test_digits_default_transform_normalises():
    train, _ = build_dataset("digits", seed=3)
    batch = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1) < 0.05


# --------------------------------------------------------------------------- ImageFolder

def _write_image_folder(root: Path) -> None:
    _png(root / "train" / "dog" / "d1.png", value=1)
    _png(root / "train" / "cat" / "b.png", value=2)
    _png(root / "train" / "cat" / "a.jpg", mode="L", value=3)
    _png(root / "train" / "cat" / "sub" / "c.png", value=4)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _png(root / "train" / "cat" / ".hidden.png")
    _png(root / "val" / "dog" / "d2.png", size=(9, 7), value=5)


def test_imagefolder_layout(tmp_path):
    _write_image_folder(tmp_path)
    train, test = load_imagefolder(tmp_path)
    assert train.class_names == ["cat", "dog"]
    assert train.sample_ids == ["train/cat/a.jpg", "train/cat/b.png", "train/cat/sub/c.png",
                                "train/dog/d1.png"]
    assert train.labels.tolist() == [0, 0, 0, 1]
    assert test.sample_ids == ["val/dog/d2.png"] and test.labels.tolist() == [1]
    assert test.num_classes == 2
    x, _ = train[0]
    assert x.shape == (3, 5, 6) and torch.allclose(x, torch.full((3, 5, 6), 3 / 255))
    train_r, test_r = build_dataset("imagefolder", tmp_path, image_size=12)
    assert train_r[0][0].shape == test_r[0][0].shape == (3, 12, 12)


def test_imagefolder_errors(tmp_path):
    _write_image_folder(tmp_path)
    _png(tmp_path / "val" / "bird" / "x.png")
    with pytest.raises(ValueError, match="absent from the training split"):
        load_imagefolder(tmp_path)
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="neither .*test.* nor .*val"):
        load_imagefolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="training split not found"):
        load_imagefolder(tmp_path / "nothing")


def test_imagefolder_refuses_symlink_leaving_root(tmp_path):
    _write_image_folder(tmp_path / "data")
    outside = tmp_path / "secret.png"
    _png(outside)
    (tmp_path / "data" / "train" / "cat" / "leak.png").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the dataset root"):
        load_imagefolder(tmp_path / "data")


# --------------------------------------------------------------------------- build_dataset

def test_build_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="valid names: " + ", ".join(DATASET_NAMES)):
        build_dataset("imagenet")
    with pytest.raises(ValueError, match="takes no root"):
        build_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("cifar10")
    with pytest.raises(ValueError, match="callable, None or 'default'"):
        build_dataset("digits", train_transform="fancy")
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        build_dataset("digits", image_size=0)
    with pytest.raises(FileNotFoundError, match="images.txt"):
        build_dataset("cub200", tmp_path)


def test_build_dataset_augmented_cifar_keeps_shapes(tmp_path):
    _write_cifar100(tmp_path)
    train, test = build_dataset("cifar100", tmp_path, augment=True)
    torch.manual_seed(0)
    assert train[0][0].shape == test[0][0].shape == (3, 32, 32)


# --------------------------------------------------------------------------- dataset interface

def _tiny(n: int = 6, num_classes: int = 3) -> TensorImageDataset:
    images = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return TensorImageDataset(images, np.arange(n) % num_classes,
                              [f"tiny/{i}" for i in range(n)], num_classes=num_classes)


def test_labeled_dataset_validation():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got range \[0, 2\]"):
        TensorImageDataset(images, [0, 1, 2], ["a", "b", "c"], num_classes=2)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        TensorImageDataset(images, [0, 1, 1], ["a", "b", "a"], num_classes=2)
    with pytest.raises(ValueError, match="got 2 sample ids for 3 labels"):
        TensorImageDataset(images, [0, 1, 1], ["a", "b"], num_classes=2)
    with pytest.raises(ValueError, match="got 3 images for 2 labels"):
        TensorImageDataset(images, [0, 1], ["a", "b"], num_classes=2)
    with pytest.raises(ValueError, match="labels must be integers"):
        TensorImageDataset(images, [0.0, 1.0, 1.0], ["a", "b", "c"], num_classes=2)
    ds = _tiny()
    with pytest.raises(IndexError):
        ds[6]
    ds.transform = lambda img: "not an image"
    with pytest.raises(TypeError, match="must return a PIL image or a tensor"):
        ds[0]


def test_indexed_dataset_carries_original_indices():
    ds = _tiny()
    wrapped = IndexedDataset(ds)
    x, y, i = wrapped[4]
    assert i == 4 and y == 1 and torch.equal(x, ds[4][0])
    subset = IndexedDataset(ds, indices=[5, 0, 3])
    assert len(subset) == 3
    assert [subset[j][2] for j in range(3)] == [5, 0, 3]
    assert subset.labels.tolist() == [2, 0, 0]
    assert subset.sample_ids == ["tiny/5", "tiny/0", "tiny/3"]
    assert subset.num_classes == 3 and subset.in_channels == 1
    batch_x, batch_y, batch_i = next(iter(DataLoader(subset, batch_size=3)))
    assert batch_x.shape == (3, 1, 2, 2) and batch_i.tolist() == [5, 0, 3]
    assert batch_y.dtype == batch_i.dtype == torch.int64


def test_indexed_dataset_label_overrides():
    ds = _tiny()
    relabelled = IndexedDataset(ds, {3: 2, 5: 1}, indices=[3, 4, 5])
    assert [relabelled[j][1] for j in range(3)] == [2, 1, 1]
    assert relabelled.labels.tolist() == [2, 1, 1]
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2]  # the dataset itself is untouched
    full = IndexedDataset(ds, np.array([2, 2, 2, 1, 1, 1]))
    assert full[0][1] == 2 and full.labels.tolist() == [2, 2, 2, 1, 1, 1]


def test_indexed_dataset_wraps_plain_datasets():
    plain = TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    wrapped = IndexedDataset(plain, indices=[2, 1])
    assert wrapped.labels is None
    assert wrapped[0][2] == 2
    with pytest.raises(ValueError, match="needs a dataset with a `labels` attribute"):
        IndexedDataset(plain, {0: 1})
    overridden = IndexedDataset(plain, [3, 3, 3, 3])
    assert overridden[1][1] == 3 and overridden.labels.tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(indices=[0, 6]), r"indices must lie in \[0, 6\)"),
    (dict(indices=[1, 1]), "1 appears 2 times"),
    (dict(indices=[[0, 1]]), "indices must be 1-D"),
    (dict(indices=[0.5]), "indices must be integers"),
    (dict(labels_override=[0, 1]), r"must have shape \(6,\)"),
    (dict(labels_override=[0, 1, 2, 3, 0, 0]), r"override labels must lie in \[0, 3\)"),
    (dict(labels_override={9: 0}), "override index 9 out of range"),
    (dict(labels_override={0: "a"}), "override label must be an int"),
])
def test_indexed_dataset_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexedDataset(_tiny(), **kwargs)


# --------------------------------------------------------------------------- noise

@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(2, 12), rate=st.floats(0, 1),
       seed=st.integers(0, 2**32))
def test_symmetric_noise_flips_exactly_and_never_to_the_same_class(n, k, rate, seed):
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    noisy, flipped = symmetric_noise(labels, k, rate, seed)
    assert flipped.sum() == int(np.floor(rate * n + 0.5))
    assert np.array_equal(noisy != labels, flipped)
    assert noisy.dtype == np.int64 and noisy.min(initial=0) >= 0 and noisy.max(initial=0) < k
    again = symmetric_noise(labels, k, rate, seed)
    assert np.array_equal(again[0], noisy) and np.array_equal(again[1], flipped)


def test_symmetric_noise_targets_are_uniform_and_seeded():
    labels = np.zeros(20000, dtype=np.int64)
    noisy, flipped = symmetric_noise(labels, 5, 0.5, seed=1)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 2500) < 200)
    other, _ = symmetric_noise(labels, 5, 0.5, seed=2)
    assert not np.array_equal(other, noisy)
    assert symmetric_noise(labels[:10], 5, 0.25, 0)[1].sum() == 3  # 2.5 rounds half up


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(2, 12), rate=st.floats(0, 1),
       seed=st.integers(0, 2**32))
def test_class_dependent_noise_per_class_counts(n, k, rate, seed):
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    noisy, flipped = class_dependent_noise(labels, k, rate, seed)
    for c in range(k):
        in_c = labels == c
        assert flipped[in_c].sum() == int(np.floor(rate * in_c.sum() + 0.5))
        assert np.all(noisy[in_c & flipped] == (c + 1) % k)
    assert np.array_equal(noisy != labels, flipped)
    assert np.array_equal(class_dependent_noise(labels, k, rate, seed)[0], noisy)


def test_class_dependent_noise_custom_transition():
    labels = np.repeat(np.arange(3), 10)
    noisy, flipped = class_dependent_noise(labels, 3, 0.3, seed=0, transition=[2, 0, 1])
    assert flipped.sum() == 9
    assert set(noisy[flipped & (labels == 0)]) == {2}
    assert set(noisy[flipped & (labels == 1)]) == {0}


@pytest.mark.parametrize("call, message", [
    (lambda: symmetric_noise([0, 1], 2, 1.5, 0), "rate must be a number in"),
    (lambda: symmetric_noise([0, 1], 2, float("nan"), 0), "rate must be a number in"),
    (lambda: symmetric_noise([0, 1], 1, 0.5, 0), "num_classes must be an int >= 2"),
    (lambda: symmetric_noise([0, 3], 3, 0.5, 0), r"labels must lie in \[0, 3\)"),
    (lambda: symmetric_noise([[0, 1]], 2, 0.5, 0), "labels must be 1-D"),
    (lambda: class_dependent_noise([0, 1], 2, 0.5, 0, transition=[0, 1]), "class 0 maps to itself"),
    (lambda: class_dependent_noise([0, 1], 2, 0.5, 0, transition=[1]), r"shape \(2,\)"),
    (lambda: class_dependent_noise([0, 1], 2, 0.5, 0, transition=[1, 2]), r"lie in \[0, 2\)"),
])
def test_noise_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_an_image_too_large_to_decode_is_one_unreadable_image(tmp_path, monkeypatch):
    from dprune.data.base import read_rgb

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 > 2 x 100: PIL refuses it as a bomb
    with pytest.raises(ValueError, match=r"cannot read image .*big\.png \(sample 'b'\): .*decompression bomb"):
        read_rgb(tmp_path / "big.png", "b")
