"""Small hostile files (issue 23, items 7-15): every reader has a size and a depth budget.

Each hostile file is generated here, a few bytes to a few MB, and each must end in a one-line
error (exit 1) or the right result.  The files that used to take gigabytes run in a child
process whose address space is capped, so a regression fails the test instead of eating the
machine's memory, and whose peak RSS must stay under 1 GB.
"""
import codecs
import errno
import gzip
import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import threading
import tracemalloc
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dprune.cli import main
from dprune.data import RefusedPickleError, load_cub200, load_imagefolder, load_restricted_pickle, read_idx
from dprune.data.paths import TREE_MAX_DEPTH
from dprune.fileio import JSON_MAX_DEPTH, atomic_write_json, read_json, read_npz
from dprune.importers import import_arrays
from dprune.manifest import KIND, MANIFEST_FORMAT, load_manifest, manifest_digest
from dprune.scoring import load_scores
from dprune.scoring.params import PARAMS, merge_params
from dprune.store import TrajectoryStore
from dprune.synthetic import synthetic_trajectory

RSS_BUDGET = 1 << 30
ADDRESS_SPACE_CAP = 6 << 30  # importing torch alone maps ~3.5 GB of address space


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(output: str, exit_code: int, *fragments) -> str:
    assert exit_code == 1, output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def run_bounded(*args, cwd: Path, timeout: float = 180):
    """``python -m dprune ARGS`` in a child with a capped address space: ``(exit code, output, peak RSS bytes)``."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    with open(cwd / "child_output.txt", "w+") as out:
        p = subprocess.Popen([sys.executable, "-m", "dprune", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                             cwd=cwd, env=env, preexec_fn=cap)
        watchdog = threading.Timer(timeout, p.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)  # the rusage of this child alone
        finally:
            watchdog.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return p.returncode, out.read(), usage.ru_maxrss * 1024


def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(
        np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))))
    return buf.getvalue()


def write_member(zf: zipfile.ZipFile, key: str, shape, dtype, fill: bytes | None = b"\0",
                 prefix: bytes = b"") -> None:
    """An npz member whose header claims ``shape``/``dtype``: ``prefix`` then ``fill`` repeated up to the
    claimed size (``fill=None``: the header alone), streamed through the compressor, never held whole."""
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        f.write(_npy_header(shape, dtype))
        if fill is None:
            return
        f.write(prefix)
        left = nbytes - len(prefix)
        block = fill * ((1 << 22) // len(fill))
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def bomb(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, spec in members.items():
            write_member(zf, key, *spec)
    return path


@pytest.fixture
def run_dir(tmp_path):
    """A small imported store with current scores."""
    t = synthetic_trajectory(60, 4, 3, seed=1)
    np.savez(tmp_path / "t.npz", **t)
    assert run_cli("import", tmp_path / "t.npz", "-o", tmp_path / "run").exit_code == 0
    assert run_cli("score", tmp_path / "run", "-q").exit_code == 0
    return tmp_path / "run"


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 6, 3), 100, np.uint8)).save(path)


# ---------------------------------------------------------------------------------------- item 7
def test_a_fifo_in_an_imagefolder_tree_is_skipped(tmp_path):
    for rel in ("train/a/x.png", "train/a/sub/y.png", "train/b/z.png", "test/a/t.png"):
        _png(tmp_path / rel)
    os.mkfifo(tmp_path / "train" / "a" / "zz.png")  # reading it would block training forever
    os.mkfifo(tmp_path / "test" / "a" / "u.png")
    train, test = load_imagefolder(tmp_path)
    assert train.sample_ids == ["train/a/x.png", "train/a/sub/y.png", "train/b/z.png"]
    assert test.sample_ids == ["test/a/t.png"]
    assert [train[i][0].shape[-2:] for i in range(len(train))] == [(5, 6)] * 3


def test_a_dataset_tree_nested_beyond_the_budget_is_one_line(tmp_path):
    _png(tmp_path / "test" / "a" / "t.png")
    deep = tmp_path / "train" / "a" / "/".join("d" * (TREE_MAX_DEPTH + 1))
    _png(deep / "x.png")
    with pytest.raises(ValueError, match=f"nested more than {TREE_MAX_DEPTH} folders"):
        load_imagefolder(tmp_path)


# ---------------------------------------------------------------------------------------- item 8
def test_a_zip_bomb_import_is_refused_in_one_line_within_memory(tmp_path):
    # 1e8 samples x 4 classes of compressed zeros: 1.65 MB on disk, 1.6 GB inflated.
    src = bomb(tmp_path / "bomb.npz", {"logits": ((1, 100_000_000, 4), "<f4"),
                                       "labels": ((100_000_000,), "u1")})
    assert src.stat().st_size < 2_000_000
    rc, out, rss = run_bounded("import", src, "-o", tmp_path / "run", cwd=tmp_path)
    one_line_error(out, rc, "the store would take 1,200,000,000 bytes", "--max-size")
    assert rss < RSS_BUDGET, rss
    assert not (tmp_path / "run").exists()


def test_an_import_header_claiming_terabytes_is_one_line(tmp_path):
    src = bomb(tmp_path / "claim.npz", {"logits": ((100, 1_000_000_000, 10), "<f4", None)})  # 3.6 TiB, no data
    r = run_cli("import", src, "-o", tmp_path / "run")
    one_line_error(r.output, r.exit_code, "the store would take", "--max-size")
    r = run_cli("import", src, "-o", tmp_path / "run", "--max-size", "10G")
    one_line_error(r.output, r.exit_code, "more than 10,737,418,240 (the --max-size given)")


def test_import_streams_a_compressed_source_in_bounded_memory(tmp_path):
    # 200 MB of float32 logits (4 epochs of 50 MB) inflated from a few hundred kB.
    E, N, C = 4, 125_000, 100
    src = bomb(tmp_path / "big.npz", {"logits": ((E, N, C), "<f4", np.float32(1.5).tobytes()),
                                      "labels": ((N,), "<i8", np.int64(3).tobytes())})
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        import_arrays(src, tmp_path / "run", max_size=1 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    logits = np.load(tmp_path / "run" / "epoch_0003.logits.npy", mmap_mode="r")
    assert logits.shape == (N, C) and logits[::997].min() == logits[::997].max() == 1.5
    assert np.load(tmp_path / "run" / "labels.npy").max() == 3
    # Reading the logits whole would take 200 MB; the pieces are 16 MB, the labels 1 MB.
    assert peak < 64 << 20, peak


def test_every_array_source_streams_to_the_same_store(tmp_path):
    t = synthetic_trajectory(70, 5, 3, seed=2)
    t["counts"] = np.random.default_rng(0).integers(0, 3, t["counts"].shape).astype(np.int32)
    np.savez_compressed(tmp_path / "t.npz", logits=t["logits"], counts=t["counts"], labels=t["labels"])
    (tmp_path / "folder").mkdir()
    for k in ("logits", "counts", "labels"):
        np.save(tmp_path / "folder" / f"{k}.npy", t[k])
    np.save(tmp_path / "labels.npy", t["labels"])
    sources = [(tmp_path / "t.npz",), (tmp_path / "folder",),
               (tmp_path / "folder" / "logits.npy", "--labels", tmp_path / "labels.npy")]
    for k, (src, *more) in enumerate(sources):
        r = run_cli("import", src, "-o", tmp_path / f"run{k}", "--dtype", "float32", *more)
        assert r.exit_code == 0, r.output
    for k in range(3):
        store = TrajectoryStore.open(tmp_path / f"run{k}")
        assert np.array_equal(store.labels, t["labels"])
        for e in range(3):
            logits = np.load(tmp_path / f"run{k}" / f"epoch_{e:04d}.logits.npy")
            counts = np.load(tmp_path / f"run{k}" / f"epoch_{e:04d}.counts.npy")
            want = t["counts"][e] if k < 2 else np.ones(70)
            seen = want > 0
            assert np.array_equal(counts, want) and np.array_equal(logits[seen], t["logits"][e][seen])


# ---------------------------------------------------------------------------------------- item 9
def _cub(root: Path, classes: list[int]) -> Path:
    base = root / "CUB_200_2011"
    for k in range(len(classes)):
        _png(base / "images" / f"c/{k}.jpg")
    (base / "images.txt").write_text("".join(f"{k + 1} c/{k}.jpg\n" for k in range(len(classes))))
    (base / "train_test_split.txt").write_text("".join(f"{k + 1} {k % 2}\n" for k in range(len(classes))))
    (base / "image_class_labels.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    return base


def test_a_cub_class_id_of_three_million_is_one_line_within_memory(tmp_path):
    base = _cub(tmp_path, [1, 2, 1, 3000000])
    assert (base / "image_class_labels.txt").stat().st_size < 40
    with pytest.raises(ValueError, match="image 4 has class '3000000'; classes are numbered from 1 to at most"):
        load_cub200(tmp_path)
    rc, out, rss = run_bounded("train", "--dataset", "cub200", "--data-root", tmp_path, "--out", tmp_path / "out",
                               "--epochs", 1, "--image-size", 8, cwd=tmp_path)
    one_line_error(out, rc, "image_class_labels.txt: image 4 has class '3000000'")
    assert rss < RSS_BUDGET, rss


def test_a_cub_classes_file_beyond_the_class_budget_is_one_line(tmp_path):
    base = _cub(tmp_path, [1, 2, 1, 2])
    (base / "classes.txt").write_text("".join(f"{k} c{k}\n" for k in range(1, 100_002)))
    with pytest.raises(ValueError, match=r"classes.txt: the number of classes must be an integer in \[1, 100,000\]"):
        load_cub200(tmp_path)


# --------------------------------------------------------------------------------------- item 10
class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_a_tiny_cifar_pickle_building_a_huge_array_is_one_line_within_memory(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    evil = pickle.dumps({b"data": _Reduce(np.ndarray, ((1000000, 3072), "u1")), b"labels": [0]}, protocol=2)
    assert len(evil) < 200
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (base / name).write_bytes(evil)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x%d" % k for k in range(10)]}, protocol=2))
    with pytest.raises(RefusedPickleError, match="beyond the 268,435,456 bytes a pickle may build"):
        load_restricted_pickle(base / "data_batch_1")
    rc, out, rss = run_bounded("train", "--dataset", "cifar10", "--data-root", tmp_path, "--out", tmp_path / "out",
                               "--epochs", 1, cwd=tmp_path)
    one_line_error(out, rc, "refusing to unpickle", "data_batch_1", "an array of shape (1000000, 3072)")
    assert rss < RSS_BUDGET, rss


@pytest.mark.parametrize("payload, match", [
    # The same 1 MB string encoded 1000 times: 1 GB built from a 1 MB file.
    (lambda text="x" * (1 << 20): [_Reduce(codecs.encode, (text, "latin1")) for _ in range(1000)], "bytes of"),
    (lambda: _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (1 << 31,), b"d")), "an array of shape"),
    (lambda: _Reduce(np.ndarray, ((3,), np.dtype("O"))), "Python objects"),
])
def test_the_safe_unpickler_bounds_what_a_pickle_builds(tmp_path, payload, match):
    path = tmp_path / "p.pkl"
    # Pickle the payload with memoization, so a repeated object costs its size once in the file.
    path.write_bytes(pickle.dumps(payload(), protocol=2))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(RefusedPickleError, match=match):
        load_restricted_pickle(path)


# --------------------------------------------------------------------------------------- item 11
def _rewrite_scores(path: Path, meta_text_chars: int | None = None, meta_member=None) -> None:
    """Rewrite ``scores.npz`` with its arrays and its ``__meta__`` padded to ``meta_text_chars``
    characters of valid JSON (trailing spaces), compressed; or ``meta_member(zf)`` writes it."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = str(arrays.pop("__meta__"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, v)
        if meta_member is not None:
            meta_member(zf)
        else:
            write_member(zf, "__meta__", (), f"<U{meta_text_chars}", " ".encode("utf-32-le"),
                         prefix=meta.encode("utf-32-le"))


