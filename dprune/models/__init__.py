"""Classifiers built by name: torchvision ResNets (never downloaded) and a small CNN."""
from dprune.models.build import (
    MODEL_NAMES,
    SMALL_INPUT_MAX,
    build_model,
    load_weights,
    read_state_dict,
)
from dprune.models.small_cnn import SmallCNN

__all__ = ["MODEL_NAMES", "SMALL_INPUT_MAX", "SmallCNN", "build_model", "load_weights",
           "read_state_dict"]
