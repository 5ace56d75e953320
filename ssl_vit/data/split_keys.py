"""Every key once across the whole split, in training: the readers' key hashes, checked in one place.

Each reader (rank × loader worker) checks the keys it reads itself (`promises.SamplePromises`), but readers read
disjoint parts of the split, so a sample stored in two shards that two readers read would pass both checks and
be trained on twice per epoch. So the train stream hands on, with a reader's next batch, the 64-bit key hashes
of every shard part that reader has read to its end (`part_record`); the trainer gathers them from every rank
at each checkpoint and adds them to the main process's `SplitKeyLedger`, which holds one entry per sample of
the split: its key hash and where it lies (shard, index in the shard). A second sample with a hash already
held is a repeated key, and a `DataError` that names the key and both shards stops every rank.

A match is confirmed before it is reported: the ledger reads both samples' keys back from their shards. So a
collision of two different keys' hashes (about 4 in 10^8 for ImageNet's 1.28 M keys) never stops a run, and
shards rebuilt in place since the checkpoint the ledger came from (their samples elsewhere now) restart the
ledger with a note instead of raising.

A local shard is known by the file it is, not by its spelling (`os.path.realpath`, as `spec.py` tells a shard
listed twice): a run resumed with its data spelled otherwise — a relative path, a trailing slash, a symlinked
mount, `DIR:split` — finds its samples where the ledger has them, and the ledger takes the new spelling. (That
the data is the same is the resume's own check, `data/identity.py`, made before training starts. Shards moved
away from where the checkpoint read them cannot be read back to confirm a match: that stays an error.)

The ledger costs 16 bytes per sample of the split in the main process and in each checkpoint (ImageNet-1k:
20 MB); `data.check_unique_keys: false` leaves it out, for splits of billions of samples. Records cost 8 bytes
per sample read, gathered once per checkpoint.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np
import torch

from ssl_vit.errors import DataError

from .promises import REBUILD, key_hash
from .shards import read_shard

INDEX_BITS = 32  # a sample is (shard number << 32) | its index in the shard
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def part_record(url: str, offset: int, stride: int, hashes: Sequence[int]) -> dict:
    """What a reader hands on for a shard part it read to its end: samples offset, offset + stride, … of `url`,
    whose keys hash to `hashes` (in that order)."""
    return {"url": url, "offset": int(offset), "stride": int(stride), "hashes": np.asarray(hashes, dtype=np.int64)}


class PartsRead:
    """One rank's `part_keys` records from the batches it consumed, each shard part once: every epoch reads every
    part again, and the ledger needs its keys only once."""

    def __init__(self) -> None:
        self._new: dict[tuple[str, int, int], dict] = {}
        self._taken: set[tuple[str, int, int]] = set()

    def note(self, batch: dict) -> None:
        for record in batch.get("part_keys", ()):
            part = (record["url"], int(record["offset"]), int(record["stride"]))
            if part not in self._taken and part not in self._new:
                self._new[part] = part_record(*part, np.asarray(record["hashes"], dtype=np.int64))

    def take(self) -> list[dict]:
        """The records noted since the last `take`, for the ledger."""
        new, self._new = list(self._new.values()), {}
        self._taken.update((r["url"], r["offset"], r["stride"]) for r in new)
        return new


class SplitKeyLedger:
    """The key hashes of every sample read so far, sorted, with the sample each came from (main process)."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._url_number: dict[str, int] = {}
        self.hashes = np.empty(0, dtype=np.int64)  # (N,) sorted, unique
        self.samples = np.empty(0, dtype=np.int64)  # (N,) (shard number << 32) | index in shard, aligned with hashes

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, records: Iterable[dict]) -> str | None:
        """Remember the samples of `records` (`part_record`s; a sample seen before is fine). Raises `DataError`
        when a key occurs at two samples; returns a note when the ledger had to start afresh."""
        records = list(records)
        hashes, samples = self._arrays(records)
        if len(hashes) == 0:
            return None
        order = np.lexsort((samples, hashes))  # by hash, then sample
        hashes, samples = hashes[order], samples[order]
        distinct = np.ones(len(hashes), dtype=bool)
        distinct[1:] = (hashes[1:] != hashes[:-1]) | (samples[1:] != samples[:-1])
        hashes, samples = hashes[distinct], samples[distinct]  # each (hash, sample) once: parts are read every epoch
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        for i in np.flatnonzero(~first):  # two samples of these records with one hash
            if self._confirm(int(samples[i - 1]), int(samples[i]), int(hashes[i])):
                return self._restart(records)
        hashes, samples = hashes[first], samples[first]  # a hash collision of two different keys keeps the first
        pos = np.searchsorted(self.hashes, hashes)  # (M,) where each would go in the ledger
        held = pos < len(self.hashes)
        held[held] = self.hashes[pos[held]] == hashes[held]
        elsewhere = np.flatnonzero(held)  # (K,) hashes the ledger holds: a repeat unless at the same sample
        elsewhere = elsewhere[self.samples[pos[elsewhere]] != samples[elsewhere]]
        for i in elsewhere:
            if self._confirm(int(self.samples[pos[i]]), int(samples[i]), int(hashes[i])):
                return self._restart(records)
        new = ~held
        self.hashes = np.insert(self.hashes, pos[new], hashes[new])
        self.samples = np.insert(self.samples, pos[new], samples[new])
        return None

    def _arrays(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """All records' (hashes, samples), concatenated."""
        hashes, samples = [], []
        for record in records:
            where = _location(record["url"])
            number = self._url_number.get(where)
            if number is None:
                number = self._url_number[where] = len(self.urls)
                self.urls.append(record["url"])
            else:
                self.urls[number] = record["url"]  # the same file, as it is spelled now
            part = np.asarray(record["hashes"], dtype=np.int64)  # (n,)
            index = record["offset"] + record["stride"] * np.arange(len(part), dtype=np.int64)  # (n,) in the shard
            hashes.append(part)
            samples.append((np.int64(number) << INDEX_BITS) | index)
        if not hashes:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(hashes), np.concatenate(samples)

    def _where(self, sample: int) -> tuple[str, int]:
        return self.urls[sample >> INDEX_BITS], sample & ((1 << INDEX_BITS) - 1)

    def _confirm(self, first: int, second: int, hashed: int) -> bool:
        """Raise the repeated-key error when both samples carry one key; False for two keys whose hashes collide,
        True when `first` no longer holds a key of that hash (its shard was rebuilt: the ledger must restart).
        `second` comes from the records being added, `first` from the ledger or earlier in those records."""
        (url_a, index_a), (url_b, index_b) = self._where(first), self._where(second)
        key_a, key_b = _key_at(url_a, index_a), _key_at(url_b, index_b)
        if isinstance(key_a, str) and isinstance(key_b, str):
            if key_a == key_b:
                raise DataError(
                    f"sample key {key_a!r} occurs twice in the split: sample {index_b} of shard {url_b} and sample "
                    f"{index_a} of shard {url_a} (read by different loader workers or ranks); every sample of a "
                    f"split must occur once: {REBUILD}")
            if key_hash(key_b) != hashed:  # `second` was just read: its shard changes under the running job
                raise DataError(f"shard {url_b} changed while training read it (sample {index_b} is {key_b!r} now): "
                                "rebuild shards into a new directory, never in place under a running job")
            return key_hash(key_a) != hashed  # `first`'s shard was rebuilt since it was read; else a collision
        unreadable = key_a if not isinstance(key_a, str) else key_b
        raise DataError(
            f"sample {index_b} of shard {url_b} and sample {index_a} of shard {url_a} have the same key hash, and "
            f"reading them back to compare their keys failed ({unreadable}); {REBUILD}")

    def _restart(self, records: list[dict]) -> str:
        self.__init__()
        self.add(records)  # cannot restart again: within the records, `first` was just read too
        return ("the shards changed since the checkpoint's key ledger was written (a sample's key is not where "
                "it was): the split-wide check that every key occurs once starts afresh")

    def state_dict(self) -> dict:
        """Checkpoint form (weights-only loadable: strings and tensors)."""
        return {"urls": list(self.urls), "hashes": torch.from_numpy(self.hashes.copy()),
                "samples": torch.from_numpy(self.samples.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.__init__()
        self.urls = [str(url) for url in state["urls"]]
        self._url_number = {_location(url): i for i, url in enumerate(self.urls)}
        self.hashes = state["hashes"].numpy().astype(np.int64)
        self.samples = state["samples"].numpy().astype(np.int64)
        if len(self.hashes) != len(self.samples) or np.any(self.hashes[1:] <= self.hashes[:-1]):
            raise DataError("the checkpoint's key ledger (split_keys) is damaged; resume from another checkpoint")


def _local_path(url: str) -> str | None:
    if url.startswith("file:"):
        return re.sub(r"^file://?", "/", url)
    return None if _SCHEME.match(url) else url


def _location(url: str) -> str:
    """Where a shard lies: a local file's real path (whatever the spelling), a remote URL as written."""
    path = _local_path(url)
    return url if path is None else os.path.realpath(path)


def _key_at(url: str, index: int) -> str | Exception:
    """The key of sample `index` of shard `url`, read back from it (or why it could not be)."""
    samples = read_shard(url)
    try:
        sample = next(islice(samples, index, None), None)
    except Exception as err:  # noqa: BLE001 - reported in the error that needed the key
        return err
    finally:
        samples.close()
    return sample["__key__"] if sample is not None else DataError(f"shard {url} has no sample {index} now")
