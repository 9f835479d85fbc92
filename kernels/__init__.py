"""Fused scoring kernels and their launchers (installed as ``dprune.kernels``).

Kernels are leaves: they import torch, triton, numba and numpy, never ``dprune``, and return
plain tensors (:class:`~.common.FusedStats`).  Each has a torch reference in
``dprune.scoring`` that the tests compare it with.

* :mod:`.fused_stats` -- Triton (GPU, or the CPU interpreter under ``TRITON_INTERPRET=1``,
  which must be set before this module is imported).
* :mod:`.fused_stats_cpu` -- numba, the same single pass on the CPU; needs no triton.

Importing this package imports neither triton nor numba.
"""
