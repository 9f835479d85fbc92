"""Fused scoring kernels and their launchers (installed as ``dprune.kernels``).

Kernels are leaves: they import torch, triton, numba and numpy, never ``dprune``, and return
plain tensors (:class:`~.common.FusedStats`).  Each has a torch reference in
``dprune.scoring`` that the tests compare it with.

* :mod:`.fused_stats` -- Triton (GPU, or the CPU interpreter under ``TRITON_INTERPRET=1``,
  which ``triton.jit`` reads when this module is first imported: ``dprune`` imports it only
  at the first call that runs it, see ``dprune.scoring.backends``).
* :mod:`.fused_stats_cpu` -- numba, the same single pass on the CPU; needs no triton.  Its
  LLVM intrinsics are in :mod:`.cpu_intrinsics`.
* :mod:`.epoch_scores_cpu` -- numba, the scorers that read per-epoch statistics.
* :mod:`.confident_cpu` -- numba, confident learning's passes over the rows.

Which implementation runs is decided per call by the kernel table in
``dprune.scoring.backends``, beside each kernel's reference.

Importing this package imports neither triton nor numba.
"""
