"""Every key once across the whole split, in training: readers hand on the key hashes of the shard parts they
read (`part_keys`), and the trainer's ledger (data/split_keys.py) catches a key that two readers read from two
shards — which neither reader alone can see. The crafted shards are built here."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from shardgen import Sample, unique_samples, write_shards
from trainer_fixtures import write_pretrain_shards

import ssl_vit.data.split_keys as split_keys
from ssl_vit.data import TrainStreamOptions, build_train_stream
from ssl_vit.data.promises import key_hash
from ssl_vit.data.split_keys import SplitKeyLedger, part_record
from ssl_vit.errors import DataError
from ssl_vit.train import checkpoint as ckpt
from ssl_vit.train import wiring


def _records(out: Path, *, workers: int = 2, batches: int = 12, **options: object) -> list[dict]:
    """The `part_keys` records of the train stream's first batches (each worker reads one shard of two)."""
    options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=workers, shuffle_buffer=0, **options)
    stream = build_train_stream(str(out), options, seed=0)
    try:
        return [record for batch in itertools.islice(iter(stream), batches) for record in batch["part_keys"]]
    finally:
        stream.close()


def _record(path: Path, keys: list[str], offset: int = 0, stride: int = 1) -> dict:
    return part_record(str(path), offset, stride, [key_hash(k) for k in keys])


def test_each_reader_hands_on_the_key_hashes_of_every_part_it_read(tmp_path: Path) -> None:
    samples = unique_samples(16)
    paths = write_shards(tmp_path, samples, shard_size=8)
    records = _records(tmp_path)
    by_shard = {r["url"]: r for r in records}
    assert sorted(by_shard) == sorted(map(str, paths))
    for path, start in zip(paths, (0, 8)):
        record = by_shard[str(path)]
        assert (record["offset"], record["stride"]) == (0, 1)
        assert record["hashes"].tolist() == [key_hash(s.key) for s in samples[start:start + 8]]  # in shard order
    ledger = SplitKeyLedger()
    assert ledger.add(records) is None
    assert len(ledger) == 16  # each sample once, though every epoch's read hands its parts on again
    assert ledger.add(records) is None and len(ledger) == 16
    assert _records(tmp_path, check_unique_keys=False) == []


def test_a_key_that_two_readers_read_from_two_shards_names_both(tmp_path: Path) -> None:
    samples = unique_samples(16)
    samples[13] = Sample("s00002", samples[13].data, 13)  # shard 1's sample 5 repeats shard 0's sample 2
    write_shards(tmp_path, samples, shard_size=8)
    records = _records(tmp_path)  # each worker reads one shard: neither sees both copies, so neither raises
    assert len({r["url"] for r in records}) == 2
    with pytest.raises(DataError, match=r"sample key 's00002' occurs twice in the split: sample (5|2) of shard "
                                        r".*train-00000[01]\.tar and sample (2|5) of shard .*train-00000[01]\.tar"):
        SplitKeyLedger().add(records)
    first, second = sorted(records, key=lambda r: r["url"])[:1], sorted(records, key=lambda r: r["url"])[1:]
    ledger = SplitKeyLedger()
    ledger.add(first)  # the two copies reach the ledger at different checkpoints
    with pytest.raises(DataError, match=r"sample key 's00002' occurs twice in the split: sample 5 of shard "
                                        r".*train-000001\.tar and sample 2 of shard .*train-000000\.tar"):
        ledger.add(second)


def test_parts_of_one_shard_read_by_several_readers(tmp_path: Path) -> None:
    """With more readers than shards, readers share a shard by stride: a sample is (shard, offset + i·stride)."""
    samples = unique_samples(8)
    samples[7] = Sample("s00002", samples[7].data, 7)
    (path,) = write_shards(tmp_path, samples, shard_size=8)
    even = _record(path, [s.key for s in samples[0::2]], 0, 2)
    odd = _record(path, [s.key for s in samples[1::2]], 1, 2)
    with pytest.raises(DataError, match=r"'s00002' occurs twice in the split: sample 7 of shard .* and sample 2 of"):
        SplitKeyLedger().add([even, odd])