def test_a_scores_meta_string_bomb_is_refused_within_memory_and_not_current(run_dir, tmp_path):
    path = run_dir / "scores.npz"
    _rewrite_scores(path, 300_000_000)  # 1.2 GB of UTF-32 once inflated
    assert path.stat().st_size < 3_000_000
    rc, out, rss = run_bounded("inspect", run_dir, cwd=tmp_path)
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("scores.npz"))
    assert "claims strings of 300,000,000 characters" in line and "current" not in out, out
    assert rss < RSS_BUDGET, rss
    # The scores are computed again, not taken from the file.
    assert "numba backend" in run_cli("score", run_dir, "-m", "entropy").output
    assert load_scores(path, n_samples=60)[0]["entropy"].shape == (60,)


# --------------------------------------------------------------------------------------- item 12
DEEP = "[" * 200_000


def test_deeply_nested_json_is_one_line_wherever_it_is_read(run_dir, tmp_path):
    (tmp_path / "config.json").write_text(DEEP)
    r = run_cli("train", "--config", tmp_path / "config.json", "--out", tmp_path / "o")
    one_line_error(r.output, r.exit_code, "--config file is corrupt", f"nested deeper than {JSON_MAX_DEPTH} levels")

    (tmp_path / "m.json").write_text(DEEP)
    with pytest.raises(ValueError, match="manifest is corrupt .*nested deeper"):
        load_manifest(tmp_path / "m.json")
    assert manifest_digest(tmp_path / "m.json") is None

    _rewrite_scores(run_dir / "scores.npz", meta_member=lambda zf: zf.writestr(
        "__meta__.npy", (lambda b: (np.save(b, np.array(DEEP)), b.getvalue())[1])(io.BytesIO())))
    with pytest.raises(ValueError, match="scores file is corrupt .*__meta__: nested deeper"):
        load_scores(run_dir / "scores.npz")
    assert "scores.npz: scores file is corrupt" in run_cli("inspect", run_dir).output

    # A depth within Python's recursion limit but beyond the budget is refused too.
    (run_dir / "meta.json").write_text("[" * (JSON_MAX_DEPTH + 1) + "]" * (JSON_MAX_DEPTH + 1))
    r = run_cli("inspect", run_dir)
    one_line_error(r.output, r.exit_code, "meta.json is corrupt", "nested deeper")
    (run_dir / "meta.json").write_text(DEEP)
    r = run_cli("inspect", run_dir)
    one_line_error(r.output, r.exit_code, "meta.json is corrupt", "nested deeper")

    r = run_cli("prune", run_dir, "-r", 0.1, "--param", f"tdds.window={DEEP[:100_000]}", "-o", tmp_path / "p.json")
    one_line_error(r.output, r.exit_code, "tdds.window must be an integer")


