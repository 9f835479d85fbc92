"""Training with trajectory recording: config, loop (DDP / DeepSpeed), recorder, pipeline."""
from .config import TrainConfig

__all__ = ["TrainConfig"]
