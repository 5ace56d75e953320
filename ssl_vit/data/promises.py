"""What `_info.json` promises about each sample, checked as a reader reads it: a broken promise is a `DataError`
naming the shard and the key, in training and in evaluation.

The promises, and where each is held:
- each shard is listed once (`spec.py`, before reading);
- the counts add up: whole numbers ≥ 0, one length per shard, summing to `num_samples` (`spec.py`, before
  reading);
- each shard holds exactly `shard_lengths[i]` samples (`shards.read_shard`: too many as soon as the extra one
  appears, too few at its end);
- the split holds `num_samples` samples (`SplitCount`, in training, once every shard part has been read to its
  end): what makes a wrong count visible when there are no `shard_lengths` to check each shard against (an
  index without them, or a URL list with `data.num_samples`), and which would otherwise silently give every
  epoch the wrong number of steps;
- every key occurs once in the split: here within each reader (per epoch of the train stream); across the whole
  split in training by the trainer's `split_keys.SplitKeyLedger`, fed with the key hashes each reader records
  here, and in evaluation when it gathers its keys (`eval.features.sort_unique`); and by `ssl-vit-shards verify`;
- every label lies in the class list: 0 <= cls < len(class_names), or cls == -1 for an unlabelled split
  (`class_names == []`). A URL list without `_info.json` promises no classes, and is not checked.

A repeated key or a label outside the class list is not a bad *image*, to be skipped and counted: it means
the shards are not the ones `_info.json` describes (a sample stored twice, shards of another build), and
training or scoring on them would give a silently wrong number.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from ssl_vit.errors import DataError

REBUILD = "run `ssl-vit-shards verify` on the shards and rebuild them with `ssl-vit-shards build`"


def parse_label(raw: bytes | None) -> int:
    """The class index in a sample's `cls` member; -1 when it has none. Raises ValueError when not an integer."""
    if raw is None:
        return -1
    if not isinstance(raw, bytes):  # a `tarstream.OversizeMember`
        raise ValueError(f"cls is {raw}")
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"cls is not an integer: {raw[:20]!r}") from None


def key_hash(key: str) -> int:
    """A 64-bit hash of a sample key, the same in every process (Python's `hash` of a str is salted per process,
    and the split-wide check compares hashes from every rank)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


class SamplePromises:
    """One reader's check of the samples it reads (keys remembered as 64-bit hashes: ~100 bytes a sample)."""

    def __init__(self, class_names: tuple[str, ...] | None) -> None:
        self.num_classes = None if class_names is None else len(class_names)
        self._keys: dict[int, str] = {}  # hash(key) -> the shard it was read from

    def new_epoch(self) -> None:
        """The train stream reads every sample again each epoch."""
        self._keys.clear()

    def checked(self, samples: Iterable[dict], hashes: list[int] | None = None) -> Iterator[dict]:
        """`samples`, each checked; their key hashes are appended to `hashes` when given (for the split-wide check)."""
        for sample in samples:
            key, url = sample["__key__"], sample["__url__"]
            hashed = key_hash(key)
            first = self._keys.get(hashed)
            if first is not None:
                raise DataError(f"sample key {key!r} of shard {url} was already read from shard {first}: every "
                                f"sample of a split must occur once; {REBUILD}")
            self._keys[hashed] = url
            if hashes is not None:
                hashes.append(hashed)
            if self.num_classes is not None:
                self.check_label(sample)
            yield sample

    def check_label(self, sample: dict) -> None:
        """A label outside the split's class list (or no number at all) is a broken promise of `_info.json`."""
        if self.num_classes is None:
            return
        key, url = sample["__key__"], sample["__url__"]
        try:
            label = parse_label(sample.get("cls"))
        except ValueError as err:
            raise DataError(f"sample {key!r} of shard {url}: {err}; {REBUILD}") from None
        valid = label == -1 if self.num_classes == 0 else 0 <= label < self.num_classes
        if not valid:
            allowed = "-1 (unlabelled split)" if self.num_classes == 0 else f"0..{self.num_classes - 1}"
            raise DataError(f"sample {key!r} of shard {url} has label {label}, outside the split's class list "
                            f"({allowed} in _info.json); the shards and their _info.json disagree: {REBUILD}")


class SplitCount:
    """The split's size as the readers find it, against the count its data spec gives (`num_samples` of
    `_info.json`, or `data.num_samples` for a URL list). Fed in the main process with the readers' records of the
    shard parts they read to their end (`split_keys.part_record`: a part is samples offset, offset + stride, … of
    one shard, and a shard is complete once all its `stride` parts are in); when every shard is complete, their
    samples must add up to the count. Checked once; needs the key records (`data.check_unique_keys`)."""

    def __init__(self, expected: int | None, shards: int) -> None:
        self.expected, self.shards = expected, shards
        self._parts: dict[str, dict[int, int]] = {}  # url -> {offset: samples in that part}
        self._strides: dict[str, int] = {}
        self._complete: dict[str, int] = {}  # url -> its samples, once every part is in
        self.done = expected is None

    def add(self, records: Iterable[dict]) -> None:
        """Note the parts of `records`; raises `DataError` once the split is complete and its size is not the count."""
        if self.done:
            return
        for record in records:
            url, stride = record["url"], int(record["stride"])
            if self._strides.setdefault(url, stride) != stride:  # read in another layout: not comparable
                continue
            parts = self._parts.setdefault(url, {})
            parts[int(record["offset"])] = len(record["hashes"])
            if len(parts) == stride:
                self._complete[url] = sum(parts.values())
        if len(self._complete) < self.shards:
            return
        self.done = True
        total = sum(self._complete.values())
        if total != self.expected:
            raise DataError(
                f"the split's {self.shards} shards hold {total} samples, but its count says {self.expected} "
                f"(num_samples in _info.json, or data.num_samples for a URL list): every epoch would have the wrong "
                f"number of steps. Give the count {total}, or rebuild the shards with `ssl-vit-shards build`")
