"""Training configuration: one dataclass, validated up front.

The ``dprune train`` options are generated from these fields, ``dprune run`` maps its own
options and ``--set FIELD=VALUE`` onto them, and the checkpoint records them, so a resumed
run is compared field by field with the one that made the checkpoint.  The selection of
prune-in-run is not training configuration: :class:`dprune.runs.TrainRun` nests this and
the :class:`~dprune.select.PruneSpec`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..recorder import WRITES as RECORD_WRITES
from ..store import STORE_KINDS

TASKS = ("classification", "reid")
BACKENDS = ("ddp", "deepspeed")
RECORD_MODES = ("train", "pass", "off")
AMP_MODES = ("auto", "off", "bf16", "fp16")
NOISE_KINDS = ("none", "symmetric", "class")


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``dprune train --help`` for the same in words."""

    out: str = field(metadata={"help": 'Run directory: trajectory store, checkpoints, metrics.'})
    task: str = field(default="classification", metadata={"help": "classification (top-1 accuracy) or reid (BoT recipe: BNNeck, ID + triplet loss, P x K sampling, mAP/CMC)."})
    dataset: str = field(default="digits", metadata={"help": 'Dataset name: digits, fashion-mnist, mnist, cifar10, cifar100, cub200, imagefolder; for --task reid: market1501, msmt17, veri776.'})
    data_root: Optional[str] = field(default=None, metadata={"help": 'Folder of the dataset (not needed for digits).'})
    model: str = field(default="small_cnn", metadata={"help": 'small_cnn, resnet18 or resnet50.'})
    weights: Optional[str] = field(default=None, metadata={"help": 'Local weights file for the model (never downloaded).'})
    image_size: int = field(default=224, metadata={"help": 'Side of photographs (ImageFolder, CUB) after resizing.'})
    epochs: int = field(default=12, metadata={"help": 'Epochs to train (and record).'})
    record_epochs: Optional[int] = field(default=None, metadata={"help": "Record only the first K epochs (default: every epoch). The paper scores the first ~10% of a run."})
    batch_size: int = field(default=64, metadata={"help": 'Per-rank batch size.'})
    lr: Optional[float] = field(default=None, metadata={"help": 'Peak learning rate; default 0.05 (classification: SGD, cosine schedule) or 3.5e-4 (reid: Adam, warm-up + steps).'})
    momentum: float = field(default=0.9, metadata={"help": 'SGD (Nesterov) momentum.'})
    weight_decay: float = field(default=5e-4, metadata={"help": 'L2 weight decay.'})
    warmup_epochs: int = field(default=0, metadata={"help": 'Linear warm-up epochs before the cosine decay.'})
    augment: bool = field(default=False, metadata={"help": "Use the dataset's training augmentation."})
    pk_k: int = field(default=4, metadata={"help": "reid: images per identity in a batch (K); P = batch_size // K identities."})
    reid_height: int = field(default=256, metadata={"help": "reid: input height."})
    reid_width: int = field(default=128, metadata={"help": "reid: input width."})
    triplet_margin: float = field(default=0.3, metadata={"help": "reid: margin of the batch-hard triplet loss."})
    label_smoothing: Optional[float] = field(default=None, metadata={"help": "Label smoothing of the ID/classification loss; default 0.1 for reid, 0 otherwise."})
    seed: int = field(default=0, metadata={"help": 'Seeds data order, initialisation and label noise (each rank offsets its own RNG).'})
    backend: str = field(default="ddp", metadata={"help": 'ddp (plain torch, also for one process) or deepspeed.'})
    deepspeed_config: Optional[str] = field(default=None, metadata={"help": 'DeepSpeed JSON config; default: ZeRO stage `zero_stage`, bf16 where supported.'})
    zero_stage: int = field(default=1, metadata={"help": 'DeepSpeed ZeRO stage (0, 1 or 2) when no deepspeed_config is given.'})
    amp: str = field(default="auto", metadata={"help": 'Mixed precision: auto = bf16 (or fp16 + loss scaling) on CUDA, off on CPU.'})
    record: str = field(default="train", metadata={"help": 'train: record the training forward pass (the paper); pass: an extra deterministic pass over the whole training set after each epoch; off: no recording.'})
    store: str = field(default="full", metadata={"help": "full: every epoch's logits (E x N x C on disk); summary: O(N x C) running statistics."})
    store_dtype: str = field(default="float16", metadata={"help": 'Precision of the stored logits: float16 or float32.'})
    record_writes: str = field(default="auto", metadata={"help": "How a distributed run's logits reach the store: gather (to rank 0, which writes everything), shared (each rank writes its own rows; the store must sit on a filesystem every rank sees) or auto (shared when every rank sees the store's folder and the store is full, else gather). The store is the same either way."})
    manifest: Optional[str] = field(default=None, metadata={"help": "Train only on the manifest's kept samples, with its corrected labels."})
    threshold_samples: bool = field(default=False, metadata={"help": "Pleiss et al.'s threshold samples: a seeded 1/(C+1) of the training samples get a fake extra class, so the 99th percentile of their AUM is the data's own mislabel threshold (flag aum_mislabel, detector aum). They cannot be judged in this run; a manifest gives them back their labels."})
    label_noise: float = field(default=0.0, metadata={"help": 'Fraction of training labels to corrupt (for experiments).'})
    noise_kind: str = field(default="none", metadata={"help": 'none, symmetric (uniform to another class) or class (class c -> c+1).'})
    noise_seed: int = field(default=0, metadata={"help": 'Seed of the injected label noise.'})
    labels_file: Optional[str] = field(default=None, metadata={"help": "Train on these labels instead of the dataset's: an .npy of N integer labels (human noisy labels such as CIFAR-N, or noise of your own, e.g. dprune.data.instance_dependent_noise). OUT/label_noise.npz records where they differ from the dataset's."})
    num_workers: int = field(default=0, metadata={"help": 'DataLoader worker processes per rank.'})
    device: str = field(default="auto", metadata={"help": 'auto (cuda:LOCAL_RANK if available, else cpu), cpu or cuda.'})
    frozen: bool = field(default=False, metadata={"help": "No training: only the recording pass over a fixed model (--weights), e.g. to record a trained checkpoint. Needs record=pass."})
    max_steps_per_epoch: Optional[int] = field(default=None, metadata={"help": 'Stop each epoch early (for smoke tests).'})
    eval_every: int = field(default=1, metadata={"help": "Evaluate the test split every N epochs and after the last; 0: only after the last (evaluation can cost as much as an epoch)."})
    progress: bool = field(default=True, metadata={"help": 'Show progress bars and per-epoch lines (rank 0).'})

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(msg)

        check(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.record_epochs is None or self.record_epochs >= 1,
              f"record_epochs must be >= 1, got {self.record_epochs}")
        check(self.image_size >= 1 and self.reid_height >= 1 and self.reid_width >= 1 and self.pk_k >= 1,
              "image sizes and pk_k must be >= 1")
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        for name in ("momentum", "weight_decay", "triplet_margin"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"{name} must be a finite number >= 0, got {v}")
        check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr is None:
            self.lr = 3.5e-4 if self.task == "reid" else 0.05
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.task == "reid" else 0.0
        check(math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.task == "reid":
            check(self.pk_k >= 2 and self.batch_size // self.pk_k >= 2,
                  f"reid batches need K >= 2 images of P >= 2 identities: batch_size {self.batch_size}, pk_k {self.pk_k}")
            check(self.data_root is not None, "reid needs --data-root (the dataset folder)")
        check(0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
              f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        check(self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check(self.record in RECORD_MODES, f"record must be one of {RECORD_MODES}, got {self.record!r}")
        check(self.store in STORE_KINDS, f"store must be one of {tuple(STORE_KINDS)}, got {self.store!r}")
        check(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        check(self.zero_stage in (0, 1, 2), f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        check(self.noise_kind in NOISE_KINDS, f"noise_kind must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        check(0 <= self.label_noise < 1, f"label_noise must be in [0, 1), got {self.label_noise}")
        check((self.label_noise > 0) == (self.noise_kind != "none"),
              f"label_noise={self.label_noise} needs noise_kind symmetric or class (got {self.noise_kind!r}), and vice versa")
        check(self.labels_file is None or self.label_noise == 0,
              "labels_file and label_noise cannot be combined (the file holds the labels to train with)")
        check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        check(self.store_dtype in ("float16", "float32"), f"store_dtype must be float16 or float32, got {self.store_dtype!r}")
        check(self.record_writes in RECORD_WRITES,
              f"record_writes must be one of {', '.join(RECORD_WRITES)}, got {self.record_writes!r}")
        check(self.record_writes != "shared" or self.store == "full",
              f"record_writes shared needs store full (a {self.store} store is written by rank 0)")
        check(self.deepspeed_config is None or self.backend == "deepspeed",
              "deepspeed_config is given but backend is not deepspeed")
        check(not self.frozen or self.record == "pass", f"frozen needs record='pass', got {self.record!r}")
        check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
              f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        check(not self.threshold_samples or (self.task == "classification" and self.record != "off"
                                             and self.manifest is None),
              "threshold_samples needs a classification task with recording and no manifest")

    def to_dict(self) -> dict:
        return asdict(self)