def test_a_hash_collision_of_two_different_keys_is_not_a_repeat(tmp_path: Path, monkeypatch) -> None:
    """A match is confirmed by reading both keys back: two keys with one hash never stop a run."""
    samples = unique_samples(8)
    paths = write_shards(tmp_path, samples, shard_size=4)
    real = key_hash
    colliding = lambda key: 7 if key in ("s00001", "s00006") else real(key)  # noqa: E731
    monkeypatch.setattr(split_keys, "key_hash", colliding)
    records = [part_record(str(p), 0, 1, [colliding(s.key) for s in samples[i:i + 4]]) for p, i in zip(paths, (0, 4))]
    ledger = SplitKeyLedger()
    assert ledger.add(records) is None
    assert len(ledger) == 7  # the colliding second sample is not held (its hash is); nothing else lost


def test_shards_rebuilt_in_place_since_the_checkpoint_restart_the_ledger(tmp_path: Path) -> None:
    samples = unique_samples(8)
    paths = write_shards(tmp_path, samples, shard_size=4)
    ledger = SplitKeyLedger()
    ledger.add([_record(p, [s.key for s in samples[i:i + 4]]) for p, i in zip(paths, (0, 4))])
    state = ledger.state_dict()
    moved = samples[4:] + samples[:4]  # the same keys, each now in the other shard
    write_shards(tmp_path, moved, shard_size=4)
    resumed = SplitKeyLedger()
    resumed.load_state_dict(state)
    note = resumed.add([_record(paths[0], [s.key for s in moved[:4]])])
    assert note is not None and "the shards changed since the checkpoint's key ledger was written" in note
    assert len(resumed) == 4
    with pytest.raises(DataError, match=r"shard .*train-000001\.tar changed while training read it \(sample (\d) is "
                                        r"'s0000\1' now\)"):
        resumed.add([_record(paths[1], ["s00004", "s00005", "s00006", "s00007"])])  # what shard 1 held before


def test_a_match_that_cannot_be_read_back_is_still_an_error(tmp_path: Path) -> None:
    samples = unique_samples(8)
    paths = write_shards(tmp_path, samples, shard_size=4)
    ledger = SplitKeyLedger()
    ledger.add([_record(paths[0], [s.key for s in samples[:4]])])
    paths[0].unlink()
    with pytest.raises(DataError, match=r"sample 0 of shard .*train-000001\.tar and sample 1 of shard .*train-000000"
                                        r"\.tar have the same key hash, and reading them back .* failed \(.*cannot open"):
        ledger.add([_record(paths[1], ["s00001", "s00005", "s00006", "s00007"])])


def test_the_ledger_survives_a_weights_only_checkpoint_round_trip(tmp_path: Path) -> None:
    samples = unique_samples(8)
    paths = write_shards(tmp_path, samples, shard_size=4)
    ledger = SplitKeyLedger()
    ledger.add([_record(p, [s.key for s in samples[i:i + 4]]) for p, i in zip(paths, (0, 4))])
    torch.save(ledger.state_dict(), tmp_path / "ledger.pt")
    state = torch.load(tmp_path / "ledger.pt", weights_only=True)
    restored = SplitKeyLedger()
    restored.load_state_dict(state)
    assert restored.urls == ledger.urls and np.array_equal(restored.hashes, ledger.hashes)
    assert np.array_equal(restored.samples, ledger.samples)
    state["hashes"] = state["hashes"].flip(0)
    with pytest.raises(DataError, match=r"the checkpoint's key ledger \(split_keys\) is damaged"):
        SplitKeyLedger().load_state_dict(state)


def test_training_stops_on_a_key_two_loader_workers_read(tmp_path: Path, pretrain, capsys) -> None:
    data = write_pretrain_shards(tmp_path / "data", num_samples=16, shard_size=8)
    _repeat_key(data, shard=1, index=5, key="img00002")
    run_dir = tmp_path / "run"
    rc = pretrain(data, run_dir, **{"data.num_workers": 2, "data.batch_size": 4, "train.global_batch": 4,
                                    "train.total_steps": 12, "train.checkpoint_every": 4, "optim.warmup_steps": 2})
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2, err
    assert err.startswith("error: sample key 'img00002' occurs twice in the split: sample ")
    assert "train-000000.tar" in err and "train-000001.tar" in err
    assert ckpt.latest_checkpoint(run_dir / "checkpoints") is None  # the first check failed: nothing was saved


