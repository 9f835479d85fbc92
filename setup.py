"""Packaging for dprune.

The PyPI name ``dprune`` belongs to an unrelated project, so the distribution is
``dprune-trajectory``; the import name stays ``dprune``.  The top-level ``kernels/``
folder is installed as ``dprune.kernels`` (never as a top-level ``kernels`` package).
"""
from setuptools import find_packages, setup

packages = find_packages(include=["dprune", "dprune.*"]) + ["dprune.kernels"]

setup(
    name="dprune-trajectory",
    version="0.2.0",
    description="Training-dynamics data pruning: logit trajectories, entropy scores, "
    "mislabel correction and pruned-set retraining",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"dprune.kernels": "kernels"},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy>=1.24",
        "numba>=0.60",
        "click>=8.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "pillow>=9",
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.19,<0.20"],
        "test": ["pytest>=7", "hypothesis>=6.80", "deepspeed>=0.19,<0.20", "cleanlab>=2.6"],
        "bench": ["cleanlab>=2.6"],
    },
    entry_points={"console_scripts": ["dprune=dprune.cli:main"]},
)