def test_json_within_the_depth_budget_still_reads(tmp_path):
    nested = json.loads("[" * JSON_MAX_DEPTH + "]" * JSON_MAX_DEPTH)
    atomic_write_json(tmp_path / "x.json", nested)
    assert read_json(tmp_path / "x.json", "x") == nested


# --------------------------------------------------------------------------------------- item 13
def _manifest(**changes) -> dict:
    m = {"kind": KIND, "format_version": MANIFEST_FORMAT, "fingerprint": {"n_samples": 5, "sha256": "0" * 64},
         "n_samples": 5, "n_classes": 2, "kept": [0, 1, 2], "pruned": [3], "relabelled": {},
         "removed_outliers": [{"index": 4, "reason": "outlier"}]}
    m.update(changes)
    return m


@pytest.mark.parametrize("changes", [
    {"kept": [0, 10**30]}, {"pruned": [10**30]}, {"removed_outliers": [{"index": 10**30, "reason": "x"}]},
    {"n_samples": 10**30, "fingerprint": {"n_samples": 10**30, "sha256": "0" * 64}}, {"n_classes": 10**30},
    {"relabelled": {str(10**30): 1}},
])
def test_huge_integers_in_a_manifest_are_one_line(tmp_path, changes):
    labels = np.zeros(5, np.int64)
    atomic_write_json(tmp_path / "ok.json", _manifest())
    assert load_manifest(tmp_path / "ok.json", labels_N=labels).kept.tolist() == [0, 1, 2]
    atomic_write_json(tmp_path / "m.json", _manifest(**changes))
    with pytest.raises(ValueError, match="m.json"):
        load_manifest(tmp_path / "m.json", labels_N=labels)