def test_a_clean_run_checkpoints_every_sample_once_and_a_resume_checks_against_them(
    tmp_path: Path, pretrain, monkeypatch, capsys
) -> None:
    data = write_pretrain_shards(tmp_path / "data", num_samples=16, shard_size=8)
    run_dir = tmp_path / "run"
    run = {"data.num_workers": 2, "data.batch_size": 4, "train.global_batch": 4, "train.checkpoint_every": 4,
           "optim.warmup_steps": 2}
    assert pretrain(data, run_dir, **run, **{"train.total_steps": 8}) == 0
    state = ckpt.read_state(run_dir / "checkpoints" / "step_0000008")["feed"]["split_keys"]
    assert sorted(Path(u).name for u in state["urls"]) == ["train-000000.tar", "train-000001.tar"]
    samples = sorted(zip(state["samples"].tolist(), state["hashes"].tolist()))
    urls = [Path(u).name for u in state["urls"]]
    where = {(urls[s >> 32], s & 0xFFFFFFFF): h for s, h in samples}
    assert where == {(f"train-00000{i // 8}.tar", i % 8): key_hash(f"img{i:05d}") for i in range(16)}

    # Shard 1 now repeats shard 0's img00002, and the resumed run does not read shard 0 again before its first
    # checkpoint: only the checkpoint's ledger knows where img00002 was.
    _repeat_key(data, shard=1, index=5, key="img00002")
    build = wiring.build_train_stream

    def without_shard_0(*args, **kwargs):
        stream = build(*args, **kwargs)
        batches = stream._batches

        def filtered(iterator):
            for batch in batches(iterator):
                batch["part_keys"] = [r for r in batch["part_keys"] if not r["url"].endswith("train-000000.tar")]
                yield batch

        stream._batches = filtered
        return stream

    monkeypatch.setattr(wiring, "build_train_stream", without_shard_0)
    capsys.readouterr()
    rc = pretrain(data, run_dir, "--resume", "auto", **run, **{"train.total_steps": 16})
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2, err
    assert err.startswith("error: sample key 'img00002' occurs twice in the split: sample 5 of shard ")
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == "step_0000008"


def _repeat_key(data: Path, *, shard: int, index: int, key: str) -> None:
    """Rewrite shard `shard` of a `write_pretrain_shards` directory with sample `index` renamed to `key`."""
    import io
    import tarfile

    path = data / f"train-{shard:06d}.tar"
    members = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            members.append((member, tar.extractfile(member).read()))
    old = f"img{shard * 8 + index:05d}"
    with tarfile.open(path, "w") as tar:
        for member, payload in members:
            if member.name.startswith(old + "."):
                member.name = key + member.name[len(old):]
            tar.addfile(member, io.BytesIO(payload))


def test_the_mae_linear_probe_checks_its_train_split_too(tmp_path: Path) -> None:
    from ssl_vit.config import EvalData
    from ssl_vit.eval.context import EvalContext
    from ssl_vit.eval.linear import LinearProbe
    from ssl_vit.models import create_model

    samples = [Sample(s.key, s.data, i % 3) for i, s in enumerate(unique_samples(16))]
    samples[10] = Sample("s00004", samples[10].data, 1)
    write_shards(tmp_path, samples, shard_size=8, class_names=["a", "b", "c"])
    ctx = EvalContext(lambda: create_model("vit_nano_patch4"),
                      EvalData(train=str(tmp_path), test=str(tmp_path), test_split="train", image_size=32,
                               batch_size=4, num_workers=2))
    with pytest.raises(DataError, match=r"sample key 's00004' occurs twice in the split: sample (2|4) of shard .*"
                                        r"train-00000[01]\.tar and sample (4|2) of shard"):
        LinearProbe(protocol="mae", epochs=2, warmup_epochs=1).run(ctx)
