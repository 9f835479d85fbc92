"""A careless or hostile user: concurrent writers, stale results, bad files, full disks, tracebacks.

Each test reproduces one finding of the reliability review and checks the behaviour that
replaced it: refused with one line (exit code 1), recomputed, or cleaned up.
"""
import json
import re
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dprune.cli import main
from dprune.locking import DirLock, LockedError
from dprune.scoring import load_scores
from dprune.store import TrajectoryStore
from dprune.synthetic import synthetic_trajectory
from test_train import N_DIGITS_TRAIN, expected_counts, launch


def cli(*args, ok=True, env=None):
    result = CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line(result, *fragments):
    """Exit code 1 and one error line (after any progress bar), naming each fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln.rsplit("\r", 1)[-1] for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def imported(tmp_path):
    t = synthetic_trajectory(120, 4, 3, noise_rate=0.1, seed=1)
    np.savez(tmp_path / "t.npz", **t)
    cli("import", tmp_path / "t.npz", "-o", tmp_path / "run")
    return tmp_path / "run"


def small_mount(tmp_path, size="160k"):
    """A tiny tmpfs where the test runs as root; skipped otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for a full disk")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    return mnt


def unmount(mnt):
    subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------------ one writer per directory
def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    first = DirLock(tmp_path / "d", "test writer")
    with pytest.raises(LockedError, match=rf"in use by another writer \(pid {os.getpid()} on .*: test writer\)"):
        DirLock(tmp_path / "d", "second")
    first.release()
    DirLock(tmp_path / "d", "after release").release()
    store = TrajectoryStore.create(tmp_path / "s", np.zeros(5, int), 2)
    with pytest.raises(LockedError):
        TrajectoryStore.open(tmp_path / "s", "a")
    TrajectoryStore.open(tmp_path / "s")  # readers take no lock
    store.close()
    TrajectoryStore.open(tmp_path / "s", "a").close()


def test_two_concurrent_train_commands_one_is_refused_and_counts_are_exact(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dprune", "train", "--out", str(tmp_path / "d"), "--epochs", "6", "--batch-size", "4",
           "--eval-every", "0", "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "d" / "trajectory" / ".dprune.lock").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second tried"
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"pid {first.pid}" in second.stderr and "in use by another writer" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    store = TrajectoryStore.open(tmp_path / "d" / "trajectory")
    np.testing.assert_array_equal(store.counts(), expected_counts(N_DIGITS_TRAIN, 1, 6))


def test_workers_of_a_killed_launcher_stop_and_release_the_run(tmp_path):
    out = tmp_path / "k"
    proc = launch(["--epochs", 30, "--batch-size", 8], out, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "trajectory" / ".epoch_0000.counts.npy.tmp").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-2000:]
        time.sleep(0.05)
    workers = [int(p.name) for p in Path("/proc").glob("[0-9]*")
               if p.name.isdigit() and _ppid(int(p.name)) == proc.pid]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only: its workers live in their own sessions
    proc.communicate()
    deadline = time.time() + 30
    while any(Path(f"/proc/{w}").exists() and _state(w) != "Z" for w in workers):
        assert time.time() < deadline, "the orphaned workers kept running"
        time.sleep(0.1)
    DirLock(out, "rerun").release()  # nobody holds the run any more