# --------------------------------------------------------------------------------------- item 14
def test_an_npz_member_of_raw_pickle_bytes_is_one_line(tmp_path):
    with zipfile.ZipFile(tmp_path / "p.npz", "w") as zf:
        zf.writestr("logits.npy", pickle.dumps(np.zeros((2, 3, 4))))
    r = run_cli("import", tmp_path / "p.npz", "-o", tmp_path / "run")
    one_line_error(r.output, r.exit_code, "entry 'logits' is not an array")
    with zipfile.ZipFile(tmp_path / "q.npz", "w") as zf:  # no .npy name: np.load would hand back the bytes
        zf.writestr("logits", pickle.dumps(np.zeros((2, 3, 4))))
    r = run_cli("import", tmp_path / "q.npz", "-o", tmp_path / "run")
    one_line_error(r.output, r.exit_code, "has no 'logits' array")
    with pytest.raises(ValueError, match="scores file is corrupt .*not an array"):
        read_npz(tmp_path / "p.npz", "scores file")


def test_headers_claiming_terabytes_are_one_line(run_dir, tmp_path):
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as zf:
        write_member(zf, "entropy", (1 << 40,), "<f4", None)
    with pytest.raises(ValueError, match=r"entry 'entropy' claims float32 \(1099511627776,\)"):
        read_npz(tmp_path / "h.npz", "scores file")
    (run_dir / "scores.npz").write_bytes((tmp_path / "h.npz").read_bytes())
    assert "scores.npz: scores file is corrupt" in run_cli("inspect", run_dir).output
    (tmp_path / "labels.npy").write_bytes(_npy_header((1 << 40,), "<i8"))
    np.savez(tmp_path / "t.npz", **synthetic_trajectory(60, 4, 3, seed=1))
    r = run_cli("import", tmp_path / "t.npz", "-o", tmp_path / "run2", "--labels", tmp_path / "labels.npy")
    one_line_error(r.output, r.exit_code, "labels file is corrupt", "claims int64 (1099511627776,)")


