"""Training configuration: small dataclasses in sections, validated up front (torchtitan-style).

:class:`TrainConfig` holds what concerns the whole run and one section each for ``data``,
``model``, ``optim``, ``reid``, ``record`` and ``distributed``.  Every field also has a flat
name, unique across sections (its own, or ``metadata["flag"]``: ``model.name`` is ``model``,
``record.mode`` is ``record``): the ``dprune train`` options (``--lr``), ``dprune run --set``,
a ``--config`` file and the checkpoint's record use it (:data:`FLAT_FIELDS`,
:meth:`TrainConfig.of`, :meth:`TrainConfig.flat`), so a resumed run is compared field by
field with the one that made the checkpoint.  The selection of prune-in-run is not training
configuration: :class:`dprune.runs.TrainRun` nests this and the
:class:`~dprune.select.PruneSpec`.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

from ..recorder import WRITES as RECORD_WRITES
from ..store import STORE_KINDS

TASKS = ("classification", "reid")
BACKENDS = ("ddp", "deepspeed")
RECORD_MODES = ("train", "pass", "off")
AMP_MODES = ("auto", "off", "bf16", "fp16")
NOISE_KINDS = ("none", "symmetric", "class")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class DataConfig:
    """The training data: which set, how it is loaded, its labels."""

    dataset: str = field(default="digits", metadata={"help": 'Dataset name: digits, fashion-mnist, mnist, cifar10, cifar100, cub200, imagefolder; for --task reid: market1501, msmt17, veri776.'})
    data_root: Optional[str] = field(default=None, metadata={"help": 'Folder of the dataset (not needed for digits).'})
    image_size: int = field(default=224, metadata={"help": 'Side of photographs (ImageFolder, CUB) after resizing.'})
    augment: bool = field(default=False, metadata={"help": "Use the dataset's training augmentation."})
    batch_size: int = field(default=64, metadata={"help": 'Per-rank batch size.'})
    num_workers: int = field(default=0, metadata={"help": 'DataLoader worker processes per rank.'})
    label_noise: float = field(default=0.0, metadata={"help": 'Fraction of training labels to corrupt (for experiments).'})
    noise_kind: str = field(default="none", metadata={"help": 'none, symmetric (uniform to another class) or class (class c -> c+1).'})
    noise_seed: int = field(default=0, metadata={"help": 'Seed of the injected label noise.'})
    labels_file: Optional[str] = field(default=None, metadata={"help": "Train on these labels instead of the dataset's: an .npy of N integer labels (human noisy labels such as CIFAR-N, or noise of your own, e.g. dprune.data.instance_dependent_noise). OUT/label_noise.npz records where they differ from the dataset's."})
    manifest: Optional[str] = field(default=None, metadata={"help": "Train only on the manifest's kept samples, with its corrected labels."})

    def __post_init__(self):
        _check(self.image_size >= 1, f"image_size must be >= 1, got {self.image_size}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(self.noise_kind in NOISE_KINDS, f"noise_kind must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        _check(0 <= self.label_noise < 1, f"label_noise must be in [0, 1), got {self.label_noise}")
        _check((self.label_noise > 0) == (self.noise_kind != "none"),
               f"label_noise={self.label_noise} needs noise_kind symmetric or class (got {self.noise_kind!r}), and vice versa")
        _check(self.labels_file is None or self.label_noise == 0,
               "labels_file and label_noise cannot be combined (the file holds the labels to train with)")


@dataclass
class ModelConfig:
    """The network."""

    name: str = field(default="small_cnn", metadata={"flag": "model", "help": 'small_cnn, resnet18 or resnet50.'})
    weights: Optional[str] = field(default=None, metadata={"help": 'Local weights file for the model (never downloaded).'})


@dataclass
class OptimConfig:
    """The optimiser and its schedule (defaults of lr and label_smoothing depend on the task)."""

    lr: Optional[float] = field(default=None, metadata={"help": 'Peak learning rate; default 0.05 (classification: SGD, cosine schedule) or 3.5e-4 (reid: Adam, warm-up + steps).'})
    momentum: float = field(default=0.9, metadata={"help": 'SGD (Nesterov) momentum.'})
    weight_decay: float = field(default=5e-4, metadata={"help": 'L2 weight decay.'})
    warmup_epochs: int = field(default=0, metadata={"help": 'Linear warm-up epochs before the cosine decay.'})
    label_smoothing: Optional[float] = field(default=None, metadata={"help": "Label smoothing of the ID/classification loss; default 0.1 for reid, 0 otherwise."})

    def __post_init__(self):
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, f"{name} must be a finite number >= 0, got {v}")
        _check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
               f"lr must be a finite number > 0, got {self.lr}")
        _check(self.label_smoothing is None or 0 <= self.label_smoothing < 1,
               f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class ReIDConfig:
    """The ReID recipe (``task="reid"``)."""

    pk_k: int = field(default=4, metadata={"help": "reid: images per identity in a batch (K); P = batch_size // K identities."})
    reid_height: int = field(default=256, metadata={"help": "reid: input height."})
    reid_width: int = field(default=128, metadata={"help": "reid: input width."})
    triplet_margin: float = field(default=0.3, metadata={"help": "reid: margin of the batch-hard triplet loss."})

    def __post_init__(self):
        _check(self.reid_height >= 1 and self.reid_width >= 1 and self.pk_k >= 1,
               "reid_height, reid_width and pk_k must be >= 1")
        _check(math.isfinite(self.triplet_margin) and self.triplet_margin >= 0,
               f"triplet_margin must be a finite number >= 0, got {self.triplet_margin}")


@dataclass
class RecordConfig:
    """What is recorded into the trajectory store, and how."""

    mode: str = field(default="train", metadata={"flag": "record", "help": 'train: record the training forward pass (the paper); pass: an extra deterministic pass over the whole training set after each epoch; off: no recording.'})
    record_epochs: Optional[int] = field(default=None, metadata={"help": "Record only the first K epochs (default: every epoch). The paper scores the first ~10% of a run."})
    store: str = field(default="full", metadata={"help": "full: every epoch's logits (E x N x C on disk); summary: O(N x C) running statistics."})
    store_dtype: str = field(default="float16", metadata={"help": 'Precision of the stored logits: float16 or float32.'})
    record_writes: str = field(default="auto", metadata={"help": "How a distributed run's logits reach the store: gather (to rank 0, which writes everything), shared (each rank writes its own rows; the store must sit on a filesystem every rank sees) or auto (shared when every rank sees the store's folder and the store is full, else gather). The store is the same either way."})
    threshold_samples: bool = field(default=False, metadata={"help": "Pleiss et al.'s threshold samples: a seeded 1/(C+1) of the training samples get a fake extra class, so the 99th percentile of their AUM is the data's own mislabel threshold (flag aum_mislabel, detector aum). They cannot be judged in this run; a manifest gives them back their labels."})

    def __post_init__(self):
        _check(self.mode in RECORD_MODES, f"record must be one of {RECORD_MODES}, got {self.mode!r}")
        _check(self.record_epochs is None or self.record_epochs >= 1,
               f"record_epochs must be >= 1, got {self.record_epochs}")
        _check(self.store in STORE_KINDS, f"store must be one of {tuple(STORE_KINDS)}, got {self.store!r}")
        _check(self.store_dtype in ("float16", "float32"),
               f"store_dtype must be float16 or float32, got {self.store_dtype!r}")
        _check(self.record_writes in RECORD_WRITES,
               f"record_writes must be one of {', '.join(RECORD_WRITES)}, got {self.record_writes!r}")
        _check(self.record_writes != "shared" or self.store == "full",
               f"record_writes shared needs store full (a {self.store} store is written by rank 0)")


@dataclass
class DistributedConfig:
    """Backend, precision and device."""

    backend: str = field(default="ddp", metadata={"help": 'ddp (plain torch, also for one process) or deepspeed.'})
    deepspeed_config: Optional[str] = field(default=None, metadata={"help": 'DeepSpeed JSON config; default: ZeRO stage `zero_stage`, bf16 where supported.'})
    zero_stage: int = field(default=1, metadata={"help": 'DeepSpeed ZeRO stage (0, 1 or 2) when no deepspeed_config is given.'})
    amp: str = field(default="auto", metadata={"help": 'Mixed precision: auto = bf16 (or fp16 + loss scaling) on CUDA, off on CPU.'})
    device: str = field(default="auto", metadata={"help": 'auto (cuda:LOCAL_RANK if available, else cpu), cpu or cuda.'})

    def __post_init__(self):
        _check(self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}")
        _check(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        _check(self.zero_stage in (0, 1, 2), f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.deepspeed_config is None or self.backend == "deepspeed",
               "deepspeed_config is given but backend is not deepspeed")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "reid": ReIDConfig,
            "record": RecordConfig, "distributed": DistributedConfig}


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``dprune train --help`` for the same in words."""

    out: str = field(metadata={"help": 'Run directory: trajectory store, checkpoints, metrics.'})
    task: str = field(default="classification", metadata={"help": "classification (top-1 accuracy) or reid (BoT recipe: BNNeck, ID + triplet loss, P x K sampling, mAP/CMC)."})
    epochs: int = field(default=12, metadata={"help": 'Epochs to train (and record).'})
    seed: int = field(default=0, metadata={"help": 'Seeds data order, initialisation and label noise (each rank offsets its own RNG).'})
    frozen: bool = field(default=False, metadata={"help": "No training: only the recording pass over a fixed model (--weights), e.g. to record a trained checkpoint. Needs record=pass."})
    max_steps_per_epoch: Optional[int] = field(default=None, metadata={"help": 'Stop each epoch early (for smoke tests).'})
    eval_every: int = field(default=1, metadata={"help": "Evaluate the test split every N epochs and after the last; 0: only after the last (evaluation can cost as much as an epoch)."})
    progress: bool = field(default=True, metadata={"help": 'Show progress bars and per-epoch lines (rank 0).'})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reid: ReIDConfig = field(default_factory=ReIDConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self):
        _check(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
               f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        optim, data, record = self.optim, self.data, self.record
        if optim.lr is None:
            optim.lr = 3.5e-4 if self.task == "reid" else 0.05
        if optim.label_smoothing is None:
            optim.label_smoothing = 0.1 if self.task == "reid" else 0.0
        if self.task == "reid":
            k = self.reid.pk_k
            _check(k >= 2 and data.batch_size // k >= 2,
                   f"reid batches need K >= 2 images of P >= 2 identities: batch_size {data.batch_size}, pk_k {k}")
            _check(data.data_root is not None, "reid needs --data-root (the dataset folder)")
        _check(optim.warmup_epochs < self.epochs or optim.warmup_epochs == 0,
               f"warmup_epochs ({optim.warmup_epochs}) must be < epochs ({self.epochs})")
        _check(not self.frozen or record.mode == "pass", f"frozen needs record='pass', got {record.mode!r}")
        _check(not record.threshold_samples or (self.task == "classification" and record.mode != "off"
                                                and data.manifest is None),
               "threshold_samples needs a classification task with recording and no manifest")

    @classmethod
    def of(cls, **flat) -> TrainConfig:
        """The configuration of flat fields (``TrainConfig.of(out="r", lr=0.1, record="pass")``)."""
        unknown = sorted(set(flat) - set(FLAT_FIELDS))
        if unknown:
            raise ValueError(f"unknown training field(s) {unknown} (see dprune train --help)")
        sections: dict[str, dict] = {name: {} for name in SECTIONS}
        top = {}
        for key, value in flat.items():
            where = FLAT_FIELDS[key]
            (top if where.section is None else sections[where.section])[where.name] = value
        if "out" not in top:
            raise ValueError("out is required (the run directory)")
        return cls(**top, **{name: SECTIONS[name](**values) for name, values in sections.items()})

    def flat(self) -> dict:
        """Every field by its flat name (what the checkpoint records)."""
        return {key: getattr(self if f.section is None else getattr(self, f.section), f.name)
                for key, f in FLAT_FIELDS.items()}

    def replace(self, **flat) -> TrainConfig:
        """A copy with these flat fields changed (validated again)."""
        return TrainConfig.of(**{**self.flat(), **flat})


class FlatField(typing.NamedTuple):
    section: Optional[str]
    """None for a field of TrainConfig itself."""
    name: str
    type: object
    help: str
    default: object


def _flat_fields() -> dict[str, FlatField]:
    out = {}
    for section, cls in [(None, TrainConfig), *SECTIONS.items()]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if cls is TrainConfig and f.name in SECTIONS:
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            out[f.metadata.get("flag", f.name)] = FlatField(section, f.name, hints[f.name], f.metadata.get("help", ""),
                                                           default)
    return out


FLAT_FIELDS = _flat_fields()
"""Flat name -> where the field lives, its type, help and default (for options and files)."""
