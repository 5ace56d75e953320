"""The trainer's data: which stream is open, that its batches are the ones due, and every key read so far.

    feed = DataFeed(make_stream, batch_size=cfg.data.batch_size, samples_per_epoch=shards.num_samples)
    feed.open(start, last_checkpoint, accumulation=2, recorder=None)  # the batches after step `start`
    batch, stopping = feed.next(agreement, stop)  # once every rank has its micro-batch
    feed.step_done(step)                        # the step's samples into the record (`train.record_samples`)
    feed.check_keys(agreement)                  # at a checkpoint, before it is written (collective)
    feed.state_dict(), feed.rank_state_dict()   # into the checkpoint; load_state_dict() back
    feed.close()

`make_stream(start)` is an endless iterable of uint8 batches: the micro-batches of every step after `start`
(`wiring.train_stream_factory`). Which samples a step trains on is a function of the step alone
(`data/global_order.py`), so a run resumed from a checkpoint of any step, on any number of processes, with any
micro-batch or loader workers, opens the stream at that step and trains on exactly the samples the
uninterrupted run would have: no fast-forward and no per-worker positions to save. Batches say which
micro-batch they are (`micro`), and the feed checks that each is the one due: a loader that delivered batches
out of turn would otherwise train on a silently different order.

Every key once in the split. A batch may carry `part_keys`: the key hashes of the shards its loader worker
indexed (`split_keys.part_record`). At every checkpoint the ranks send theirs to the main process, whose ledger
holds one entry per sample of the split; a key at two samples (in two shards) stops every rank with one line
naming the key and both shards. The ledger is saved in the checkpoint, so a resumed run goes on checking against
every sample seen before. A key record says how many samples each shard holds, so once every shard has been
indexed, the split's real size is checked against the count the data spec gives (`promises.SplitCount`).

A stream that fails on one rank only (a corrupt shard that only it reads) stops every rank with that rank's
error, shared before the micro-batch's collectives (`next`), instead of leaving the others waiting in DDP's
all-reduce for ever; a loader worker killed from outside is that error as one line that says how to go on.

A stop request is honoured even while a read is blocked: the wait for a batch looks at it (`batch_wait.py`),
and a batch that has not come `GRACE_S` after it is given up. The ranks agree on that too (a rank without its
batch makes every rank raise `StoppedWaiting` at the same micro-batch); the stuck loader workers are killed,
and a remote read in this process is interrupted (`remote.interrupt_reads`). A wait of `STALL_S` with no stop
requested is reported with the rank, its loader workers and their stacks (`stall_report.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.promises import SplitCount
from ..data.remote import allow_reads, interrupt_reads
from ..data.split_keys import PartsRead, SplitKeyLedger
from ..errors import DataError
from .sample_records import SampleRecorder
from .agreement import HostAgreement, raise_on_every_rank, together
from .batch_wait import GRACE_S, STALL_S, BatchWait
from .signals import StopRequest
from .stall_report import report_stall

StreamFactory = Callable[[int], Iterable[dict[str, torch.Tensor]]]
ORDER = "global-1"  # the data order checkpoints are written in (`data/global_order.py`)


class StoppedWaiting(Exception):
    """Every rank: a stop was requested and some rank's batch did not come within the grace (its read is blocked).
    The step in progress is given up; `began` (set by the trainer) says whether it had used micro-batches."""

    def __init__(self, grace_s: float) -> None:
        super().__init__(f"a loader had no batch within {grace_s:g} s of the stop request (a read is blocked: a slow "
                         "or hung file system or link?)")
        self.began = False


class DataFeed:
    """The batches of one training run on this rank (see the module's docstring).

    `batch_size` is the per-device micro-batch the stream yields; `samples_per_epoch` (None: unknown, a URL list)
    turns steps into epochs in the metrics.
    """

    def __init__(self, make_stream: StreamFactory, *, batch_size: int, samples_per_epoch: int | None = None):
        self.make_stream = make_stream
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self._stream: Iterable | None = None
        self._batches: Iterator | None = None
        self._wait: BatchWait | None = None  # `next(self._batches)` on a helper thread, which a stop can give up
        self.grace_s, self.stall_s = GRACE_S, STALL_S
        self._start = 0  # the step the open stream started after
        self._accumulation = 1
        self._due: int | None = None  # the micro-batch number the next batch must carry (streams that number them)
        self._note: str | None = None  # about the checkpoint that was loaded, for `open` to return
        self._recorder: SampleRecorder | None = None
        self._step_samples: list[dict] = []  # this step's consumed batches' positions, hashes and `read` flags
        self._last_checkpoint: Callable[[], Path | None] = lambda: None
        self._ledger = SplitKeyLedger()  # main process: every sample's key hash read so far
        self._parts_read = PartsRead()  # this rank's `part_keys` records not yet in the ledger
        self._count: SplitCount | None = None  # main process: the split's size as read, against the spec's count

    # ------------------------------------------------------------------------------------------- reading
    def open(self, step: int, last_checkpoint: Callable[[], Path | None] = lambda: None, *, accumulation: int = 1,
             recorder: SampleRecorder | None = None) -> str | None:
        """Open the stream of the micro-batches after step `step` (`accumulation` per step). Returns a note about
        the checkpoint loaded, if any. `last_checkpoint()` names the checkpoint a run stopped by a dead loader
        worker continues from; `recorder` records the samples of every step done (`step_done`)."""
        self._last_checkpoint, self._recorder = last_checkpoint, recorder
        self._start, self._accumulation = step, accumulation
        self._open()
        if recorder is not None:
            recorder.begin(getattr(self._stream, "samples_per_epoch", self.samples_per_epoch))
        note, self._note = self._note, None
        return note

    def next(self, agreement: HostAgreement, stop: StopRequest | None = None) -> tuple[dict, bool]:
        """The next micro-batch once every rank has one, and whether any rank has been asked to stop.

        Any failure of this rank's stream is shared before the micro-batch's collectives, and every rank raises it.
        A stop request that finds some rank's batch missing `grace_s` later raises `StoppedWaiting` on every rank.
        """
        if self._batches is None:
            self._open()
        requested = lambda: stop is not None and stop.received is not None  # noqa: E731
        try:
            arrived, batch = self._wait.next(requested)
            failure = None
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            arrived, batch, failure = True, None, self.worker_death(err) or err
        failed, stopping, missing = agreement.any_each(failure is not None, requested(), not arrived)
        if failed:
            raise_on_every_rank(failure, agreement.gather, "the data stream")
        if missing:
            interrupt_reads()  # a remote read of this process (num_workers=0) ends too, within a second
            self.abandon()
            raise StoppedWaiting(self.grace_s)
        self._consumed(batch)
        return batch, stopping

    def step_done(self, step: int) -> None:
        """Step `step` is trained: the samples of its micro-batches go into the record (when recording)."""
        done, self._step_samples = self._step_samples, []
        if self._recorder is not None and done:
            self._recorder.write(step, done)

    def close(self) -> None:
        """Shut the stream's loader workers down (before the process group is destroyed)."""
        self._end("close")

    def abandon(self) -> None:
        """Like `close`, but a loader worker is stuck: kill the workers at once (streams that can: `Stream.abandon`)."""
        self._end("abandon" if callable(getattr(self._stream, "abandon", None)) else "close")

    def worker_death(self, err: BaseException) -> DataError | None:
        """A loader worker killed from outside (most often by the out-of-memory killer) as one line that says
        how to go on; None for any other failure."""
        died = isinstance(err, RuntimeError) and "DataLoader worker" in str(err)
        if not died and isinstance(err, (ConnectionError, EOFError)):  # a batch lost in transfer: was it a death?
            died = bool(getattr(self._stream, "dead_workers", lambda wait: [])(wait=2.0))
        if not died:
            return None
        last = self._last_checkpoint()
        since = f"from {last}" if last is not None else "from step 0: no checkpoint yet"
        return DataError(
            f"a data loader worker died ({' '.join(str(err).split())[:160]}); the usual cause is the out-of-memory "
            f"killer: lower data.num_workers, then run the same command with --resume auto "
            f"(it continues {since})")

    # ---------------------------------------------------------------------------------------- the keys
    def check_keys(self, agreement: HostAgreement) -> str | None:
        """Every rank's key records since the last check into the main process's ledger; collective. A key at two
        samples of the split raises its `DataError` on every rank; returns the ledger's note (main process)."""
        gathered = agreement.gather_to_main(self._parts_read.take())
        return together(agreement, lambda: self._check([r for records in gathered for r in records]),
                        "checking that every sample key occurs once", main_only=True)

    # --------------------------------------------------------------------------------------- its state
    def state_dict(self) -> dict[str, Any]:
        """What every rank shares (written by the main process): the order's version, and the key ledger."""
        state: dict[str, Any] = {"order": ORDER}
        if len(self._ledger):  # main process only (the others' ledgers stay empty)
            state["split_keys"] = self._ledger.state_dict()
        return state

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own: nothing since the global order (a step says where the data stand); kept for the format."""
        return {}

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any] | None, step: int) -> None:
        """Continue where a checkpoint of step `step` left the data: the stream opens at that step. A checkpoint
        from before the global order (no `order`) continues in it from `step`, with a note."""
        del rank_state  # positions of per-worker streams (before the global order): nothing to do with them now
        if "split_keys" in state and _main_process():
            self._ledger.load_state_dict(state["split_keys"])
        if state.get("order") != ORDER:
            self._note = (f"this checkpoint was written before ssl_vit read data in its global order: from step "
                          f"{step + 1} on the data follow that order, so within the current epoch some samples may "
                          "be seen twice and others not at all (from the next epoch on, each exactly once)")

    # ----------------------------------------------------------------------------------------- pieces
    def _open(self) -> None:
        self.close()
        allow_reads()  # a stream given up before (an earlier run in this process) interrupted them
        self._stream = self.make_stream(self._start)
        self._batches = iter(self._stream)
        self._wait = BatchWait(self._batches, self.grace_s, self.stall_s, self._report_stall)
        self._due, self._step_samples = self._start * self._accumulation, []
        shards = getattr(self._stream, "shards", None)  # a `data.stream.Stream` knows its ShardSet
        if self._count is None and shards is not None:
            self._count = SplitCount(shards.num_samples, len(shards.urls))

    def _report_stall(self, waited: float) -> None:
        """No batch for `stall_s` and no stop requested: name this rank and its loader workers, with their stacks."""
        workers = getattr(getattr(self._stream, "_iterator", None), "_workers", None) or []
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        report_stall(rank, waited, [w.pid for w in workers if w.pid is not None])

    def _end(self, how: str) -> None:
        if self._wait is not None:
            self._wait.close()
        end = getattr(self._stream, how, None)
        if callable(end):
            end()
        self._stream = self._batches = self._wait = None

    def _check(self, records: list[dict]) -> str | None:
        """Main process: the records' keys into the ledger, their part sizes into the split's count."""
        note = self._ledger.add(records)
        if self._count is not None:
            self._count.add(records)
        return note

    def _consumed(self, batch: dict) -> None:
        """Check that the batch is the micro-batch due (streams that number them: `micro`); keep its samples for
        the record and its key records (`part_keys`) for the ledger."""
        self._parts_read.note(batch)
        if "micro" in batch:
            micro = int(batch["micro"])
            if micro != self._due:
                raise RuntimeError(f"the data loader delivered micro-batch {micro} where {self._due} was due: the "
                                   "training order would silently differ; please report this")
            if self._recorder is not None:
                self._step_samples.append({k: batch[k] for k in ("positions", "hashes", "read")})
        self._due = None if self._due is None else self._due + 1


def batch_tensors(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images, labels, weight) of a micro-batch on `device`. A micro-batch whose every sample was unreadable is
    empty; every rank must still take part in the step's collectives, so it becomes two black images (two: a
    batch norm needs more than one) with weight 0 (the caller multiplies its loss by the weight: no gradient, and it is left out of the metrics)."""
    images, labels = batch["image"], batch["label"]
    if images.shape[0] > 0:
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True), 1.0
    stand_in = torch.zeros((2, *images.shape[1:]), dtype=images.dtype, device=device)  # (2, 3, S, S)
    return stand_in, torch.zeros(2, dtype=labels.dtype, device=device), 0.0


def _main_process() -> bool:
    """Whether this is rank 0 (or the only process): the one that keeps the key ledger."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
