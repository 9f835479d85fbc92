"""Triton kernels and their launchers (installed as ``dprune.kernels``).

One kernel per module, each with a plain launcher and a torch reference in ``dprune``:

* :mod:`.fused_stats` -- :func:`~.fused_stats.fused_stats`, every field of
  :class:`dprune.scoring.stats.TrajectoryStats` in one pass (reference:
  :func:`dprune.scoring.stats.compute_stats`).
* :mod:`.accumulate` -- :func:`~.accumulate.scatter_add_rows`, a batch of logits added into an
  epoch accumulator with counts (reference: ``Tensor.index_add_``).

On a machine without a GPU the kernels run in Triton's interpreter, which is chosen when a
kernel is decorated: set ``TRITON_INTERPRET=1`` before importing these modules.
"""
import triton


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (it runs on the CPU)."""
    return isinstance(kernel, triton.runtime.interpreter.InterpretedFunction)