# --------------------------------------------------------------------------------------- item 15
def test_every_integer_parameter_has_an_upper_bound(run_dir, tmp_path):
    r = run_cli("prune", run_dir, "-r", 0.1, "-m", "tdds", "--param", "tdds.window=99999999999999999999999",
                "-o", tmp_path / "p.json")
    one_line_error(r.output, r.exit_code, "tdds.window must be in [2, 1,000,000], got 99999999999999999999999")
    ints = [(n, o) for n, opts in PARAMS.items() for o, p in opts.items() if int in (p.type, *typing.get_args(p.type))]
    assert len(ints) == 5
    for name, opt in ints:
        for value in (2**63, -(2**63) - 1):
            with pytest.raises(ValueError, match=f"{name}.{opt} must be"):
                merge_params({name: {opt: value}})


# ---------------------------------------------------------------------------------------- also
def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # where a full disk shows up on ext4/xfs

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_json(tmp_path / "manifest.json", {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "manifest.json")
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_utf8_manifest_names_the_file(tmp_path):
    (tmp_path / "m.json").write_bytes(b'{"kind": "\xff"}')
    with pytest.raises(ValueError, match=r"manifest .*m.json is not UTF-8 text \(byte 10"):
        load_manifest(tmp_path / "m.json")


def test_a_gzip_idx_file_claiming_more_than_the_budget_is_refused_before_inflating(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:  # 600 MB of zeros, as the header says, in under 3 MB
        f.write(struct.pack(">IIII", 0x803, 600, 1000, 1000))
        block = bytes(1 << 24)
        for _ in range(600_000_000 // len(block)):
            f.write(block)
        f.write(block[: 600_000_000 % len(block)])
    assert path.stat().st_size < 3_000_000
    with pytest.raises(ValueError, match=r"its header claims \(600, 1000, 1000\) of uint8, 600,000,000 bytes"):
        read_idx(path)
