"""Recording under torchrun with 4 ranks: gathered to rank 0, or each rank writing its own rows.

Both modes must give stores bit-identical to one process writing the gathered batches, and a
SIGKILL at a random point (a step, after a rank's log is closed, after a rank's part of the
epoch is merged) must leave the complete epochs intact and resume to the same store.
"""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from dprune.store import TrajectoryStore

N, C, E, W = 203, 7, 3, 4

BATCHES = '''
def batches(e, r, W, N, C, B=5):
    """Rank r's batches of epoch e: DistributedSampler-like shards with padding (a sample on two
    ranks), sample 0 on every rank at step 0, a repeat inside rank 1's batches, sample 5 at
    every step of rank 3, bf16 logits in epoch 1 and one value beyond the fp16 range."""
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(e)).tolist()
    per = -(-N // W)
    mine = (perm + perm[: per * W - N])[r::W]
    out = []
    for s in range(0, per, B):
        idx = torch.tensor(mine[s:s + B])
        if s == 0:
            idx[0] = 0
        if r == 1:
            idx[-1] = idx[0]
        if r == 3 and len(idx) > 1:
            idx[1] = 5
        z = torch.randn(len(idx), C, generator=torch.Generator().manual_seed(1000 * e + 10 * s + r)) * 4
        if e == 1:
            z = z.to(torch.bfloat16)
        if e == 2 and s == 5 and r == 0:
            z[0, 0] = 1e5
        out.append((idx, z))
    return out
'''

SCRIPT = '''
import os, signal, sys
import numpy as np, torch, torch.distributed as dist
import dprune.recorder as recorder
from dprune import Recorder
''' + BATCHES + '''
out, writes, kill, dtype = sys.argv[1:5]
N, C, E = {N}, {C}, {E}
dist.init_process_group("gloo")
rank, W = dist.get_rank(), dist.get_world_size()
where, ke, ks, kr = kill.split(":") if kill != "none" else ("none", -1, -1, -1)
ke, ks, kr = int(ke), int(ks), int(kr)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_merge = recorder.merge_part
def merge_part(*a):
    if where == "closed" and a[1] == ke and rank == kr:
        die()
    n = real_merge(*a)
    if where == "merged" and a[1] == ke and rank == kr:
        die()
    return n
recorder.merge_part = merge_part
rec = Recorder(out, labels=np.arange(N) % C, n_classes=C, writes=writes, dtype=dtype)
if rank == 0:
    print("WRITES", rec.writes, flush=True)
for e in range(rec.epochs_completed, E):
    rec.begin_epoch(e)
    for s, (idx, z) in enumerate(batches(e, rank, W, N, C)):
        if where == "step" and (e, s, rank) == (ke, ks, kr):
            die()
        rec.record(idx, z)
    rec.complete_epoch(e)
rec.close()
dist.destroy_process_group()
'''.replace("{N}", str(N)).replace("{C}", str(C)).replace("{E}", str(E))


def reference(path, dtype):
    """One process writing, step by step, the batches a gather to rank 0 would hand it."""
    ns = {"torch": torch}
    exec(BATCHES, ns)
    store = TrajectoryStore.create(path, np.arange(N) % C, C, dtype=dtype)
    for e in range(E):
        store.begin_epoch(e)
        per_rank = [ns["batches"](e, r, W, N, C) for r in range(W)]
        for step in zip(*per_rank):
            store.write(e, torch.cat([i for i, _ in step]), torch.cat([z for _, z in step]))
        store.complete_epoch(e)
    store.close()
    return TrajectoryStore.open(path)


def launch(tmp_path, out, writes, kill="none"):
    script = tmp_path / "record.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={W}", str(script),
           str(out), writes, kill, "float32"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_same_epochs(store, ref, epochs):
    for e in range(epochs):
        a, b = store.epoch_views([e])[0], ref.epoch_views([e])[0]
        assert a[0].tobytes() == b[0].tobytes(), f"epoch {e}: logits differ"
        np.testing.assert_array_equal(a[1], b[1], err_msg=f"epoch {e}: counts")


@pytest.mark.parametrize("writes", ["shared", "gather"])
def test_four_ranks_record_bit_identical_stores_through_random_kills(tmp_path, writes):
    # float32: the running means keep the order of the observations (fp16 rounding would hide it).
    ref = reference(tmp_path / "ref", "float32")
    assert ref.counts().max() >= 3
    rng = random.Random(os.environ.get("DPRUNE_KILL_SEED", f"{writes}-{random.randrange(10**6)}"))
    # A kill at a random step; with shared writes, then also one inside complete_epoch: after a
    # rank closed its log, or after its part of the epoch is merged and fsynced.
    points = ["step"] + (["closed" if rng.random() < 0.5 else "merged"] if writes == "shared" else [])
    out = tmp_path / "store"
    done = 0
    for where in points:
        kill = f"{where}:{rng.randrange(done, E)}:{rng.randrange(11)}:{rng.randrange(W)}"
        r = launch(tmp_path, out, writes, kill)
        assert r.returncode != 0, f"{kill}: the run was not killed"
        killed = TrajectoryStore.open(out)
        done = killed.epochs_completed
        assert done == int(kill.split(":")[1]), kill
        assert_same_epochs(killed, ref, done)  # the complete epochs are intact
    r = launch(tmp_path, out, writes)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"WRITES {writes}" in r.stdout
    store = TrajectoryStore.open(out)
    assert store.epochs_completed == E
    assert_same_epochs(store, ref, E)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rank_logs_merged_part_by_part_equal_the_gathered_writes(tmp_path, dtype):
    # The same merge in one process, quickly: every rank's log, then every rank's share.
    from dprune.store.parts import RankLog, merge_part

    ref = reference(tmp_path / "ref", dtype)
    ns = {"torch": torch}
    exec(BATCHES, ns)
    store = TrajectoryStore.create(tmp_path / "s", np.arange(N) % C, C, dtype=dtype)
    for e in range(E):
        store.begin_epoch(e)
        logs = [RankLog(store.run_dir, e, "t", r, N, C) for r in range(W)]
        for r, log in enumerate(logs):
            for idx, z in ns["batches"](e, r, W, N, C):
                log.write(idx, z)
            log.close()
        store.add_saturated(sum(merge_part(store.run_dir, e, "t", W, r, N, C, store.dtype) for r in range(W)))
        for log in logs:
            log.remove()
        store.complete_epoch(e)
    assert store.meta.get("saturated") == ref.meta.get("saturated") == (1 if dtype == "float16" else None)
    assert_same_epochs(TrajectoryStore.open(tmp_path / "s"), ref, E)
