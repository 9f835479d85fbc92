"""Datasets: the common labelled-image interface, loaders, the index-carrying wrapper, noise."""
from dprune.data.base import FileImageDataset, LabeledImageDataset, TensorImageDataset, to_float_chw
from dprune.data.cifar import load_cifar
from dprune.data.classification import DATASET_NAMES, build_dataset
from dprune.data.cub import load_cub200
from dprune.data.digits import load_digits_dataset
from dprune.data.imagefolder import IMAGE_EXTENSIONS, load_imagefolder
from dprune.data.mnist import FASHION_MNIST_ROOT, load_mnist, read_idx
from dprune.data.indexed import IndexedDataset
from dprune.data.noise import class_dependent_noise, instance_dependent_noise, symmetric_noise
from dprune.data.paths import resolve_under
from dprune.data.safe_pickle import ALLOWED_GLOBALS, RefusedPickleError, load_restricted_pickle
from dprune.data.transforms import NORMALISATION, default_transform

__all__ = [
    "ALLOWED_GLOBALS", "DATASET_NAMES", "FASHION_MNIST_ROOT", "IMAGE_EXTENSIONS", "NORMALISATION",
    "FileImageDataset", "IndexedDataset", "LabeledImageDataset", "RefusedPickleError",
    "TensorImageDataset", "build_dataset", "class_dependent_noise", "default_transform", "instance_dependent_noise",
    "load_cifar", "load_cub200", "load_digits_dataset", "load_imagefolder", "load_mnist",
    "load_restricted_pickle", "read_idx", "resolve_under", "symmetric_noise", "to_float_chw",
]
