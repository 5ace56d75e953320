"""DataFeed on its own, with a stream factory whose batches say where they come from: which segment each stream
opens, where a resume fast-forwards to, what its state holds, and the one-line errors it raises. The trainer's
structure that the feed, the precision and the session made possible is held here too."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_vit.data.split_keys import part_record
from ssl_vit.data.stream import StreamLayoutChanged
from ssl_vit.errors import DataError
from ssl_vit.train.agreement import HostAgreement
from ssl_vit.train.feed import DataFeed
from ssl_vit.train.trainer import Trainer

WORKERS = 2


class FakeStream:
    """Batches taken from `WORKERS` loader workers in turn; worker w's k-th batch has position k + 1 and its
    samples are numbered by (segment, worker, position). `skip` starts each worker after that many batches."""

    def __init__(self, opened: list, segment: int, skip: list[int] | None = None, first_worker: int = 0,
                 fail_after: int | None = None, keys: dict[int, list] | None = None):
        opened.append((segment, list(skip or []), first_worker))
        self.segment, self.skip, self.first, self.fail_after, self.keys = segment, skip or [0] * WORKERS, first_worker, fail_after, keys or {}
        self.closed = False

    def __iter__(self):
        positions, worker, n = list(self.skip), self.first, 0
        while True:
            if self.fail_after is not None and n == self.fail_after:
                raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed.")
            positions[worker] += 1
            yield {"image": torch.full((1,), 1000 * self.segment + 10 * worker + positions[worker]),
                   "label": torch.zeros(1), "worker": torch.tensor(worker), "workers": torch.tensor(WORKERS),
                   "position": torch.tensor(positions[worker]), "part_keys": self.keys.get(n, [])}
            worker, n = (worker + 1) % WORKERS, n + 1

    def close(self) -> None:
        self.closed = True


def factory(opened: list, **stream_options):
    return lambda segment, skip=None, first_worker=0: FakeStream(opened, segment, skip, first_worker, **stream_options)


def take(feed: DataFeed, n: int) -> list[int]:
    agreement = HostAgreement()
    return [int(feed.next(agreement)[0]["image"]) for _ in range(n)]


def test_a_feed_resumed_between_checkpoints_continues_with_the_next_unconsumed_batch():
    opened: list = []
    whole = DataFeed(factory(opened), batch_size=1)
    whole.open(0)
    reference = take(whole, 5)  # worker 0: 1, 2, 3; worker 1: 1, 2 → after 5 batches worker 1's turn
    assert reference == [1, 11, 2, 12, 3]

    first = DataFeed(factory(opened), batch_size=1)
    first.open(0)
    take(first, 3)
    state, rank_state = first.state_dict(), first.rank_state_dict()
    assert state == {"segment": 0} and rank_state == {"positions": [2, 1], "next_worker": 1}
    resumed = DataFeed(factory(opened), batch_size=1)
    resumed.load_state_dict(state, rank_state, step=3)
    assert resumed.open(3) is None
    assert opened[-1] == (0, [2, 1], 1)  # segment 0 fast-forwarded, worker 1 first
    assert take(resumed, 2) == reference[3:]


def test_a_checkpoint_step_starts_a_new_segment_and_its_state_holds_no_positions():
    opened: list = []
    feed = DataFeed(factory(opened), batch_size=1)
    feed.open(0)
    take(feed, 3)
    stream = feed._stream
    feed.new_segment(8)
    assert stream.closed and feed.rank_state_dict() == {"positions": [], "next_worker": 0}
    assert feed.state_dict() == {"segment": 8}
    assert take(feed, 1) == [8001] and opened[-1] == (8, [], 0)  # opened on demand, at the segment's start
    resumed = DataFeed(factory(opened), batch_size=1)
    resumed.load_state_dict({"segment": 8}, {"positions": [], "next_worker": 0}, step=8)
    resumed.open(8)
    assert opened[-1] == (8, [], 0)


def test_another_process_count_or_worker_count_restarts_the_stream_at_the_checkpoint_with_a_note():
    opened: list = []
    feed = DataFeed(factory(opened), batch_size=1)
    feed.load_state_dict({"segment": 0}, None, step=3)  # another number of processes: no positions to trust
    feed.open(3)
    assert opened[-1] == (3, [], 0)

    def layout_changed(segment, skip=None, first_worker=0):
        if skip:
            raise StreamLayoutChanged("the saved stream positions are for 3 loader worker(s) per process, this stream has 2")
        return FakeStream(opened, segment)

    feed = DataFeed(layout_changed, batch_size=1)
    feed.load_state_dict({"segment": 0}, {"positions": [1, 1, 1], "next_worker": 0}, step=3)
    note = feed.open(3)
    assert note == ("the saved stream positions are for 3 loader worker(s) per process, this stream has 2: the stream "
                    "restarts at step 3; the data order differs from here on")
    assert opened[-1] == (3, [], 0) and take(feed, 1) == [3001]
    assert feed.rank_state_dict() == {"positions": [1, 0], "next_worker": 1}  # the new stream's 2 workers


def test_a_dead_loader_worker_is_one_line_naming_the_checkpoint_to_continue_from(tmp_path: Path):
    feed = DataFeed(factory([], fail_after=2), batch_size=1)
    feed.open(0, lambda: tmp_path / "checkpoints" / "step_0000004")
    take(feed, 2)
    with pytest.raises(DataError, match=r"^a data loader worker died \(DataLoader worker \(pid 123\) is killed by signal: "
                                        r"Killed\.\); the usual cause is the out-of-memory killer: lower "
                                        r"data.num_workers or data.shuffle_buffer, then run the same command with "
                                        rf"--resume auto \(it continues from {tmp_path}/checkpoints/step_0000004\)$"):
        take(feed, 1)
    assert feed.worker_death(ValueError("other")) is None


def test_the_key_ledger_sees_every_part_once_and_travels_in_the_feed_state(tmp_path: Path):
    shard = str(tmp_path / "a.tar")
    keys = {0: [part_record(shard, 0, 1, [11, 12])], 2: [part_record(shard, 0, 1, [11, 12])]}  # an epoch read again
    feed = DataFeed(factory([], keys=keys), batch_size=1)
    feed.open(0)
    take(feed, 3)
    agreement = HostAgreement()
    assert feed.check_keys(agreement) is None
    state = feed.state_dict()
    assert np.array_equal(np.sort(state["split_keys"]["hashes"]), [11, 12])
    restored = DataFeed(factory([]), batch_size=1)
    restored.load_state_dict(state, None, step=3)
    assert restored.state_dict()["split_keys"]["hashes"].tolist() == state["split_keys"]["hashes"].tolist()


def test_the_trainer_stays_on_one_screen():
    """What the renovation bought, held: the loop's class is small, its constructor takes few parameters, and no
    step branches on the precision's kind."""
    source = Path(inspect.getsourcefile(Trainer)).read_text()
    assert len(source.splitlines()) <= 380
    assert len(inspect.signature(Trainer.__init__).parameters) - 1 <= 10
    assert "scaling is None" not in source and "LossScaling" not in source.replace("`precision.LossScaling`", "")
    fit = inspect.getsource(Trainer.fit)
    assert len(fit.splitlines()) <= 50
