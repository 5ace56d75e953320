"""DataFeed on its own, with a stream factory whose batches say which micro-batch they are: which step each stream
opens at, the check that each batch is the one due, what its state holds, the samples record it feeds, and the
one-line errors it raises. The trainer's structure that the feed, the precision and the session made possible is
held here too."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_vit.data.split_keys import part_record
from ssl_vit.errors import DataError
from ssl_vit.train.agreement import HostAgreement
from ssl_vit.train.feed import ORDER, DataFeed, batch_tensors
from ssl_vit.train.trainer import Trainer


class FakeStream:
    """Micro-batches numbered from `start · accumulation` (the global order's numbering); the image is the number.
    `swap` delivers two micro-batches out of turn (a loader that reordered them)."""

    def __init__(self, opened: list, start: int, accumulation: int = 1, fail_after: int | None = None,
                 keys: dict[int, list] | None = None, swap: int | None = None):
        opened.append(start)
        self.start, self.accumulation, self.fail_after, self.keys, self.swap = start, accumulation, fail_after, keys or {}, swap
        self.closed = False

    def __iter__(self):
        n = 0
        while True:
            if self.fail_after is not None and n == self.fail_after:
                raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed.")
            micro = self.start * self.accumulation + n
            if self.swap is not None and n in (self.swap, self.swap + 1):
                micro += 1 if n == self.swap else -1
            yield {"image": torch.full((1,), micro), "label": torch.zeros(1), "micro": torch.tensor(micro),
                   "positions": torch.tensor([micro]), "hashes": torch.tensor([100 + micro]),
                   "read": torch.tensor([True]), "part_keys": self.keys.get(n, [])}
            n += 1

    def close(self) -> None:
        self.closed = True


def factory(opened: list, **stream_options):
    return lambda start: FakeStream(opened, start, **stream_options)


def take(feed: DataFeed, n: int) -> list[int]:
    agreement = HostAgreement()
    return [int(feed.next(agreement)[0]["image"]) for _ in range(n)]


def test_a_resumed_feed_opens_at_its_step_and_needs_no_positions():
    opened: list = []
    whole = DataFeed(factory(opened, accumulation=2), batch_size=1)
    whole.open(0, accumulation=2)
    reference = take(whole, 10)
    assert reference == list(range(10))
    first = DataFeed(factory(opened, accumulation=2), batch_size=1)
    first.open(0, accumulation=2)
    take(first, 6)  # three steps of two micro-batches
    state, rank_state = first.state_dict(), first.rank_state_dict()
    assert state == {"order": ORDER} and rank_state == {}
    resumed = DataFeed(factory(opened, accumulation=2), batch_size=1)
    resumed.load_state_dict(state, rank_state, step=3)
    assert resumed.open(3, accumulation=2) is None
    assert opened[-1] == 3 and take(resumed, 4) == reference[6:]


def test_a_checkpoint_from_before_the_global_order_resumes_in_it_with_a_note():
    opened: list = []
    feed = DataFeed(factory(opened), batch_size=1)
    feed.load_state_dict({"segment": 0}, {"positions": [1, 1, 1], "next_worker": 0}, step=3)
    note = feed.open(3)
    assert note.startswith("this checkpoint was written before ssl_vit read data in its global order: from step 4 on")
    assert opened[-1] == 3 and take(feed, 1) == [3]


def test_a_batch_out_of_turn_stops_instead_of_training_on_another_order():
    feed = DataFeed(factory([], swap=2), batch_size=1)
    feed.open(0)
    assert take(feed, 2) == [0, 1]
    with pytest.raises(RuntimeError, match=r"^the data loader delivered micro-batch 3 where 2 was due"):
        take(feed, 1)


def test_the_steps_done_go_to_the_recorder_with_their_micro_batches():
    class Recorder:
        def __init__(self):
            self.rows, self.epoch_size = [], None

        def begin(self, epoch_size):
            self.epoch_size = epoch_size

        def write(self, step, batches):
            self.rows.append((step, [int(b["positions"][0]) for b in batches]))

    recorder = Recorder()
    feed = DataFeed(factory([], accumulation=2), batch_size=1, samples_per_epoch=40)
    feed.open(5, accumulation=2, recorder=recorder)
    take(feed, 2)
    feed.step_done(6)
    take(feed, 1)  # a step given up half-way (a stop while a loader was stuck) is never recorded
    assert recorder.rows == [(6, [10, 11])] and recorder.epoch_size == 40


def test_an_empty_micro_batch_becomes_a_zero_weight_stand_in():
    empty = {"image": torch.zeros((0, 3, 8, 8), dtype=torch.uint8), "label": torch.zeros(0, dtype=torch.int64)}
    images, labels, weight = batch_tensors(empty, torch.device("cpu"))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 0] and weight == 0.0
    full = {"image": torch.ones((3, 3, 8, 8), dtype=torch.uint8), "label": torch.arange(3)}
    images, labels, weight = batch_tensors(full, torch.device("cpu"))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 2] and weight == 1.0


def test_a_dead_loader_worker_is_one_line_naming_the_checkpoint_to_continue_from(tmp_path: Path):
    feed = DataFeed(factory([], fail_after=2), batch_size=1)
    feed.open(0, lambda: tmp_path / "checkpoints" / "step_0000004")
    take(feed, 2)
    with pytest.raises(DataError, match=r"^a data loader worker died \(DataLoader worker \(pid 123\) is killed by signal: "
                                        r"Killed\.\); the usual cause is the out-of-memory killer: lower "
                                        r"data.num_workers, then run the same command with "
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


class _Slow(torch.utils.data.IterableDataset):
    """A loader worker that takes 3 s for its first batch (a stuck read, shortened)."""

    def __iter__(self):
        import time

        time.sleep(3)
        while True:
            yield {"image": torch.zeros(1), "label": torch.zeros(1)}


@pytest.mark.timeout(60)
def test_a_loader_that_gives_no_batch_for_minutes_names_the_rank_and_its_workers_with_their_stacks(capfd, monkeypatch):
    from ssl_vit.data.spec import ShardSet
    from ssl_vit.data.stream import Stream
    from ssl_vit.train import stall_report

    monkeypatch.setattr(stall_report.shutil, "which", lambda name: None)  # CI has no py-spy: the hint is the line
    feed = DataFeed(lambda start: Stream(_Slow(), ShardSet(("x.tar",)), num_workers=1, pin_memory=False),
                    batch_size=1)
    feed.stall_s = 0.5
    feed.open(0)
    try:
        batch, _ = feed.next(HostAgreement())  # still arrives: the report does not end the wait
        pids = [w.pid for w in feed._stream._iterator._workers]
    finally:
        feed.close()
    err = capfd.readouterr().err
    assert batch["image"].shape == (1,)
    assert err.count("warning: rank 0: no batch from the data loader for") == 1  # once per batch
    assert f"(loader worker pids: {pids[0]})" in err and "batch_wait.py" in err  # this process's threads
    assert f"--- loader worker {pids[0]}: install py-spy (pip install py-spy) to see its stack" in err
