"""The trainer's data: which stream is open, where its loader workers stand, and every key read so far.

    feed = DataFeed(make_stream, batch_size=cfg.data.batch_size, samples_per_epoch=shards.num_samples)
    feed.open(start, last_checkpoint)           # where the uninterrupted run was at step `start`
    batch, stopping = feed.next(agreement, stop)  # once every rank has its micro-batch
    feed.new_segment(step)                      # at a checkpoint step: the segment a resumed run opens
    feed.check_keys(agreement)                  # at a checkpoint, before it is written (collective)
    feed.state_dict(), feed.rank_state_dict()   # into the checkpoint; load_state_dict() back
    feed.close()

`make_stream(segment[, skip, first_worker])` is an endless iterable of uint8 batches that is a pure function of
its segment (`wiring.train_stream_factory`). Exact resumption rests on it: at every checkpoint step the feed
closes its stream and opens the segment that starts at that step, so a run resumed there draws the same
batches. A checkpoint taken on a signal between checkpoint steps is exact too: batches say which loader worker
made them and how far into its stream they end (`worker`, `workers`, `position`); the feed keeps, per worker, the
position of the last batch consumed, and a resume fast-forwards every worker's stream to it (reading bytes and
drawing the skipped samples' random numbers, without decoding them). Batches the loader had prefetched but the
trainer never consumed are simply drawn again. A resume with another number of loader workers cannot
fast-forward (`StreamLayoutChanged`): its stream restarts at the checkpoint's step, with a note.

Every key once in the split. A batch may carry `part_keys`: the key hashes of the shard parts its loader worker
has read to their end (`data/split_keys.py`). At every checkpoint the ranks send theirs to the main process,
whose ledger holds one entry per sample of the split; a key at two samples (in two readers' shards, which
neither reader alone can see) stops every rank with one line naming the key and both shards. The ledger is saved
in the checkpoint, so a resumed run goes on checking against every sample read before.

A stream that fails on one rank only (a corrupt shard that only it reads) stops every rank with that rank's
error, shared before the micro-batch's collectives (`next`), instead of leaving the others waiting in DDP's
all-reduce for ever; a loader worker killed from outside is that error as one line that says how to go on.

A stop request is honoured even while a read is blocked: the wait for a batch looks at it (`batch_wait.py`),
and a batch that has not come `GRACE_S` after it is given up. The ranks agree on that too (a rank without its
batch makes every rank raise `StoppedWaiting` at the same micro-batch); the stuck loader workers are killed,
and a remote read in this process is interrupted (`remote.interrupt_reads`).
A key record says how many samples each shard part holds, so once every part of the split has been read, the
split's real size is checked against the count the data spec gives (`promises.SplitCount`).
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
from ..data.stream import StreamLayoutChanged
from ..errors import DataError
from .agreement import HostAgreement, raise_on_every_rank, together
from .batch_wait import GRACE_S, BatchWait
from .signals import StopRequest

StreamFactory = Callable[..., Iterable[dict[str, torch.Tensor]]]


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
        self.grace_s = GRACE_S
        self._segment = 0  # the step the current stream's segment started at
        self._positions: list[int] = []  # per loader worker: the stream position of its last consumed batch
        self._next_worker = 0  # the loader worker whose batch comes next
        self._last_checkpoint: Callable[[], Path | None] = lambda: None
        self._ledger = SplitKeyLedger()  # main process: every sample's key hash read so far
        self._parts_read = PartsRead()  # this rank's `part_keys` records not yet in the ledger
        self._count: SplitCount | None = None  # main process: the split's size as read, against the spec's count

    # ------------------------------------------------------------------------------------------- reading
    def open(self, step: int, last_checkpoint: Callable[[], Path | None] = lambda: None) -> str | None:
        """Open the stream the uninterrupted run had at step `step`: the restored segment fast-forwarded to the
        restored positions, or the segment starting at `step`. Returns a note when the positions do not fit.
        `last_checkpoint()` names the checkpoint a run stopped by a dead loader worker continues from."""
        self._last_checkpoint = last_checkpoint
        if not self._positions:
            self._segment = step
        try:
            self._open()
        except StreamLayoutChanged as err:
            self._segment, self._positions, self._next_worker = step, [], 0
            self._open()
            return f"{err}: the stream restarts at step {step}; the data order differs from here on"
        return None

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

    def new_segment(self, step: int) -> None:
        """A checkpoint step: the stream closes, and the next batch comes from the segment that starts at `step`,
        as it would in a run resumed from this step's checkpoint."""
        self.close()
        self._segment, self._positions, self._next_worker = step, [], 0

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
            f"killer: lower data.num_workers or data.shuffle_buffer, then run the same command with --resume auto "
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
        """What every rank shares (written by the main process): the segment, and the main process's key ledger."""
        state: dict[str, Any] = {"segment": self._segment}
        if len(self._ledger):  # main process only (the others' ledgers stay empty)
            state["split_keys"] = self._ledger.state_dict()
        return state

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own: where each of its loader workers stands in the segment (none at a segment's start)."""
        return {"positions": list(self._positions), "next_worker": self._next_worker if self._positions else 0}

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any] | None, step: int) -> None:
        """Continue where a checkpoint of step `step` left the data. Without `rank_state` (another number of
        processes) the stream restarts at `step`."""
        if "split_keys" in state and _main_process():
            self._ledger.load_state_dict(state["split_keys"])
        segment, positions = int(state.get("segment", step)), list((rank_state or {}).get("positions", []))
        if segment != step and positions:  # taken between the segment's checkpoints: fast-forward to it
            self._segment, self._positions = segment, positions
            self._next_worker = int(rank_state.get("next_worker", 0))
        else:
            self._segment, self._positions, self._next_worker = step, [], 0

    # ----------------------------------------------------------------------------------------- pieces
    def _open(self) -> None:
        self.close()
        allow_reads()  # a stream given up before (an earlier run in this process) interrupted them
        if self._positions:
            self._stream = self.make_stream(self._segment, list(self._positions), self._next_worker)
        else:
            self._stream = self.make_stream(self._segment)
        self._batches = iter(self._stream)
        self._wait = BatchWait(self._batches, self.grace_s)
        shards = getattr(self._stream, "shards", None)  # a `data.stream.Stream` knows its ShardSet
        if self._count is None and shards is not None:
            self._count = SplitCount(shards.num_samples, len(shards.urls))

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
        """Note how far the batch's loader worker has got (streams that say so: `worker`, `workers`, `position`),
        and the key records it carries (`part_keys`)."""
        self._parts_read.note(batch)
        if "position" not in batch:
            return
        worker, workers = int(batch["worker"]), int(batch["workers"])
        if not self._positions:
            self._positions = [0] * workers
        self._positions[worker] = int(batch["position"])
        self._next_worker = (worker + 1) % workers


def _main_process() -> bool:
    """Whether this is rank 0 (or the only process): the one that keeps the key ledger."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
