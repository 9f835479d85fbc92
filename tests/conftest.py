"""Shared test setup.

TRITON_INTERPRET must be set before triton is first imported (its decorators read it), so
Triton kernels run on the CPU in the interpreter here; DS_ACCELERATOR keeps DeepSpeed on the
CPU even on a GPU machine.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
