"""One loader worker's access to the split: each shard's member index, an open file, and the samples a holdout keeps.

    access = ShardAccess(shards, holdout=None, policy=remote.RETRY, remote_cache_bytes=50e9)
    sample = access.read(shard, member)      # member: the order's number among the samples trained on
    access.take_records()                    # key records of shards indexed since the last call (`split_keys`)

Local shards are read in place; any other URL through a local copy (`remote_copy.py`). At most `MAX_OPEN`
files stay open (least recently used closed first). A holdout is applied through the index's holdout numbers,
so it needs no key string: member m of shard i is the m-th sample of the shard that the holdout keeps.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ssl_vit.errors import DataError

from . import remote_copy
from .member_index import ShardIndex, read_sample, shard_index
from .remote import RetryPolicy
from .remote_waits import ReadInterrupted
from .shards import REBUILD, ShardUnreadable, open_url
from .spec import ShardSet, is_local, local_path
from .split import Holdout
from .split_keys import part_record

MAX_OPEN = 64


class ShardAccess:
    def __init__(self, shards: ShardSet, *, holdout: Holdout | None, policy: RetryPolicy,
                 remote_cache_bytes: int, max_member: int | None = None) -> None:
        self.shards, self.holdout, self.policy, self.max_member = shards, holdout, policy, max_member
        self.remote_cache_bytes = int(remote_cache_bytes)
        self._indexes: dict[int, ShardIndex] = {}
        self._kept: dict[int, np.ndarray] = {}
        self._files: OrderedDict[int, object] = OrderedDict()
        self._records: list[dict] = []

    def counts(self, skip_unreadable: bool = False) -> list[int]:
        """How many samples of each shard are trained on: `_info.json`'s lengths when nothing is held out, else
        (or when it has none) counted from every shard's index (which builds or fetches what is missing). A shard
        unreadable then counts 0 with a warning when `skip_unreadable` (`data.shard_errors: skip`), else raises."""
        lengths = self.shards.shard_lengths
        if self.holdout is None and lengths is not None:
            counts = [int(n) for n in lengths]
        else:
            counts = [self._count(i, skip_unreadable) for i in range(len(self.shards.urls))]
        if sum(counts) == 0:
            urls = ", ".join(self.shards.urls[:3]) + (", …" if len(self.shards.urls) > 3 else "")
            kept = " the holdout keeps" if self.holdout is not None else ""
            raise DataError(f"the training shards {urls} hold no sample{kept} to train on; check the data spec")
        return counts

    def _count(self, shard: int, skip_unreadable: bool) -> int:
        try:
            return len(self.kept(shard))
        except ShardUnreadable as err:
            if not skip_unreadable:
                raise
            print(f"warning: shard {self.shards.urls[shard]} is left out of the training order (its samples are "
                  f"unknown: no _info.json counts them): {err}", file=sys.stderr, flush=True)
            return 0

    def index(self, shard: int) -> ShardIndex:
        index = self._indexes.get(shard)
        if index is None:
            url = self.shards.urls[shard]
            expected = self.shards.shard_lengths[shard] if self.shards.shard_lengths is not None else None
            path = self._path(shard)
            try:
                index = shard_index(url, path, expected=expected)
            except OSError as exc:  # the file is gone or cannot be read (a DataError is a broken promise: raised)
                raise ShardUnreadable(f"cannot open shard {url}: {exc}; check the path in the data spec") from None
            self._indexes[shard] = index
            self._records.append(part_record(url, 0, 1, np.array(index.key_hashes)))  # a copy: the index is read-only
        return index

    def kept(self, shard: int) -> np.ndarray:
        """(n,) the shard's sample numbers the holdout keeps, in shard order (all of them without a holdout)."""
        kept = self._kept.get(shard)
        if kept is None:
            index = self.index(shard)
            if self.holdout is None:
                kept = np.arange(len(index), dtype=np.int64)
            else:
                u = np.asarray(index.holdout_u) / 2.0**64  # (n,) Holdout's number of each key, in [0, 1)
                kept = np.flatnonzero((u < self.holdout.fraction) == self.holdout.held)
            self._kept[shard] = kept
        return kept

    def read(self, shard: int, member: int) -> dict:
        """The sample the order calls `member` of `shard`. An unreadable file is `ShardUnreadable`; a shard that
        changed since it was indexed, a `DataError`."""
        index = self.index(shard)
        number = int(self.kept(shard)[member]) if self.holdout is not None else member
        return read_sample(self._file(shard), index, number, self.shards.urls[shard], self.max_member)

    def take_records(self) -> list[dict]:
        records, self._records = self._records, []
        return records

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _file(self, shard: int):
        f = self._files.get(shard)
        if f is not None:
            self._files.move_to_end(shard)
            return f
        path = self._path(shard)
        from data_tools.shard_files import open_shard_file

        try:
            f = open_shard_file(path)
        except OSError as exc:
            raise ShardUnreadable(f"cannot open shard {self.shards.urls[shard]}: {exc}") from None
        if not is_local(self.shards.urls[shard]):
            remote_copy.hold(f)
        self._files[shard] = f
        while len(self._files) > MAX_OPEN:
            self._files.popitem(last=False)[1].close()
        return f

    def _path(self, shard: int) -> Path:
        url = self.shards.urls[shard]
        if is_local(url):
            return local_path(url)
        sha256 = self.shards.sha256[shard] if self.shards.sha256 is not None else None
        try:
            return remote_copy.local_copy(url, sha256=sha256, policy=self.policy, limit=self.remote_cache_bytes,
                                          opener=open_url)
        except (DataError, ReadInterrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to fetch means the shard is unreadable
            advice = getattr(exc, "advice", None) or REBUILD  # a remote error may know what helps (a slow link)
            raise ShardUnreadable(f"shard {url} is unreadable after 0 samples ({type(exc).__name__}: {exc}); "
                                  f"{advice}") from None
