"""``python -m dprune COMMAND ...``, e.g. ``torchrun --nproc_per_node=2 -m dprune train --out RUN ...``."""
import sys

from .cli import main

sys.exit(main(prog_name="python -m dprune"))