def _ppid(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_output_paths_cannot_clobber_a_store(imported):
    one_line(cli("prune", imported, "-r", 0.3, "-o", imported / "meta.json", ok=False), "would overwrite")
    one_line(cli("prune", imported, "-r", 0.3, "-o", imported.parent / "m.json", "--export-list",
                 imported / "sample_ids.txt", ok=False), "would overwrite")
    TrajectoryStore.open(imported)  # intact


def test_a_killed_writers_temp_files_are_cleaned_by_the_next_writer(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", np.zeros(5, int), 2)
    store.begin_epoch(0)
    assert list((tmp_path / "s").glob(".*.tmp"))
    store.close()  # killed mid-epoch
    TrajectoryStore.open(tmp_path / "s", "a").close()
    assert not list((tmp_path / "s").glob(".*.tmp"))


# ------------------------------------------------------------------------ full disks
def test_a_full_disk_while_recording_is_one_line_and_leaves_the_complete_epochs(tmp_path):
    mnt = small_mount(tmp_path)
    try:
        store = TrajectoryStore.create(mnt / "s", np.zeros(200, int), 100, dtype="float32")  # 80 kB per epoch
        store.begin_epoch(0)
        store.write(0, np.arange(200), np.ones((200, 100), np.float32))
        store.complete_epoch(0)
        with pytest.raises(OSError) as e:
            store.begin_epoch(1)  # allocated before mapping: ENOSPC here, not SIGBUS later
        assert e.value.errno == 28
        store.close()
        again = TrajectoryStore.open(mnt / "s")
        assert again.epochs_completed == 1
        np.testing.assert_array_equal(again.read(0, 200)[0][0], 1)
        # Through the CLI: one line naming the cause.
        t = synthetic_trajectory(300, 100, 3, seed=0)
        np.savez(tmp_path / "big.npz", **t)
        line = one_line(cli("import", tmp_path / "big.npz", "-o", mnt / "imp", "--dtype", "float32", ok=False),
                        "No space left on device")
        assert "ENOSPC" in line
        assert not (mnt / "imp").exists()  # nothing half-written left behind
    finally:
        unmount(mnt)


def test_a_full_disk_at_checkpoint_or_scoring_is_one_line(tmp_path):
    mnt = small_mount(tmp_path, "64k")
    try:
        r = cli("train", "--out", mnt / "run", "--epochs", 1, "--record", "off", "--model", "small_cnn",
                "--no-progress", ok=False)
        one_line(r, "No space left on device")
    finally:
        unmount(mnt)


# ------------------------------------------------------------------------ stale results
def test_resume_with_another_configuration_is_refused_naming_the_fields(tmp_path):
    out = tmp_path / "r"
    cli("train", "--out", out, "--epochs", 1, "--batch-size", 256, "--no-progress")
    r = cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--lr", 0.1, "--no-progress", ok=False)
    one_line(r, "another configuration", "lr: 0.05 -> 0.1")
    r = cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--model", "resnet18", "--no-progress", ok=False)
    one_line(r, "model: 'small_cnn' -> 'resnet18'")
    cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--no-progress")  # more epochs: allowed
    cli("train", "--out", out, "--epochs", 1, "--batch-size", 256, "--lr", 0.1, "--restart", "--no-progress")
    assert TrajectoryStore.open(out / "trajectory").epochs_completed == 1


def test_resume_with_another_selection_or_a_checkpoint_of_an_older_dprune_is_refused(tmp_path):
    """The prune-in-run selection is the hook's (not TrainConfig's) and still part of the checkpoint's identity."""
    out = tmp_path / "r"
    run = ("train", "--out", out, "--prune-at", 1, "--batch-size", 256, "--eval-every", 0, "--no-progress")
    cli(*run, "--epochs", 2, "--ratio", 0.3)
    one_line(cli(*run, "--epochs", 3, "--ratio", 0.5, ok=False), "another configuration", "prune_in_run", "'ratio': 0.5")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["format"]  # as written before the selection left TrainConfig
    torch.save(ckpt, out / "checkpoint.pt")
    one_line(cli(*run, "--epochs", 3, "--ratio", 0.3, ok=False), "older dprune", "--restart")


def test_resume_with_a_changed_manifest_is_refused(tmp_path):
    cli("train", "--out", tmp_path / "rec", "--epochs", 1, "--batch-size", 256, "--no-progress")
    store = tmp_path / "rec" / "trajectory"
    cli("prune", store, "-r", 0.3, "-o", tmp_path / "m.json", "-q")
    cli("train", "--out", tmp_path / "re", "--epochs", 1, "--batch-size", 256, "--record", "off", "--manifest",
        tmp_path / "m.json", "--no-progress")
    cli("prune", store, "-r", 0.5, "-o", tmp_path / "m.json", "-q")  # same path, other content
    r = cli("train", "--out", tmp_path / "re", "--epochs", 2, "--batch-size", 256, "--record", "off", "--manifest",
            tmp_path / "m.json", "--no-progress", ok=False)
    one_line(r, "manifest content")


def test_scores_of_a_rerecorded_trajectory_are_not_reused(tmp_path):
    out = tmp_path / "r"
    cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--no-progress")
    cli("score", out / "trajectory", "-q")
    (out / "checkpoint.pt").unlink()  # the user deletes the checkpoint and trains again
    cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--no-progress")
    info = json.loads(cli("inspect", out / "trajectory", "--json").output)
    assert "re-recorded" in info["scores"]["stale"]
    res = cli("prune", out / "trajectory", "-r", 0.3, "-o", tmp_path / "m.json")
    assert "scores computed" in res.output
    store = TrajectoryStore.open(out / "trajectory")
    _, meta = load_scores(out / "trajectory" / "scores.npz")
    assert meta["made_from"] == store.identity()


def test_run_rerun_with_a_new_ratio_retrains_and_reports_the_new_manifest(tmp_path):
    args = ["run", "--out", tmp_path / "p", "--record-epochs", 1, "--epochs", 2, "--batch-size", 256, "--no-relabel",
            "--set", "max_steps_per_epoch=2", "--set", "progress=false"]
    cli(*args, "--ratio", 0.3)
    cli(*args, "--ratio", 0.5)
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert m["ratio_requested"] == 0.5
    paper = next(r for r in report["rows"] if r["run"].startswith("paper protocol"))
    assert paper["kept"] == m["n_kept"]
    ckpt = torch.load(tmp_path / "p" / "pruned" / "checkpoint.pt", weights_only=True)
    from dprune.manifest import load_manifest

    assert ckpt["manifest_digest"] == load_manifest(tmp_path / "p" / "manifest.json").digest


# ------------------------------------------------------------------------ silently wrong inputs
@pytest.mark.parametrize("edit, match", [
    (lambda m: m["relabelled"].update({"-1": 3}), "relabelled key '-1'"),
    (lambda m: m.update(kept=[]), "kept set is empty"),
    (lambda m: m.update(kept=[0.5] + m["kept"][1:]), "list of integer sample indices"),
    (lambda m: m.update(kept=m["kept"] + m["kept"][:1]), "more than once"),
    (lambda m: m["relabelled"].update({str(m["pruned"][0]): 1}), "is not kept"),
    (lambda m: m["relabelled"].update({str(m["kept"][0]): 99}), "not an integer in [0, 4)"),
])
def test_manifests_are_validated_in_full(imported, tmp_path, edit, match):
    from dprune.manifest import load_manifest

    cli("prune", imported, "-r", 0.3, "-o", tmp_path / "m.json", "-q")
    m = json.loads((tmp_path / "m.json").read_text())
    edit(m)
    (tmp_path / "m.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=re.escape(match)):
        load_manifest(tmp_path / "m.json", labels_N=np.zeros(120, int))


def test_a_selection_that_keeps_nothing_is_refused(imported, tmp_path):
    one_line(cli("prune", imported, "-r", 0.9999, "--policy", "global", "--remove-outliers", 0.5, "-o",
                 tmp_path / "m.json", ok=False), "cannot prune")
    one_line(cli("prune", imported, "-r", 0.5, "--remove-outliers", 0.6, "-o", tmp_path / "m.json", ok=False))


def test_import_refuses_what_the_store_cannot_hold(tmp_path):
    t = synthetic_trajectory(50, 3, 2, seed=0)
    big = dict(t, logits=t["logits"].astype(np.float32))
    big["logits"][1, 7, 2] = 70000.0
    np.savez(tmp_path / "big.npz", **big)
    one_line(cli("import", tmp_path / "big.npz", "-o", tmp_path / "a", ok=False), "does not fit the fp16 store")
    cli("import", tmp_path / "big.npz", "-o", tmp_path / "b", "--dtype", "float32")
    for counts, match in ((np.full((2, 50), 0.5), "whole numbers"), (np.full((2, 50), 2**31 + 5), "must lie in")):
        np.savez(tmp_path / "c.npz", **dict(t, counts=counts))
        one_line(cli("import", tmp_path / "c.npz", "-o", tmp_path / "c", ok=False), match)
        assert not (tmp_path / "c").exists()
    np.savez(tmp_path / "s.npz", logits=np.full((2, 3, 4), "x"), labels=np.zeros(3, int))
    one_line(cli("import", tmp_path / "s.npz", "-o", tmp_path / "s", ok=False), "floating point")
    assert not (tmp_path / "s").exists()


def test_recording_saturates_beyond_fp16_instead_of_making_samples_nonfinite(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", np.zeros(3, int), 2)
    store.begin_epoch(0)
    store.write(0, [0, 1], np.array([[70000.0, 0.0], [1.0, 2.0]]))
    store.complete_epoch(0)
    z, _ = TrajectoryStore.open(tmp_path / "s").read(0, 3)
    assert np.isfinite(z).all() and z[0, 0, 0] == np.float16(65504)
    assert TrajectoryStore.open(tmp_path / "s").meta["saturated"] == 1


def test_one_class_is_refused_with_a_reason(tmp_path):
    np.savez(tmp_path / "one.npz", logits=np.zeros((2, 5, 1), np.float32), labels=np.zeros(5, int))
    one_line(cli("import", tmp_path / "one.npz", "-o", tmp_path / "o", ok=False), "n_classes >= 2")


def _tiny_png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_imagefolder_and_cub_split_folders_linked_out_of_the_root_are_refused(tmp_path):
    from dprune.data import load_cub200, load_imagefolder

    outside = tmp_path / "outside"
    _tiny_png(outside / "cat" / "a.png")
    root = tmp_path / "if"
    _tiny_png(root / "test" / "cat" / "b.png")
    (root / "train").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the dataset root"):
        load_imagefolder(root)
    cub = tmp_path / "cub"
    cub.mkdir()
    for name, text in (("images.txt", "1 cat/a.png\n"), ("train_test_split.txt", "1 1\n"),
                       ("image_class_labels.txt", "1 1\n")):
        (cub / name).write_text(text)
    (cub / "images").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the dataset root"):
        load_cub200(cub)


def test_a_cifar_batch_with_nested_label_lists_is_refused_before_conversion(tmp_path):
    import resource

    from dprune.data.cifar import _read_cifar_batch

    nested = [0] * 10
    for _ in range(9):
        nested = [nested] * 10  # 92 bytes of pickle per level; 10^10 ints once expanded
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": nested}, protocol=2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="'labels' must be 10 ints, got a list of list"):
        _read_cifar_batch(path, "labels")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_scores_file_claiming_a_huge_array_is_refused_without_reading_it(imported):
    import zipfile

    f = imported / "scores.npz"
    cli("score", imported, "-q", "-m", "entropy")
    with zipfile.ZipFile(f) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (10**9,)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    members["entropy.npy"] = buf.getvalue() + b"\0" * 64
    with zipfile.ZipFile(f, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    info = json.loads(cli("inspect", imported, "--json").output)
    assert "expected f (120,)" in info["scores"]["error"]
    with pytest.raises(ValueError, match="entry 'entropy' is float32 \\(1000000000,\\)"):
        load_scores(f, n_samples=120)


# ------------------------------------------------------------------------ options
@pytest.mark.parametrize("args, match", [
    (("score", "{run}", "--param", "tdds.window=2.5"), "tdds.window must be an integer, got 2.5"),
    (("score", "{run}", "--param", "tdds.window=1e400"), "tdds.window must be an integer"),
    (("score", "{run}", "--param", "tdds.decay=1e400"), "tdds.decay must be a finite number"),
    (("score", "{run}", "--param", "tdds.window=abc"), "tdds.window must be an integer, got 'abc'"),
    (("score", "{run}", "--param", "tdds"), "NAME.OPTION=VALUE"),
    (("train", "--out", "{tmp}/t", "--lr", "inf"), "lr must be a finite number > 0"),
    (("run", "--out", "{tmp}/p", "--method", "bogus"), "unknown scoring method bogus"),
    (("run", "--out", "{tmp}/p", "--set", "epochs=abc"), "--set epochs must be an integer"),
    (("run", "--out", "{tmp}/p", "--set", "manifest=x.json"), "--set manifest: set by dprune run"),
    (("run", "--out", "{tmp}/p", "--set", "nonsense=1"), "not a 'dprune train' field"),
])
def test_option_values_are_checked_before_any_work(imported, tmp_path, args, match):
    args = [a.format(run=imported, tmp=tmp_path) for a in args]
    one_line(cli(*args, ok=False), match)
    assert not (tmp_path / "p" / "full").exists() and not (tmp_path / "t" / "trajectory").exists()


# ------------------------------------------------------------------------ tracebacks become one line
def test_bad_files_give_one_line_not_a_traceback(imported, tmp_path):
    meta_path = imported / "meta.json"
    good = meta_path.read_text()
    for bad in (-1, None, "Infinity"):
        meta_path.write_text(good.replace('"epochs_completed": 3', f'"epochs_completed": {json.dumps(bad)}'
                                          if bad != "Infinity" else '"epochs_completed": Infinity'))
        one_line(cli("inspect", imported, ok=False), "epochs_completed must be an integer")
    meta_path.write_text(good)
    cli("score", imported, "-q", "-m", "entropy")
    arrays = dict(np.load(imported / "scores.npz"))
    arrays["__meta__"] = np.array("[1, 2]")
    np.savez(imported / "scores.npz", **arrays)
    info = json.loads(cli("inspect", imported, "--json").output)
    assert "__meta__ is not a dprune scores description" in info["scores"]["error"]
    (tmp_path / "cfg.json").write_text(json.dumps({"out": str(tmp_path / "x"), "epochs": "five"}))
    one_line(cli("train", "--config", tmp_path / "cfg.json", ok=False), "epochs must be an integer, got 'five'")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "nolab.npz", logits=np.zeros((1, 3, 2), np.float32))
    one_line(cli("import", tmp_path / "nolab.npz", "--labels", tmp_path / "empty.npy", "-o", tmp_path / "e", ok=False),
             "empty.npy")
    (tmp_path / "afile").write_text("x")
    np.savez(tmp_path / "ok.npz", logits=np.zeros((1, 3, 2), np.float32), labels=np.zeros(3, int))
    one_line(cli("import", tmp_path / "ok.npz", "-o", tmp_path / "afile", ok=False), "not a directory")
    one_line(cli("train", "--out", tmp_path / "afile", ok=False), "not a directory")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", None])
def test_unreadable_checkpoints_give_one_line(tmp_path, content):
    out = tmp_path / "r"
    cli("train", "--out", out, "--epochs", 1, "--batch-size", 256, "--record", "off", "--no-progress")
    path = out / "checkpoint.pt"
    if content is None:
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))

        torch.save({"model": Evil()}, path)
    else:
        path.write_bytes(content)
    line = one_line(cli("train", "--out", out, "--epochs", 2, "--batch-size", 256, "--record", "off",
                        "--no-progress", ok=False), "checkpoint.pt", "--restart")
    assert "Aborted" not in line and not (tmp_path / "pwned").exists()


def test_a_read_only_output_folder_gives_one_line(imported, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    one_line(cli("prune", imported, "-r", 0.3, "-o", ro / "m.json", ok=False), "Permission denied")


def test_debug_shows_the_traceback(imported):
    r = CliRunner().invoke(main, ["--debug", "prune", str(imported), "-r", "2"])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)
    r = CliRunner(env={"DPRUNE_DEBUG": "1"}).invoke(main, ["prune", str(imported), "-r", "2"])
    assert isinstance(r.exception, ValueError)
    os.environ.pop("DPRUNE_DEBUG", None)


def test_msmt17_non_utf8_list_names_the_file(tmp_path):
    from dprune.data.reid import build_reid_dataset
    from dprune.data.reid_synth import make_synthetic_reid

    make_synthetic_reid(tmp_path / "m", "msmt17_v1", n_ids=8, images_per_id=4, seed=0)
    lst = next((tmp_path / "m").rglob("list_train.txt"))
    lst.write_bytes(lst.read_bytes() + b"\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"list_train.txt is not UTF-8"):
        build_reid_dataset("msmt17", tmp_path / "m")
