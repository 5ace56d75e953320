"""Exactly once on any cluster shape (issue 26): the samples of every global step are a function of the step
alone, so processes, micro-batch, accumulation and loader workers may all change between a run and its resume
while each epoch still sees every sample once. Checked on the streams of every shape (1–3 ranks × 0–2 workers,
uneven shards), and end to end through the trainer's samples record and `ssl-vit samples`."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from run_records import records
from shardgen import unique_samples, write_shards
from trainer_fixtures import sigterm_at_step

from ssl_vit.data import TrainStreamOptions, build_train_stream
from ssl_vit.data.promises import key_hash
from ssl_vit.data.split import Holdout
from ssl_vit.train.sample_records import epoch_counts, first_difference, read_steps

GLOBAL_BATCH, STEPS, SAMPLES = 12, 8, 40  # 96 positions: two epochs of 40 and part of a third


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """40 samples in shards of 13, 13, 13 and 1: no rank or worker count divides them."""
    out = tmp_path_factory.mktemp("uneven")
    write_shards(out, unique_samples(SAMPLES), shard_size=13)
    return out


def global_batches(data: Path, world: int, batch: int, workers: int, start: int = 0, steps: int = STEPS,
                   holdout: Holdout | None = None) -> dict[int, list[tuple[int, int]]]:
    """{step: [(position, key hash), …]} over every rank of one shape."""
    accumulation = GLOBAL_BATCH // (world * batch)
    out: dict[int, list] = {}
    for rank in range(world):
        options = TrainStreamOptions(batch_size=batch, image_size=8, num_workers=workers, shuffle_buffer=15)
        stream = build_train_stream(str(data), options, seed=7, rank=rank, world_size=world, start_step=start,
                                    accumulation=accumulation, holdout=holdout)
        try:
            for b in itertools.islice(iter(stream), (steps - start) * accumulation):
                assert b["read"].all()
                step = int(b["micro"]) // accumulation
                out.setdefault(step, []).extend(zip(b["positions"].tolist(), b["hashes"].tolist()))
        finally:
            stream.close()
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world,batch,workers", [(1, 12, 0), (2, 3, 2), (3, 2, 1), (3, 4, 2), (2, 6, 0)])
def test_every_shape_trains_each_step_on_the_same_samples_and_each_epoch_once(uneven: Path, world, batch, workers):
    reference = global_batches(uneven, 1, 12, 0)
    batches = reference if (world, batch, workers) == (1, 12, 0) else global_batches(uneven, world, batch, workers)
    assert {s: sorted(v) for s, v in batches.items()} == {s: sorted(v) for s, v in reference.items()}
    by_position = dict(p for step in batches.values() for p in step)
    assert sorted(by_position) == list(range(STEPS * GLOBAL_BATCH))  # the ranks' slices tile every global batch
    keys = {key_hash(f"s{i:05d}") for i in range(SAMPLES)}
    for epoch in range(2):
        seen = [by_position[p] for p in range(epoch * SAMPLES, (epoch + 1) * SAMPLES)]
        assert sorted(seen) == sorted(keys)  # each sample exactly once
    first = [by_position[p] for p in range(SAMPLES)]
    assert first != [by_position[p] for p in range(SAMPLES, 2 * SAMPLES)]  # each epoch its own order


@pytest.mark.timeout(120)
def test_a_stream_started_at_a_step_on_another_shape_continues_the_same_batches(uneven: Path):
    whole = global_batches(uneven, 2, 3, 2)
    resumed = global_batches(uneven, 3, 2, 1, start=5)  # a resume at step 5 on three processes
    assert {s: sorted(resumed[s]) for s in resumed} == {s: sorted(whole[s]) for s in range(5, STEPS)}


@pytest.mark.timeout(120)
def test_a_holdout_is_left_out_of_every_epoch_on_every_shape(uneven: Path):
    keep = Holdout(0.25, held=False)
    kept = {key_hash(f"s{i:05d}") for i in range(SAMPLES) if keep.keeps(f"s{i:05d}")}
    for shape in ((1, 12, 0), (3, 2, 2)):
        batches = global_batches(uneven, *shape, steps=3, holdout=keep)
        by_position = dict(p for step in batches.values() for p in step)
        assert sorted(by_position[p] for p in range(len(kept))) == sorted(kept)


# ------------------------------------------------------------------------------------------- end to end
RUN = {"train.total_steps": 12, "train.checkpoint_every": 6, "train.log_every": 1, "optim.warmup_steps": 2,
       "train.global_batch": 8, "data.batch_size": 8, "data.num_workers": 0, "data.shuffle_buffer": 20,
       "train.record_samples": True}


@pytest.mark.timeout(300)
def test_a_run_stopped_between_checkpoints_and_resumed_on_another_shape_trains_each_epoch_once(
        pretrain_shards, tmp_path: Path, pretrain, run_cli, monkeypatch, capsys):
    """Stopped by SIGTERM at step 4 (between checkpoints at 0 and 6), resumed with 4 per micro-batch × 2
    accumulation steps and 2 loader workers: `ssl-vit samples` finds the two finished epochs of 48 each with every
    sample once, and the global batches equal the uninterrupted run's step by step."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert pretrain(pretrain_shards, whole, **RUN) == 0
    sigterm_at_step(monkeypatch, 4)
    assert pretrain(pretrain_shards, stopped, **RUN) == 0
    monkeypatch.undo()
    assert [r["step"] for r in records(stopped)] == [1, 2, 3, 4]
    assert pretrain(pretrain_shards, stopped, "--resume", "auto",
                    **{**RUN, "data.batch_size": 4, "data.num_workers": 2}) == 0
    steps = read_steps(stopped)
    assert sorted(steps.rows) == list(range(1, 13)) and not steps.incomplete
    assert [(c.epoch, c.samples, c.duplicates, c.missing, c.finished) for c in epoch_counts(steps)] == \
        [(0, 48, 0, 0, True), (1, 48, 0, 0, True)]
    assert first_difference(steps, read_steps(whole)) is None
    capsys.readouterr()
    assert run_cli("samples", str(stopped)) == 0
    assert capsys.readouterr().out.splitlines() == ["epoch 0: 48 samples, 0 duplicates, 0 missing",
                                                    "epoch 1: 48 samples, 0 duplicates, 0 missing"]
    assert run_cli("samples", str(stopped), "--against", str(whole)) == 0
    assert "12 steps in both runs: identical global batches" in capsys.readouterr().out


def test_the_samples_check_reports_a_duplicate_and_a_miss(tmp_path: Path, run_cli, capsys):
    """A record whose epoch holds one key twice (and so misses another) fails, naming the counts."""
    from ssl_vit.train.sample_records import SampleRecorder
    import torch

    recorder = SampleRecorder(tmp_path, attempt=1, rank=0, world_size=1, global_batch=2, start=0)
    recorder.begin(epoch_size=4)
    for step, keys in ((1, [10, 11]), (2, [12, 10])):
        positions = torch.arange((step - 1) * 2, step * 2)
        recorder.write(step, [{"positions": positions, "hashes": torch.tensor(keys), "read": torch.ones(2, dtype=bool)}])
    assert run_cli("samples", str(tmp_path)) == 1
    assert capsys.readouterr().out.strip() == "epoch 0: 3 samples, 1 duplicates, 1 missing"
    assert run_cli("samples", str(tmp_path / "nothing")) == 2
    assert np.array_equal(read_steps(tmp_path).rows[2][:, 2], [12, 10])
