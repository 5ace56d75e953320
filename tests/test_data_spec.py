"""Data specs: directory + split, shorthands, brace-expanded URL lists, and the errors users see."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardgen import solid_samples, write_shards

from ssl_vit.data import ShardSet, resolve_spec, steps_per_epoch
from ssl_vit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, solid_samples(3, 7), split="train", shard_size=8, class_names=["cat", "dog", "fox"])  # 8+8+5
    write_shards(out, solid_samples(3, 2), split="val", shard_size=10, class_names=["cat", "dog", "fox"])
    return out


def test_directory_and_split(shard_dir: Path) -> None:
    shards = resolve_spec(str(shard_dir), "train")
    assert shards.urls == tuple(str(shard_dir / f"train-00000{i}.tar") for i in range(3))
    assert shards.num_samples == 21
    assert shards.shard_lengths == (8, 8, 5)
    assert shards.class_names == ("cat", "dog", "fox") and shards.num_classes == 3


def test_shorthands_name_the_same_split(shard_dir: Path) -> None:
    full = resolve_spec(str(shard_dir), "val")
    assert resolve_spec(f"{shard_dir}:val") == full
    assert resolve_spec(str(shard_dir / "_info.json"), "val") == full
    assert resolve_spec(full) is full


def test_missing_split_lists_available_splits(shard_dir: Path) -> None:
    with pytest.raises(DataError, match=r"no split 'test'; available splits: train, val"):
        resolve_spec(str(shard_dir), "test")
    with pytest.raises(DataError, match=r"no split given; available splits: train, val"):
        resolve_spec(str(shard_dir))


def test_single_split_directory_needs_no_split(tmp_path: Path) -> None:
    write_shards(tmp_path, solid_samples(2, 3), split="train", shard_size=4)
    assert resolve_spec(str(tmp_path)).num_samples == 6


def test_brace_list_expands_and_takes_count_from_caller(shard_dir: Path) -> None:
    spec = f"{shard_dir}/train-{{000000..000002}}.tar"
    shards = resolve_spec(spec)
    assert shards == ShardSet(tuple(str(shard_dir / f"train-00000{i}.tar") for i in range(3)))
    assert shards.num_samples is None and shards.shard_lengths is None
    assert resolve_spec(spec, num_samples=21).num_samples == 21
    assert resolve_spec([f"{shard_dir}/train-00000{{0,2}}.tar"]).urls == (shards.urls[0], shards.urls[2])


def test_remote_urls_pass_unchecked() -> None:
    shards = resolve_spec("pipe:curl -s https://example.org/x-{0..2}.tar")
    assert shards.urls == tuple(f"pipe:curl -s https://example.org/x-{i}.tar" for i in range(3))
    assert resolve_spec("s3://bucket/x-{00..01}.tar").urls == ("s3://bucket/x-00.tar", "s3://bucket/x-01.tar")


def test_missing_local_shard_is_named(shard_dir: Path) -> None:
    with pytest.raises(DataError, match=r"1 of 4 shards .* do not exist: .*train-000003\.tar"):
        resolve_spec(f"{shard_dir}/train-{{000000..000003}}.tar")


def test_directory_without_index(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has no _info.json"):
        resolve_spec(str(tmp_path), "train")


def test_inconsistent_index_and_count(shard_dir: Path, tmp_path: Path) -> None:
    info = json.loads((shard_dir / "_info.json").read_text())
    info["splits"]["train"]["num_samples"] = 99
    info["splits"]["train"]["filenames"] = [str(shard_dir / f) for f in info["splits"]["train"]["filenames"]]
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"num_samples 99 != sum of shard_lengths 21"):
        resolve_spec(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"num_samples=20 disagrees"):
        resolve_spec(str(shard_dir), "train", num_samples=20)


def test_steps_per_epoch_is_ceil() -> None:
    assert steps_per_epoch(1000, 256) == 4
    assert steps_per_epoch(1024, 256) == 4
    assert steps_per_epoch(1025, 256) == 5
    assert steps_per_epoch(10, 256) == 1
    with pytest.raises(DataError, match="unknown"):
        steps_per_epoch(None, 8)
    with pytest.raises(ConfigError):
        steps_per_epoch(10, 0)
