"""The kernel table: which implementation runs each kernel, looked up at call time.

Each kernel has three implementations with one signature: ``cpu`` (numba), ``gpu`` (Triton,
or torch on the GPU where a kernel has no Triton version) and ``reference`` (plain torch or
numpy in ``dprune.scoring``: the readable definition the tests compare the others with).  A
scoring backend picks a column (:data:`COLUMNS`):

``numba``: the CPU kernels, threads over samples; ``triton``: the GPU column, on a CUDA GPU or
in Triton's (slow) CPU interpreter; ``torch``: the references, on whatever device the chunk is
on (slow); ``auto``: ``triton`` when a CUDA GPU is available, else ``numba``.  Confident
learning runs after the pass, on the probabilities it reads, on the host: its ``gpu`` entry is the
CPU one.

Implementations are imported when :func:`implementation` is called, never when this module is
imported: importing :mod:`dprune` loads neither numba nor Triton.  What still needs the
environment: Triton chooses its interpreter when ``@triton.jit`` runs, i.e. when
``dprune.kernels.fused_stats`` is first imported, which happens at the first call that selects
the ``triton`` column.  To run Triton on a CPU, set ``TRITON_INTERPRET=1`` before that call
(the tests' ``conftest.py`` sets it at start-up); a process that has already imported the
kernel for a GPU cannot switch it to the interpreter.

No silent fallback: asking for a backend that cannot run raises ``ValueError``.
To add a kernel: its file in ``kernels/``, one line in :data:`KERNELS`, its reference in
``dprune/scoring`` and a test comparing the two.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, NamedTuple

import numpy as np
import torch

from .stats import TrajectoryStats

BACKENDS = ("auto", "torch", "triton", "numba")


class Kernel(NamedTuple):
    """Where each implementation of a kernel lives, as ``"module:function"``."""

    cpu: str
    gpu: str
    reference: str


KERNELS = {
    # per-sample statistics (fused_stats_cpu(logits_ENC, counts_EN, labels_N, *, with_p_avg, with_p_soft) -> FusedStats)
    "fused_stats": Kernel("dprune.kernels.fused_stats_cpu:fused_stats_cpu", "dprune.kernels.fused_stats:fused_stats",
                          "dprune.scoring.stats:compute_stats"),
    # the scorers that read per-epoch statistics (five [E, N] fields, invalid [N], *, methods, params) -> {name: [N]}
    "epoch_scores": Kernel("dprune.kernels.epoch_scores_cpu:epoch_scores_cpu", "dprune.scoring.scorers:epoch_scores",
                           "dprune.scoring.scorers:epoch_scores"),
    # confident learning over soft labels or p-bar (p_avg_NC, labels_N, valid_N, *, agree, filter_by) -> {name: [N]}
    "confident": Kernel("dprune.scoring.confident:confident_learning", "dprune.scoring.confident:confident_learning",
                        "dprune.scoring.confident_reference:confident_learning_reference"),
}

# The column of the table each resolved backend runs (a summary store is scored on the CPU).
COLUMNS = {"numba": "cpu", "summary": "cpu", "triton": "gpu", "torch": "reference"}

StatsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], TrajectoryStats]


def implementation(kernel: str, column: str) -> Callable:
    """The function of ``kernel`` in ``column`` (``"cpu"``, ``"gpu"`` or ``"reference"``), imported now."""
    module, _, name = getattr(KERNELS[kernel], column).partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_backend(backend: str = "auto") -> tuple[str, StatsFn]:
    """Return ``(name of the backend that will run, its statistics function)``.

    Raises ``ValueError`` for an unknown name, or for ``triton`` without a CUDA GPU and
    without Triton's interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if torch.cuda.is_available() else "numba"
    if backend == "triton" and not torch.cuda.is_available():
        _check_interpreter()
    return backend, implementation("fused_stats", COLUMNS[backend])


def _check_interpreter() -> None:
    """Refuse the ``triton`` column on a CPU unless Triton's interpreter runs its kernel."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend 'triton' needs a CUDA GPU; on a CPU, set TRITON_INTERPRET=1 in the environment before the "
            "first scoring call with backend 'triton' to run Triton's interpreter (slow), or use backend 'numba'"
        )
    from dprune.kernels.fused_stats import interpreter_active

    if not interpreter_active():
        raise ValueError(
            "backend 'triton' on a CPU: the Triton kernel was imported before TRITON_INTERPRET=1 was set, so it "
            "was compiled for a GPU; set the variable before the first call that uses it"
        )


def epochs_stats(name: str, stats_fn: StatsFn) -> Callable[..., TrajectoryStats]:
    """``stats(epochs_nC, counts_EN, labels_N, **kw)`` over E separate epoch arrays, on the CPU.

    ``numba`` reads the arrays in place through the CPU kernel's second entry point
    (:func:`dprune.kernels.fused_stats_cpu.fused_stats_epochs`); any other backend gets them
    stacked into one [E, n, C] tensor.
    """
    if name == "numba":
        from dprune.kernels.fused_stats_cpu import fused_stats_epochs

        return fused_stats_epochs

    def stacked(epochs_nC, counts_EN, labels_N, **kw):
        return stats_fn(torch.from_numpy(np.stack(epochs_nC)), torch.from_numpy(counts_EN),
                        torch.from_numpy(labels_N), **kw)

    return stacked


def backend_device(name: str) -> torch.device:
    """Device a resolved backend computes on: the GPU for ``triton`` when there is one, else the CPU."""
    if name == "triton" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
