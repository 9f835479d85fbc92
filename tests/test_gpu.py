"""What only a GPU can check (skipped without one; ``benchmarks/gpu_check.sh`` runs these).

The kernel tests of ``test_kernels.py`` also run on the GPU, compiled, when
``TRITON_INTERPRET=0`` is set (the script does).
"""
import numpy as np
import pytest
import torch

from dprune.recorder import Recorder
from dprune.scoring import score_store
from dprune.store import TrajectoryStore
from dprune.train import TrainConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _store(path, E=5, N=3001, C=1003, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(E, N, C, generator=g) * 3).half()
    c = torch.randint(0, 3, (E, N), generator=g, dtype=torch.int32)
    y = torch.randint(0, C, (N,), generator=g)
    store = TrajectoryStore.create(path, y.numpy(), C)
    for e in range(E):
        store.begin_epoch(e)
        store.put(e, 0, z[e].numpy(), c[e].numpy())
        store.complete_epoch(e)
    store.close()
    return TrajectoryStore.open(path)


def test_triton_scoring_on_the_gpu_equals_the_cpu_kernel(tmp_path):
    store = _store(tmp_path / "s")
    gpu, ran = score_store(store, backend="triton", chunk_size=700)
    cpu, _ = score_store(store, backend="numba", chunk_size=700)
    assert ran == "triton"
    for k in cpu:
        a, b = np.asarray(gpu[k], np.float64), np.asarray(cpu[k], np.float64)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=5e-5, equal_nan=True, err_msg=k)


def test_recording_cuda_logits_through_pinned_buffers_equals_cpu_recording(tmp_path):
    N, C = 500, 17
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, N, (64,), generator=g), torch.randn(64, C, generator=g)) for _ in range(30)]
    for name, dev in (("gpu", "cuda"), ("cpu", "cpu")):
        rec = Recorder(tmp_path / name, labels=np.zeros(N, int), n_classes=C, queue_size=3)
        rec.begin_epoch(0)
        for idx, z in batches:
            rec.record(idx.to(dev), z.to(dev).to(torch.bfloat16))
        rec.complete_epoch(0)
        rec.close()
    a = TrajectoryStore.open(tmp_path / "gpu").read(0, N)
    b = TrajectoryStore.open(tmp_path / "cpu").read(0, N)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_training_on_the_gpu_records_every_sample(tmp_path):
    from dprune.runs import TrainRun, selection

    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=2, batch_size=128, progress=False, device="cuda")
    metrics = TrainRun(cfg, selection({"ratio": 0.3}, cfg.seed), 1).trainer().fit()
    store = TrajectoryStore.open(tmp_path / "r" / "trajectory")
    assert (store.counts()[0] == 1).all() and metrics[-1]["phase"] == "pruned"
