"""Each shard's member index (data/member_index.py): built once from the tar the test writes, equal to tarfile's
offsets, reused from its cache, rebuilt when the shard changes, and never trusted over the shard's own bytes."""
from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest
from shardgen import unique_samples, write_shards

from ssl_vit.data.member_index import index_path, read_sample, shard_index
from ssl_vit.data.promises import key_hash
from ssl_vit.errors import DataError


def test_the_index_holds_each_sample_s_byte_range_and_key(tmp_path: Path):
    shard = write_shards(tmp_path, unique_samples(6), shard_size=6)[0]
    index = shard_index(str(shard), shard, expected=6)
    with tarfile.open(shard) as tar:
        members = tar.getmembers()  # three files a sample: jpg, cls, json
    starts = [m.offset for m in members[::3]]
    ends = [m.offset_data + -(-m.size // 512) * 512 for m in members[2::3]]
    assert index.starts.tolist() == starts and index.ends.tolist() == ends
    assert index.key_hashes.tolist() == [key_hash(f"s{i:05d}") for i in range(6)]
    with open(shard, "rb") as f:
        assert read_sample(f, index, 4, str(shard))["__key__"] == "s00004"


def test_the_cache_is_reused_and_a_changed_shard_gets_a_new_index(tmp_path: Path):
    shard = write_shards(tmp_path / "a", unique_samples(6), shard_size=6)[0]
    first = index_path(shard)
    shard_index(str(shard), shard)
    built = first.stat().st_mtime_ns
    shard_index(str(shard), shard)
    assert first.stat().st_mtime_ns == built  # read from the cache, not rebuilt
    other = write_shards(tmp_path / "b", unique_samples(9), shard_size=9)[0]
    os.replace(other, shard)  # another shard under the same name
    assert index_path(shard) != first and len(shard_index(str(shard), shard)) == 9


def test_a_shard_changed_behind_its_index_is_named_not_read_as_another_sample(tmp_path: Path):
    shard = write_shards(tmp_path / "a", unique_samples(6), shard_size=6)[0]
    index = shard_index(str(shard), shard)
    stat = shard.stat()
    samples = unique_samples(6)
    samples.reverse()  # the same sizes, other keys at each place
    data = write_shards(tmp_path / "b", samples, shard_size=6)[0].read_bytes()
    shard.write_bytes(data)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old size and time
    assert index_path(shard).name == f"{index_path(shard).stem}.npy"
    with open(shard, "rb") as f, pytest.raises(DataError, match=r"sample 0 of shard .* holds 's00005', not the key "
                                                                r"its index recorded: the shard changed"):
        read_sample(f, index, 0, str(shard))


def test_a_gzip_shard_is_refused_with_the_command_that_unpacks_it(tmp_path: Path):
    shard = write_shards(tmp_path, unique_samples(3), shard_size=3)[0]
    packed = tmp_path / "train-000000.tar.gz"
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(DataError, match=r"shard .*\.tar\.gz is gzip-compressed: .* unpack it \(`gunzip -c "):
        shard_index(str(packed), packed)
