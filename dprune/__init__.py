"""dprune: training-dynamics data pruning (arXiv 2412.10091, "Data Pruning Can Do More")."""

__version__ = "0.1.0"
