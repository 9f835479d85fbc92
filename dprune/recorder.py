"""Record a logit trajectory from any training loop: ``(sample indices, logits)`` per batch.

Legend: B batch, C classes, N training samples, W ranks.

A few lines in your own loop (plain torch, DDP, DeepSpeed, torchreid, timm scripts)::

    rec = dprune.Recorder("runs/x/trajectory", labels=train_labels, n_classes=C)
    for epoch in range(rec.sync(epochs_done), epochs):   # resume where the store is
        rec.begin_epoch(epoch)
        for x, y, idx in loader:                        # your dataset returns the sample index
            logits = model(x)
            rec.record(idx, logits)                     # every rank, every batch, same order
            ...
        rec.complete_epoch(epoch)                       # flushed and fsynced when it returns
    rec.close()

Under ``torch.distributed`` every rank calls every method (they are collectives); rank 0
owns the store (its lock, ``meta.json``, completing epochs).  The rows reach it in one of two
ways (``writes``):

- ``"gather"``: every batch is gathered to rank 0, which writes the whole store; the other
  ranks keep nothing.  Works wherever the ranks are (no shared filesystem needed), but rank 0
  receives (W - 1) x B x C logits per step and writes every byte.
- ``"shared"``: for a store on a filesystem every rank sees (the usual cluster setup).  Nothing
  is gathered: each rank appends its own observations to files of its own beside the store,
  and at ``complete_epoch`` each rank folds its share of the samples from all ranks' files
  into the epoch (:mod:`dprune.store.parts`), in the order the gather would have, so the store
  is bit-identical to one written through the gather.  The epoch is complete only once every
  rank's part is fsynced and rank 0 has renamed the files and marked it in ``meta.json``.
- ``"auto"`` (default): ``"shared"`` when every rank can read a file that rank 0 writes into the
  store's directory (and the store is a full one), else ``"gather"``.  ``Recorder.writes``
  says which was chosen.

What happens per batch, on the training thread: in gather mode the batch is gathered to rank
0 in the model's dtype (no fp32 upcast; 16-bit floats travel as raw bits); the batch is
copied to host memory (pinned, ``non_blocking``, on a GPU) and queued.  A background writer
thread applies the queued writes to the store (or the rank's own file) in order.  The queue
is bounded (``queue_size`` batches): when the store falls behind, ``record`` waits
(back-pressure) instead of growing memory. An error in the writer thread is raised in the training
process by the next ``record`` or ``complete_epoch``. ``complete_epoch`` returns once every
write of the epoch has been applied and the epoch is durable (fsynced, marked complete); a
kill at any moment leaves a store whose complete epochs are intact, and the interrupted
epoch is recorded again.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Sequence

import torch

from .distributed import (World, all_gather_object, broadcast_object, gather_to_main, transport_device,
                          world_of_process_group)
from .recorder_writer import RecorderError, Writer
from .store import StoreError, open_or_create_store
from .store.parts import RankLog, merge_part

__all__ = ["WRITES", "Recorder", "RecorderError"]

WRITES = ("auto", "gather", "shared")



class Recorder:
    """Record every training sample's logits at every epoch into a trajectory store.

    Parameters
    ----------
    store_dir : path
        The store's directory (created, or resumed if it holds a store of this dataset).
    labels : int array [N]
        The given labels, indexed by the same sample indices ``record`` receives (rank 0;
        other ranks may pass None).
    n_classes : int
        C, the width of the logits.
    sample_ids : list of str, optional
        Ids (e.g. image paths) of the N samples, so manifests can name files.
    kind : "full" or "summary"
        Every epoch's logits (E x N x C on disk), or O(N x C) running sums that give the
        same scores.
    dtype : "float16" or "float32"
        Precision of the stored logits.
    epochs : int
        Epochs planned (informational).
    queue_size : int
        Batches the writer may fall behind before ``record`` waits.
    writes : "auto", "gather" or "shared"
        How the rows of a distributed run reach the store (see the module docstring).
    world : World, optional
        Default: the initialised ``torch.distributed`` group, or a single process.
    meta : dict, optional
        Further entries for a new store's ``meta.json``.
    fold : optional
        The summary store's folding rule (``dprune.scoring.online.SummaryFold()``); needed
        for ``kind="summary"`` only.
    """

    def __init__(self, store_dir, *, labels=None, n_classes: int | None = None, sample_ids: Sequence[str] | None = None,
                 kind: str = "full", dtype: str = "float16", epochs: int = 0, queue_size: int = 8,
                 world: World | None = None, labels_source: str = "", command: str | None = None,
                 meta: dict | None = None, writes: str = "auto", fold=None):
        self.world = world or world_of_process_group()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if writes not in WRITES:
            raise ValueError(f"writes must be one of {', '.join(WRITES)}, got {writes!r}")
        if writes == "shared" and kind != "full":
            raise ValueError(f"writes='shared' needs a full store (a {kind} store is written by rank 0)")
        if kind == "summary" and fold is None:
            raise ValueError("a summary store needs its folding rule: fold=dprune.scoring.online.SummaryFold()")
        self.store = None
        error = None
        if self.world.is_main:
            try:
                if labels is None or n_classes is None:
                    raise ValueError("rank 0 needs the labels and n_classes to create the store")
                self.store = open_or_create_store(kind, Path(store_dir), labels, n_classes, fold=fold,
                                                  sample_ids=sample_ids, dtype=dtype, epochs_planned=epochs,
                                                  labels_source=labels_source, world_size=self.world.world_size,
                                                  command=command, extra_meta=meta)
            except (ValueError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
        error = broadcast_object(self.world, error)  # every rank stops if rank 0 cannot open the store
        if error is not None:
            raise RecorderError(f"cannot open the trajectory store {store_dir}: {error}")
        self._queue_size = queue_size
        self._writer: Writer | None = None
        self._epoch: int | None = None
        self._closed = False
        self._device = transport_device(self.world)
        self._log: RankLog | None = None
        self._dir = Path(store_dir)
        self.writes = "gather"
        if self.world.distributed and writes != "gather" and kind == "full":
            self._choose_shared(Path(store_dir), writes == "shared")

    def _choose_shared(self, store_dir: Path, required: bool) -> None:
        """Use shared writes when every rank sees the store's directory: rank 0 writes a probe file
        there with a random token and every rank reads it back (the token also names the logs)."""
        token = None
        if self.world.is_main:
            token = uuid.uuid4().hex[:16]
            probe = store_dir / f".dprune.probe.{token}.tmp"
            try:
                probe.write_text(token)
            except OSError:
                token = None
        token = broadcast_object(self.world, token)
        seen = False
        if token is not None:
            try:
                seen = (store_dir / f".dprune.probe.{token}.tmp").read_text() == token
            except OSError:
                pass
        blind = [r for r, ok in enumerate(all_gather_object(self.world, seen)) if not ok]
        if self.world.is_main and token is not None:
            (store_dir / f".dprune.probe.{token}.tmp").unlink(missing_ok=True)
        if blind and required:
            self.close()
            raise RecorderError(f"writes='shared' needs the store {store_dir} on a filesystem every rank sees; "
                                f"rank(s) {', '.join(map(str, blind))} cannot read it (use writes='gather')")
        if not blind:
            self.writes, self._session = "shared", token
            self._layout = broadcast_object(self.world, None if self.store is None else
                                            (self.store.n_samples, self.store.n_classes, self.store.dtype.str))

    # ------------------------------------------------------------------ epochs
    @property
    def epochs_completed(self) -> int:
        """Complete epochs in the store (the same on every rank)."""
        return broadcast_object(self.world, self.store.epochs_completed if self.store is not None else None)

    def sync(self, epochs_done: int | None = None, *, record_epochs: int | None = None) -> int:
        """Align the store with the training state you restored; return the epoch to start from.

        ``epochs_done``: epochs your checkpoint has finished (None: no checkpoint, start at 0).
        ``record_epochs``: you record only the first K epochs (None: every epoch), so after
        epoch K the store rightly stays at K.  The store must hold ``min(epochs_done, K)``
        complete epochs.  If the job died after an epoch was recorded but before its
        checkpoint was saved, the store is ahead: it is rolled back (that epoch came from lost
        model state and is recorded again).  A store behind the checkpoint is an error.
        """
        done = int(epochs_done or 0)
        if record_epochs is not None and record_epochs < 1:
            raise ValueError(f"record_epochs must be >= 1 or None, got {record_epochs}")
        expected = done if record_epochs is None else min(done, int(record_epochs))
        error = None
        if self.store is not None:
            if self.store.epochs_completed < expected:
                error = (f"the checkpoint has {done} epochs done, of which the store {self.store.run_dir} should "
                         f"hold {expected}, but it holds only {self.store.epochs_completed}")
            elif self.store.epochs_completed > expected:
                self.store.rollback(expected)
        error = broadcast_object(self.world, error)
        if error:
            raise StoreError(error)
        return done

    def begin_epoch(self, epoch: int) -> None:
        """Open ``epoch`` for recording: the next epoch the store lacks.

        Calling it again for the epoch that is open (a training loop that retries an epoch)
        restarts the epoch: the batches already queued are written first, then everything
        recorded of the epoch is discarded, so no observation is counted twice.  (A writer that
        has failed raises its error here, as in ``record``.)
        """
        self._check_open("begin_epoch")
        if self._writer is not None:
            self._writer.flush()  # the epoch's files are made anew: nothing may still write them
        if self.store is not None:
            self.store.begin_epoch(epoch)
        if self.writes == "shared":
            if self._log is not None:
                self._log.remove()
            N, C, _ = self._layout
            self._log = RankLog(self._dir, epoch, self._session, self.world.rank, N, C)
        if self._writer is None and (self.store is not None or self.writes == "shared"):
            self._writer = Writer(self._write, self._queue_size)
        self._epoch = epoch

    def _write(self, epoch: int, idx, z) -> None:
        """Apply one queued batch (on the writer thread): to the store, or to this rank's log."""
        if self.writes == "shared":
            self._log.write(idx, z)
        else:
            self.store.write(epoch, idx, z)

    def record(self, indices_B: torch.Tensor, logits_BC: torch.Tensor) -> None:
        """Queue one batch: ``logits_BC[i]`` is an observation of sample ``indices_B[i]``.

        Collective: every rank calls it for every batch, in the same order.
        """
        self._check_open("record")
        if self._epoch is None:
            raise StoreError("record() before begin_epoch()")
        z = logits_BC.detach()
        idx = torch.as_tensor(indices_B).detach()
        if self.world.distributed and self.writes == "gather":
            gathered = gather_to_main(self.world, idx.to(self._device, torch.int64), z.to(self._device))
            if gathered is None:
                return
            idx, z = gathered
        self._writer.put(self._epoch, idx, z)

    def complete_epoch(self, epoch: int) -> None:
        """Wait for the epoch's writes, make it durable and mark it complete (collective)."""
        self._check_open("complete_epoch")
        if self.writes == "shared":
            self._merge_parts(epoch)
        error = None
        if self.store is not None:
            try:
                if self.writes == "gather":
                    self._writer.flush()
                self.store.complete_epoch(epoch)
            except (RecorderError, OSError, ValueError) as e:
                error = e
        err = broadcast_object(self.world, None if error is None else f"{type(error).__name__}: {error}")
        self._epoch = None
        if err is not None:
            if error is not None:
                raise error
            raise RecorderError(f"rank 0 failed to complete epoch {epoch}: {err}")
        if self._log is not None:
            self._log.remove()
            self._log = None

    def _merge_parts(self, epoch: int) -> None:
        """Shared writes: every rank closes its log, then folds its share of the samples into the
        epoch's files and fsyncs them; rank 0 learns how many values saturated."""
        N, C, dtype = self._layout

        def collective(step):
            error, value = None, 0
            try:
                value = step()
            except (RecorderError, OSError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
            results = all_gather_object(self.world, (error, value))
            failed = [f"rank {r}: {e}" for r, (e, _) in enumerate(results) if e is not None]
            if failed:
                self._epoch = None
                raise RecorderError(f"cannot complete epoch {epoch}: {'; '.join(failed)}")
            return sum(v for _, v in results)

        def close_log():
            if self._epoch != epoch:
                raise StoreError(f"epoch {epoch} is not open for writing (call begin_epoch({epoch}) first)")
            self._writer.flush()
            self._log.close()
            return 0

        collective(close_log)
        saturated = collective(lambda: merge_part(self._dir, epoch, self._session, self.world.world_size,
                                                  self.world.rank, N, C, dtype))
        if self.store is not None:
            self.store.add_saturated(saturated)

    def close(self) -> None:
        """Stop the writer (an epoch not completed is recorded again on resume) and release the store."""
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._log is not None:
            self._log.remove()
            self._log = None
        if self.store is not None:
            self.store.close()
        self._closed = True

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise RecorderError(f"{method}() on a closed Recorder: make a new Recorder to record again")
