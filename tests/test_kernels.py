"""The fused Triton kernel and the fused numba CPU kernel against their torch reference.

Without a GPU the kernels run in Triton's interpreter, which is chosen when a kernel is
decorated: the variable is set here before anything imports triton or ``dprune.kernels``
(``tests/conftest.py`` sets it too, for runs of the whole suite).  ``TRITON_INTERPRET=0``
in the environment runs them on a GPU instead.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dprune.kernels import fused_stats_cpu as cpu_kernel  # noqa: E402
from dprune.kernels.fused_stats import MAX_SINGLE_BLOCK_C, fused_stats, interpreter_active, launch_config  # noqa: E402
from dprune.kernels.fused_stats_cpu import BLOCK_SAMPLES, fused_stats_cpu  # noqa: E402
from dprune.scoring import score_store  # noqa: E402
from dprune.scoring.backends import BACKENDS, KERNELS, implementation, resolve_backend  # noqa: E402
from dprune.scoring.stats import TrajectoryStats, compute_stats  # noqa: E402
from dprune.store import TrajectoryStore  # noqa: E402

DEVICE = "cpu" if interpreter_active() else "cuda"
# Both kernels compute in float32 from the same inputs as the reference; they differ only in the
# order of sums (Triton: online softmax over class blocks, entropy as log s - t / s; numba: vector
# partial sums, Cephes exp/log with fused multiply-adds).  Largest differences seen: 4e-4
# absolute on TDDS values near 100 (4e-6 relative), 8e-6 on log-probabilities near -20.
RTOL, ATOL = 1e-4, 5e-5
NAN, INF = float("nan"), float("inf")


def trajectory(seed, E, N, C, *, dtype=torch.float32, p_unobserved=0.3, nonfinite=False, scale=4.0):
    """Random logits with unobserved epochs (holding garbage), a never-observed sample, and
    optionally NaN / +-Inf entries and whole NaN / -Inf rows on observed epochs."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(E, N, C, generator=g) * scale
    counts = torch.randint(1, 4, (E, N), generator=g, dtype=torch.int32)
    counts[torch.rand(E, N, generator=g) < p_unobserved] = 0
    if N > 1:
        counts[:, N // 2] = 0
    z[counts == 0] = NAN  # stale values in unobserved rows must not leak into any statistic
    labels = torch.randint(0, C, (N,), generator=g)
    if nonfinite:
        for i in range(N):
            e, c = i % E, (7 * i) % C
            kind = i % 6
            if kind == 0:
                continue
            counts[e, i] = max(1, int(counts[e, i]))
            z[e, i] = torch.randn(C, generator=g) * scale
            if kind == 1:
                z[e, i, c] = NAN
            elif kind == 2:
                z[e, i, c] = INF
            elif kind == 3:
                z[e, i, c] = -INF
            elif kind == 4:
                z[e, i] = -INF
            else:
                z[e, i] = NAN
    return z.to(dtype), counts, labels


def soft_argmax_ties(z, counts) -> torch.Tensor:
    """[N, C] True where a class ties for the largest soft-label probability.

    The reference takes the soft argmax from ``topk``, which picks any one of tied maxima
    (bf16 logits over 4099 classes tie often); the kernel picks the first.
    """
    obs = (counts > 0)[..., None]
    z_mean = torch.where(obs, z.float(), 0.0).sum(0) / obs.sum(0).clamp(min=1)
    p = torch.log_softmax(z_mean, -1).exp()
    return p == p.max(-1, keepdim=True).values


def assert_stats_equal(got: TrajectoryStats, want: TrajectoryStats, context: str, ties=None) -> None:
    """Same fields, dtypes, NaN placement and values (within RTOL/ATOL); print what differs.

    ``ties`` [N, C] (from :func:`soft_argmax_ties`) lets the soft argmax be any tied maximum.
    """
    # Where the soft label is undefined (NaN/Inf in the mean logits) the reference's soft
    # argmax is whatever topk returns for an all-NaN row; it is masked out of every score.
    undefined = torch.isnan(want.p_max.cpu()) & (want.n_obs.cpu() > 0)
    if ties is not None:
        idx = got.soft_argmax.cpu()
        undefined |= (idx >= 0) & ties.gather(1, idx.clamp(min=0)[:, None])[:, 0]
    problems = []
    for field in TrajectoryStats._fields:
        if field in ("p_avg", "p_soft") and getattr(got, field) is None:
            continue  # asked for only with with_p_avg / with_p_soft
        g, w = getattr(got, field).cpu(), getattr(want, field).cpu()
        if g.dtype != w.dtype or g.shape != w.shape:
            problems.append(f"{field}: {g.dtype} {tuple(g.shape)} != {w.dtype} {tuple(w.shape)}")
            continue
        if g.is_floating_point():
            ok = torch.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            ok = g == w
            if field == "soft_argmax":
                ok |= undefined
        if not ok.all():
            bad = ok.logical_not().nonzero().tolist()[:6]
            problems.append(f"{field} differs at {bad}: got {[g[tuple(i)].item() for i in bad]}, "
                            f"want {[w[tuple(i)].item() for i in bad]}")
    assert not problems, f"{context}:\n  " + "\n  ".join(problems)


def run_fused(z, counts, labels, **kw):
    with np.errstate(all="ignore"):  # Inf - Inf in the interpreter's numpy, as in torch
        return fused_stats(z.to(DEVICE), counts.to(DEVICE), labels.to(DEVICE), **kw)


# ------------------------------------------------------------------------------ fused kernel
SHAPES = [  # E, N, C, block_c (None: the launcher's choice)
    (3, 9, 1, None),
    (4, 13, 7, None),
    (3, 6, 751, None),
    (3, 6, 751, 128),  # several class blocks on a shape that would fit one
    (2, 5, 1041, 256),
    (2, 3, 4099, None),  # more than MAX_SINGLE_BLOCK_C: the two-pass layout
    (1, 7, 7, None),
    (4, 1, 7, None),
    (1, 1, 1041, 512),
]


@pytest.mark.parametrize("E, N, C, block_c", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fused_stats_matches_reference(E, N, C, block_c, dtype):
    z, c, y = trajectory(E * 1000 + N * 10 + C, E, N, C, dtype=dtype)
    got = run_fused(z, c, y, block_c=block_c, with_p_avg=True, with_p_soft=True)
    plain = run_fused(z, c, y, block_c=block_c)
    assert got.p_avg is not None and got.p_soft is not None and plain.p_avg is None and plain.p_soft is None
    assert_stats_equal(got, compute_stats(z, c, y), f"E={E} N={N} C={C} {dtype}",
                       ties=soft_argmax_ties(z, c))


@pytest.mark.parametrize("E, N, C, block_c", [(3, 12, 1, None), (3, 12, 7, None), (3, 12, 7, 2), (2, 12, 33, 8), (3, 12, 2, None)])
def test_fused_stats_nan_and_inf_rows(E, N, C, block_c):
    z, c, y = trajectory(C + E, E, N, C, nonfinite=True)
    want = compute_stats(z, c, y)
    assert want.nonfinite.sum() >= 4
    got = run_fused(z, c, y, block_c=block_c, with_p_avg=True, with_p_soft=True)
    assert_stats_equal(got, want, f"nonfinite E={E} N={N} C={C}")


@pytest.mark.parametrize("kernel", ["triton", "numba"])
def test_unobserved_samples_and_epochs(kernel):
    run = run_fused if kernel == "triton" else fused_stats_cpu
    z, c, y = trajectory(5, 4, 10, 9, p_unobserved=0.6)
    c[:, 0] = 0
    c[1:, 1] = 0  # seen once: no TDDS divergence
    got = run(z, c, y)
    assert got.n_obs[0] == 0 and got.soft_argmax[0] == -1 and torch.isnan(got.entropy[0])
    assert torch.isnan(got.tdds_div[:, 1]).all()
    assert_stats_equal(got, compute_stats(z, c, y), f"{kernel} unobserved")
    c.zero_()
    assert_stats_equal(run(z, c, y), compute_stats(z, c, y), f"{kernel} nothing observed")


def test_fused_stats_all_unobserved_chunk():
    z, c, y = trajectory(6, 3, 4, 5)
    c.zero_()
    assert_stats_equal(run_fused(z, c, y), compute_stats(z, c, y), "nothing observed")


def test_launch_config_layouts():
    assert launch_config(100, MAX_SINGLE_BLOCK_C, interpreter=False).single_block
    cfg = launch_config(100, MAX_SINGLE_BLOCK_C + 1, interpreter=False)
    assert not cfg.single_block and cfg.block_c < MAX_SINGLE_BLOCK_C + 1
    assert launch_config(3, 7, interpreter=True).block_n == 4  # never more rows than samples
    cfg = launch_config(10**6, 100_000, interpreter=False)
    assert not cfg.single_block and cfg.block_n >= 1
    with pytest.raises(ValueError, match="power of two"):
        launch_config(10, 10, interpreter=True, block_c=100)


@pytest.mark.parametrize("bad, match", [
    (dict(z=torch.zeros(2, 3)), r"\[E, N, C\]"),
    (dict(c=torch.zeros(2, 4, dtype=torch.int32)), r"counts \[E, N\] = \[2, 3\]"),
    (dict(y=torch.zeros(4, dtype=torch.long)), r"labels \[N\] = \[3\]"),
    (dict(z=torch.zeros(2, 3, 5, dtype=torch.float64)), "float16, bfloat16 or float32"),
    (dict(c=torch.zeros(2, 3)), "integers"),
])
def test_fused_stats_rejects_bad_inputs(bad, match):
    args = dict(z=torch.zeros(2, 3, 5), c=torch.ones(2, 3, dtype=torch.int32), y=torch.zeros(3, dtype=torch.long))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        fused_stats(args["z"], args["c"], args["y"])


# ------------------------------------------------------------------------------ kernels are leaves
def test_kernels_import_no_dprune_module():
    import subprocess
    import sys
    # The numba backend loads without triton, and no kernel module imports dprune.
    code = ("import sys, importlib.util as u; sys.modules['triton'] = None; "
            "import dprune.kernels.fused_stats_cpu as k; "
            "bad = [m for m in sys.modules if m.startswith('dprune') and not m.startswith('dprune.kernels') "
            "and m != 'dprune']; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------ numba CPU kernel
CPU_SHAPES = [  # E, N, C: the Triton tests' awkward shapes, and N over several sample blocks
    (3, 9, 1),
    (4, 13, 7),
    (3, 6, 751),
    (2, 5, 1041),
    (2, 3, 4099),
    (1, 7, 7),
    (4, 1, 7),
    (1, 1, 1041),
    (5, 3 * BLOCK_SAMPLES + 5, 33),
]


@pytest.mark.parametrize("E, N, C", CPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_numba_stats_match_reference(E, N, C, dtype):
    z, c, y = trajectory(E * 1000 + N * 10 + C + 1, E, N, C, dtype=dtype)
    got = fused_stats_cpu(z, c, y, with_p_avg=True, with_p_soft=True)
    assert got.p_avg is not None and fused_stats_cpu(z, c, y).p_avg is None
    assert_stats_equal(got, compute_stats(z, c, y), f"numba E={E} N={N} C={C} {dtype}",
                       ties=soft_argmax_ties(z, c))


@pytest.mark.parametrize("C", [1, 2, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_numba_stats_nan_and_inf_rows(C, dtype):
    z, c, y = trajectory(C + 3, 3, 24, C, nonfinite=True, dtype=dtype)
    want = compute_stats(z, c, y)
    assert want.nonfinite.sum() >= 4
    got = fused_stats_cpu(z, c, y, with_p_avg=True, with_p_soft=True)
    assert_stats_equal(got, want, f"numba nonfinite C={C} {dtype}")


def test_numba_stats_ties_and_extreme_logits():
    # Duplicated logits make argmax ties (the first index wins, as torch.argmax); -Inf entries
    # give p = 0 and log p = -Inf; a 200-nat spread underflows exp to 0.
    z, c, y = trajectory(8, 4, 12, 6, p_unobserved=0.0)
    z[:, :, 3] = z[:, :, 1]
    y[:4] = 1
    y[4:6] = 3
    z[:, 8, 0] = float("-inf")
    z[:, 9, 2] = -200.0
    z[1, 10] = 0.0  # a row of ties
    assert_stats_equal(fused_stats_cpu(z, c, y), compute_stats(z, c, y), "numba ties")


def test_numba_single_thread_equals_threaded():
    z, c, y = trajectory(9, 3, 4 * BLOCK_SAMPLES + 3, 40, dtype=torch.float16, nonfinite=True)
    one, many = fused_stats_cpu(z, c, y, threads=1), fused_stats_cpu(z, c, y)
    for field in TrajectoryStats._fields:
        torch.testing.assert_close(getattr(one, field), getattr(many, field), rtol=0, atol=0, equal_nan=True,
                                   msg=field)


def test_numba_kernel_keeps_the_callers_torch_thread_count():
    # Numba's OpenMP threading layer starts once per process and, with it, sets the OpenMP
    # thread count torch shares: run in a fresh process so this call is the one that starts it.
    import subprocess
    import sys

    code = ("import torch\n"
            "torch.set_num_threads(1)\n"
            "assert torch.get_num_threads() == 1\n"  # as a caller that trained before scoring has
            "from dprune.kernels.fused_stats_cpu import fused_stats_cpu\n"
            "z = torch.randn(2, 300, 5)\n"
            "fused_stats_cpu(z, torch.ones(2, 300, dtype=torch.int32), torch.zeros(300, dtype=torch.int64), threads=2)\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert out.stdout.split() == ["1"]


def test_numba_fp16_conversion_is_exact_for_every_value():
    import numba

    from dprune.kernels.cpu_intrinsics import half_to_f32

    @numba.njit
    def convert(bits):
        out = np.empty(bits.size, np.float32)
        for i in range(bits.size):
            out[i] = half_to_f32(bits[i])
        return out

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got, want = convert(bits), bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all()
    bad = np.flatnonzero(got[~nan].view(np.uint32) != want[~nan].view(np.uint32))  # -0.0 included
    assert not len(bad), f"fp16 bits {bits[~nan][bad[:6]]}: got {got[~nan][bad[:6]]}, want {want[~nan][bad[:6]]}"


def test_numba_exp_and_log_accuracy():
    import numba

    @numba.njit
    def apply(x):
        e, lg = np.empty_like(x), np.empty_like(x)
        for i in range(x.size):
            e[i] = cpu_kernel._exp(x[i])
            lg[i] = cpu_kernel._log(x[i]) if x[i] > 0 else np.float32(0)
        return e, lg

    x = -np.linspace(0, 87, 200_001, dtype=np.float32)
    e, _ = apply(x)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(e - want) / want) < 3e-7  # ~2 ulp
    e, _ = apply(np.array([-np.inf, np.nan, -88.0, -1e30, 0.0], np.float32))
    assert e[0] == 0 and np.isnan(e[1]) and e[2] == 0 and e[3] == 0 and e[4] == 1
    p = np.geomspace(1e-30, 1, 200_001).astype(np.float32)
    _, lg = apply(p)
    want = np.log(p.astype(np.float64))
    assert np.max(np.abs(lg - want) / np.maximum(np.abs(want), 1e-3)) < 3e-7


@pytest.mark.parametrize("bad, match", [
    (dict(z=torch.zeros(2, 3)), r"\[E, N, C\]"),
    (dict(c=torch.zeros(2, 4, dtype=torch.int32)), r"counts \[E, N\] = \[2, 3\]"),
    (dict(y=torch.zeros(4, dtype=torch.long)), r"labels \[N\] = \[3\]"),
    (dict(z=torch.zeros(2, 3, 5, dtype=torch.float64)), "float16, bfloat16 or float32"),
    (dict(c=torch.zeros(2, 3)), "integers"),
    (dict(y=torch.tensor([0, 5, 1])), r"labels must be in \[0, 5\)"),
    (dict(y=torch.tensor([0, -1, 1])), r"labels must be in \[0, 5\)"),
])
def test_numba_stats_rejects_bad_inputs(bad, match):
    args = dict(z=torch.zeros(2, 3, 5), c=torch.ones(2, 3, dtype=torch.int32), y=torch.zeros(3, dtype=torch.long))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        fused_stats_cpu(args["z"], args["c"], args["y"])


# ------------------------------------------------------------------------------ backends
def test_resolve_backend_names_what_runs():
    assert resolve_backend("torch") == ("torch", compute_stats)
    assert resolve_backend("numba") == ("numba", fused_stats_cpu)
    assert resolve_backend("auto")[0] == ("triton" if torch.cuda.is_available() else "numba")
    assert resolve_backend("triton")[0] == "triton"
    with pytest.raises(ValueError, match="valid: " + ", ".join(BACKENDS)):
        resolve_backend("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_triton_backend_without_gpu_or_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton")


def _store(tmp, z, c, y):
    store = TrajectoryStore.create(tmp, y.numpy(), z.shape[2], dtype="float32")
    for e in range(z.shape[0]):
        store.begin_epoch(e)
        store.put(e, 0, z[e].numpy(), c[e].numpy())
        store.complete_epoch(e)
    return TrajectoryStore.open(tmp)


def test_score_store_backends_agree():
    z, c, y = trajectory(11, 4, 37, 9, nonfinite=True)
    with tempfile.TemporaryDirectory() as d:
        store = _store(d, z, c, y)
        with np.errstate(all="ignore"):
            fused, ran_fused = score_store(store, backend="triton", chunk_size=10)
        cpu, ran_cpu = score_store(store, backend="numba", chunk_size=7)
        ref, ran_ref = score_store(store, backend="torch", chunk_size=9)
    assert (ran_fused, ran_cpu, ran_ref) == ("triton", "numba", "torch")
    for k in ref:
        for name, got in (("triton", fused), ("numba", cpu)):
            np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(ref[k], float), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name}: {k}")


def test_score_store_reader_stops_on_error(monkeypatch):
    import threading

    z, c, y = trajectory(12, 2, 30, 4)
    with tempfile.TemporaryDirectory() as d:
        store = _store(d, z, c, y)

        def failing(*args, **kw):
            raise RuntimeError("stats failed")

        monkeypatch.setattr("dprune.scoring.api.resolve_backend", lambda name: ("torch", failing))
        before = threading.active_count()
        with pytest.raises(RuntimeError, match="stats failed"):
            score_store(store, chunk_size=4)
        assert threading.active_count() == before


# ------------------------------------------------------------------------------ soft-label tier, epoch arrays
SOFT_FIELDS = ("n_obs", "nonfinite", "entropy", "p_max", "p_second", "soft_argmax", "p_label")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("E, N, C", [(1, 1, 2), (3, 37, 7), (4, 50, 1041)])
def test_numba_soft_tier_equals_the_reference_soft_label(E, N, C, dtype):
    z, c, y = trajectory(E * N + C, E, N, C, dtype=dtype, nonfinite=True)
    got = fused_stats_cpu(z, c, y, tier="soft", with_p_soft=True)
    want = compute_stats(z, c, y)
    assert got.p_avg is None and fused_stats_cpu(z, c, y, tier="soft").p_soft is None
    for f in SOFT_FIELDS + ("p_soft",):
        g, w = getattr(got, f), getattr(want, f)
        if g.is_floating_point():
            assert torch.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True).all(), f
        elif f == "soft_argmax":  # undefined soft labels: any index, masked by the scorers
            ok = (g == w) | torch.isnan(want.p_max)
            assert ok.all(), f
        else:
            assert torch.equal(g, w), f
    assert torch.isnan(got.entropy_prob).all() and got.logp_label.shape == (0, N)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("E, N, C", [(1, 1, 2), (3, 37, 7), (4, 50, 1041), (5, 19, 1)])
def test_numba_probs_tier_equals_the_full_tier_without_the_per_epoch_fields(E, N, C, dtype):
    # The probs tier (confident learning's mean probabilities, no per-epoch statistics) must give
    # the full tier's numbers exactly, NaN/Inf rows and unobserved samples included.
    z, c, y = trajectory(E * N + C + 1, E, N, C, dtype=dtype, nonfinite=True)
    got = fused_stats_cpu(z, c, y, tier="probs", with_p_avg=True, with_p_soft=True)
    full = fused_stats_cpu(z, c, y, tier="all", with_p_avg=True, with_p_soft=True)
    for f in SOFT_FIELDS + ("entropy_prob", "p_avg", "p_soft"):
        assert torch.equal(getattr(got, f).nan_to_num(7.0), getattr(full, f).nan_to_num(7.0)), f
    for f in ("logp_label", "correct", "logit_margin", "el2n", "tdds_div"):
        assert getattr(got, f).shape == (0, N), f
    with pytest.raises(ValueError, match="tier must be one of"):
        fused_stats_cpu(z, c, y, tier="some")
    with pytest.raises(ValueError, match="soft tier does not compute the mean probabilities"):
        fused_stats_cpu(z, c, y, tier="soft", with_p_avg=True)


def test_epoch_arrays_read_in_place_equal_the_stacked_tensor():
    from dprune.kernels.fused_stats_cpu import fused_stats_epochs

    z, c, y = trajectory(3, 4, 29, 11, dtype=torch.float16)
    # Each epoch in an array of its own, rows of a wider buffer (as slices of mapped files are).
    epochs = [np.ascontiguousarray(z[e].numpy()) for e in range(4)]
    for tier in ("all", "probs", "soft"):
        got = fused_stats_epochs(epochs, c.numpy(), y.numpy(), tier=tier, with_p_avg=tier != "soft",
                                 p_soft_out=np.full((29, 11), 7.0, np.float32))
        want = fused_stats_cpu(z, c, y, tier=tier, with_p_avg=tier != "soft", with_p_soft=True)
        for f in want._fields:
            a, b = getattr(got, f), getattr(want, f)
            assert (a is None and b is None) or torch.equal(a, b) or torch.allclose(a, b, equal_nan=True), f
    with pytest.raises(ValueError, match="C-contiguous rows"):
        fused_stats_epochs([e[:, ::2] for e in epochs], c.numpy(), y.numpy())
    with pytest.raises(ValueError, match="one dtype"):
        fused_stats_epochs([epochs[0].astype(np.float32)] + epochs[1:], c.numpy(), y.numpy())


def test_entropy_alone_is_scored_from_the_soft_label_tier():
    z, c, y = trajectory(13, 3, 41, 9, nonfinite=True)
    with tempfile.TemporaryDirectory() as d:
        store = _store(d, z, c, y)
        soft, _ = score_store(store, methods=["entropy"], chunk_size=8)
        full, _ = score_store(store, chunk_size=8)
    for k in ("entropy", "soft_argmax", "p_max", "margin", "mislabel", "outlier", "nonfinite", "n_observed"):
        np.testing.assert_allclose(np.asarray(soft[k], np.float64), np.asarray(full[k], np.float64), rtol=1e-5,
                                   atol=1e-6, equal_nan=True, err_msg=k)


# ------------------------------------------------------------------------------ per-epoch scorers (numba)
@pytest.mark.parametrize("E, N, C, window", [(1, 5, 3, 10), (2, 40, 4, 2), (6, 61, 7, 3), (12, 33, 5, 10)])
def test_per_epoch_scorer_kernel_equals_the_torch_scorers(E, N, C, window):
    from dprune.kernels.epoch_scores_cpu import NAMES
    from dprune.scoring.scorers import EPOCH_SCORERS

    assert set(NAMES) == set(EPOCH_SCORERS)
    kernel, reference = implementation("epoch_scores", "cpu"), implementation("epoch_scores", "reference")
    z, c, y = trajectory(E + N, E, N, C, p_unobserved=0.4, nonfinite=True)
    st = compute_stats(z, c, y)
    fields = (st.logp_label, st.correct, st.logit_margin, st.el2n, st.tdds_div, (st.n_obs == 0) | st.nonfinite)
    for el2n_epoch in (None, 0, -2 % E):
        kw = dict(methods=list(EPOCH_SCORERS), el2n_epoch=el2n_epoch, tdds_window=window, tdds_decay=0.7,
                  dyn_unc_window=window, dual_window=window)
        got, want = kernel(*fields, **kw), reference(*fields, **kw)
        for name in EPOCH_SCORERS:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


def test_the_kernel_table_imports_each_implementation_when_called():
    import subprocess
    import sys

    # Importing scoring (and its table) loads neither numba nor Triton: they load when a call selects them.
    code = ("import sys, dprune.scoring.backends, dprune.scoring; "
            "print(sorted(m for m in ('numba', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name, kernel in KERNELS.items():
        assert kernel.reference.startswith("dprune.scoring."), name
        for column in kernel._fields:
            assert callable(implementation(name, column)), (name, column)
