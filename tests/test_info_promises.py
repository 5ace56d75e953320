"""The streams check what `_info.json` promises, before and while they read: each shard listed once, the count
per shard, each key once, every label inside the class list. A broken promise is a DataError naming the shard
and the key, in training and in evaluation. The crafted shards and indexes are built here."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from shardgen import Sample, unique_samples, write_shards

from ssl_vit.data import TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.data.split_keys import SplitKeyLedger
from ssl_vit.errors import DataError
from ssl_vit.eval.features import extract_features
from ssl_vit.models import create_model

NAMES = ["a", "b", "c", "d", "e", "f"]


def _edit_info(out: Path, **changes: object) -> None:
    info = json.loads((out / "_info.json").read_text())
    info["splits"]["train"].update(changes)
    (out / "_info.json").write_text(json.dumps(info))


def _both_streams_raise(out: Path, pattern: str, *, workers: int = 0) -> None:
    options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=workers, shuffle_buffer=0)
    train = build_train_stream(str(out), options, seed=0)
    with pytest.raises(DataError, match=pattern):
        try:
            list(itertools.islice(iter(train), 30))
        finally:
            train.close()
    with pytest.raises(DataError, match=pattern):
        list(build_eval_stream(str(out), batch_size=4, image_size=8, num_workers=workers))


def test_a_shard_listed_twice_is_refused_before_reading(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, unique_samples(8), shard_size=4)
    _edit_info(tmp_path, filenames=[p.name for p in paths * 2], shard_lengths=[4, 4, 4, 4], num_samples=16)
    with pytest.raises(DataError, match=r"names shard .*train-000000\.tar twice"):
        resolve_spec(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"names shard .*train-000001\.tar twice"):
        resolve_spec([str(paths[1]), str(paths[0]), str(paths[1])])
    alias = tmp_path / "alias.tar"
    os.symlink(paths[0], alias)
    with pytest.raises(DataError, match=r"names shard .*alias\.tar twice \(as .*train-000000\.tar\)"):
        build_train_stream([str(paths[0]), str(alias)], TrainStreamOptions(batch_size=2, image_size=8), seed=0)


def test_a_shard_with_more_samples_than_promised_names_the_first_extra_key(tmp_path: Path) -> None:
    write_shards(tmp_path, unique_samples(8), shard_size=8)
    _edit_info(tmp_path, shard_lengths=[6], num_samples=6)
    _both_streams_raise(tmp_path, r"train-000000\.tar holds more than the 6 samples _info.json says "
                                  r"\(the first extra is 's00006'\)")


@pytest.mark.parametrize("across_shards", [False, True])
def test_a_repeated_key_names_both_shards(tmp_path: Path, across_shards: bool) -> None:
    samples = unique_samples(8)
    samples[5 if across_shards else 3] = Sample("s00001", samples[1].data, 1)  # key s00001 again
    write_shards(tmp_path, samples, shard_size=4)
    if not across_shards:  # within a shard: its index refuses it, before any batch
        _both_streams_raise(tmp_path, r"sample key 's00001' of shard .*train-000000\.tar was already read from shard "
                                      r".*train-000000\.tar")
        return
    # across shards: the eval stream's reader sees both; the train stream hands both shards' keys to the trainer's
    # ledger (tests/test_split_keys.py), which names both shards
    with pytest.raises(DataError, match=r"sample key 's00001' of shard .*train-000001\.tar was already read from "
                                        r"shard .*train-000000\.tar"):
        list(build_eval_stream(str(tmp_path), batch_size=4, image_size=8, num_workers=0))
    train = build_train_stream(str(tmp_path), TrainStreamOptions(batch_size=4, image_size=8, num_workers=0), seed=0)
    try:
        records = [r for batch in itertools.islice(iter(train), 4) for r in batch["part_keys"]]
    finally:
        train.close()
    with pytest.raises(DataError, match=r"sample key 's00001' occurs twice in the split"):
        SplitKeyLedger().add(records)


def test_a_key_repeated_between_two_readers_is_caught_when_evaluation_gathers(tmp_path: Path) -> None:
    """Two workers read one shard each, so neither sees both copies; the gathered set must hold each key once."""
    samples = unique_samples(8)
    samples[5] = Sample("s00001", samples[1].data, 1)
    write_shards(tmp_path, samples, shard_size=4)
    stream = build_eval_stream(str(tmp_path), batch_size=4, image_size=8, num_workers=2)
    with pytest.raises(DataError, match=r"sample key 's00001' occurs more than once in the evaluation data"):
        extract_features(create_model("vit_nano_patch4", img_size=8), stream)
    stream.close()


def test_extraction_asserts_the_promised_count() -> None:
    batches = [{"image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "label": torch.tensor([0, 1]), "key": ["a", "b"]}]
    with pytest.raises(DataError, match=r"evaluation read 2 samples but _info.json promises 3"):
        extract_features(create_model("vit_nano_patch4", img_size=8), batches, total=3)
    assert len(extract_features(create_model("vit_nano_patch4", img_size=8), batches, total=2)) == 2


@pytest.mark.parametrize("label,names", [(6, NAMES), (-1, NAMES), (0, [])])
def test_a_label_outside_the_class_list_is_refused(tmp_path: Path, label: int, names: list[str]) -> None:
    samples = [Sample(s.key, s.data, i % 6 if names else -1) for i, s in enumerate(unique_samples(8))]
    samples[2] = Sample("s00002", samples[2].data, label)
    write_shards(tmp_path, samples, shard_size=8, class_names=names)
    allowed = r"-1 \(unlabelled split\)" if not names else r"0\.\.5"
    _both_streams_raise(tmp_path, rf"sample 's00002' of shard .*train-000000\.tar has label {label}, outside the "
                                  rf"split's class list \({allowed} in _info.json\)")


@pytest.mark.timeout(60)
def test_promises_hold_with_two_workers_too(tmp_path: Path) -> None:
    samples = [Sample(s.key, s.data, i % 6) for i, s in enumerate(unique_samples(16))]
    samples[9] = Sample("s00009", samples[9].data, 17)
    write_shards(tmp_path, samples, shard_size=8, class_names=NAMES)
    _both_streams_raise(tmp_path, r"sample 's00009' of shard .*train-000001\.tar has label 17", workers=2)
