"""Where each sample of a shard lies: the member index that lets the train stream read any sample by its place.

The exactly-once train order (`global_order.py`) needs random access: the sample at a global position is a given
member of a given shard, whichever rank and loader worker reads it. A tar has no table of contents, so each
shard's is built once by walking its headers (`build_index`: the same tar parser and checks as every read,
`tarstream.py`; a local file's data are seeked past) and cached:

    index = shard_index("/data/in1k/train-000000.tar", expected=1251)   # built on first use, then cached
    index.starts[i], index.ends[i]     # byte range of sample i: its (pax) headers, files and padding
    index.key_hashes[i]                # `promises.key_hash` of its key: the split-wide key check, the records
    index.holdout_u[i]                 # `split.Holdout`'s number for its key, so a holdout needs no key strings
    sample = read_sample(file, index, i, url)   # {"__key__", "__url__", "jpg": ..., "cls": ...}

One row is 32 bytes (ImageNet-1k's 1.28 M samples: 41 MB over its 1,024 index files); workers memory-map the
files of the shards they read, so no process holds the index of a whole split.

Reuse by content. The cache file's name is a digest of the shard's real path, size and modification time, so a
rebuilt shard gets a new index; and every sample read checks that the key its tar headers name hashes to the
index's entry, so a stale index can never hand out another sample's bytes under a key: it is a `DataError`
naming the shard. The cache lives under `cache_dir()` (`$SSL_VIT_CACHE_DIR`, else `$XDG_CACHE_HOME/ssl_vit`,
else `~/.cache/ssl_vit`), never beside the user's shards. gzip-compressed shards cannot be read at an offset:
they are refused with the command that unpacks them.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_vit.errors import DataError

from ..files import atomic_write, make_dir
from .promises import key_hash
from .shards import _KEY_EXT, _META, REBUILD, ShardUnreadable, group_samples
from .tarstream import BLOCK, TarError, iter_members

FORMAT = 1  # bump when a row's meaning changes: old cache files are then never read
_COLUMNS = 4  # start, end, key hash, holdout number (as int64 bits)
_END_OF_ARCHIVE = bytes(2 * BLOCK)
_SMALL_SAMPLE = 1 << 20  # a sample this much above the member cap holds an oversize file: read header by header


def cache_dir() -> Path:
    """Where ssl_vit keeps what it can rebuild (member indexes): `$SSL_VIT_CACHE_DIR`, else the XDG cache."""
    env = os.environ.get("SSL_VIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssl_vit"


@dataclass(frozen=True)
class ShardIndex:
    """The rows of one shard's index (arrays, possibly memory-mapped); see the module's docstring."""

    url: str
    rows: np.ndarray  # (N, 4) int64: start, end, key hash, holdout number

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def starts(self) -> np.ndarray:
        return self.rows[:, 0]

    @property
    def ends(self) -> np.ndarray:
        return self.rows[:, 1]

    @property
    def key_hashes(self) -> np.ndarray:
        return self.rows[:, 2]

    @property
    def holdout_u(self) -> np.ndarray:
        """`split.Holdout`'s uniform number of each key, as the uint64 `u · 2**64`."""
        return self.rows[:, 3].view(np.uint64)


def holdout_number(key: str) -> int:
    """The first 8 bytes of sha256(key), big-endian: `split.Holdout.keeps` compares them / 2**64 to its fraction."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def index_path(path: str | os.PathLike) -> Path:
    """The cache file of the local shard `path` as it is now (real path, size, modification time)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    digest = hashlib.sha256(f"{FORMAT}\0{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    return cache_dir() / "member_index" / f"{digest}.npy"


def shard_index(url: str, path: str | os.PathLike, *, expected: int | None = None) -> ShardIndex:
    """The index of the local shard at `path` (named `url` in messages): from the cache, or built and cached.

    `expected` is the shard's length by `_info.json`; an index that disagrees is a broken promise (DataError)."""
    cached = index_path(path)
    if cached.is_file():
        try:
            rows = np.load(cached, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            rows = None  # a damaged cache file: built again below
        if rows is not None and rows.ndim == 2 and rows.shape[1] == _COLUMNS and rows.dtype == np.int64:
            return _checked(ShardIndex(url, rows), expected, None)
    with _open_shard(url, path) as f:
        rows = build_index(f, url)
        index = _checked(ShardIndex(url, rows), expected, f)
        _unique_keys(index, f)
    make_dir(cached.parent, "the member-index cache (set SSL_VIT_CACHE_DIR to put it elsewhere)")
    atomic_write(cached, lambda out: np.save(out, rows, allow_pickle=False))
    return index


def build_index(stream, url: str) -> np.ndarray:
    """(N, 4) int64 rows of the tar read from `stream`: every sample's byte range, key hash and holdout number.

    A sample's range runs from the end of the member before its first file to the end of its last file (with
    padding), so archive metadata between samples falls inside the next sample's range, where reading skips it."""
    counted = _Counting(stream)
    rows: list[tuple[int, int, int, int]] = []
    key: str | None = None
    start = end = 0  # the current sample's range so far

    def close(key: str) -> None:
        rows.append((start, end, key_hash(key), _as_int64(holdout_number(key))))

    try:
        for name, _ in iter_members(counted, max_member=0):  # data seeked (or read) past, never kept
            match = _KEY_EXT.match(name)
            member_key = None if match is None or _META.match(name) else match.group(1)
            if member_key is not None and member_key != key:
                if key is not None:
                    close(key)
                key, start = member_key, end
            end = counted.offset  # iter_members has read this member's data and padding
        if key is not None:
            close(key)
    except (TarError, OSError) as exc:  # unreadable, as a sequential read finds it (data.shard_errors decides)
        raise ShardUnreadable(f"shard {url} is unreadable after {len(rows)} samples ({type(exc).__name__}: {exc}); "
                              f"{REBUILD}") from None
    return np.asarray(rows, dtype=np.int64).reshape(-1, _COLUMNS)  # (N, 4)


def read_sample(file, index: ShardIndex, i: int, url: str, max_member: int | None = None) -> dict:
    """Sample `i` of the shard open as `file` (a binary file with a descriptor), read at its byte range and parsed
    with the tar checks; its key must be the index's, or the index is stale (DataError naming the shard). A file
    above `max_member` bytes is read past, never into memory: it stands in the sample as an `OversizeMember`."""
    start, end = int(index.starts[i]), int(index.ends[i])
    if max_member is not None and end - start > max_member + _SMALL_SAMPLE:
        reader = _RangeReader(file.fileno(), start, end)  # header by header: an oversize file is skipped in pieces
    else:
        data = os.pread(file.fileno(), end - start, start)
        if len(data) != end - start:
            raise DataError(f"shard {url} ends at byte {start + len(data)}, inside sample {i} (bytes {start}..{end}): "
                            f"it was truncated or replaced after it was indexed; {REBUILD}")
        reader = io.BytesIO(data + _END_OF_ARCHIVE)
    try:
        samples = list(group_samples(iter_members(reader, max_member), url))
    except TarError as exc:
        raise DataError(f"sample {i} of shard {url} (bytes {start}..{end}) is not a tar member any more "
                        f"({exc}): the shard changed after it was indexed; {REBUILD}") from None
    except ValueError as exc:  # group_samples: a sample with two files of one kind
        raise DataError(f"sample {i} of shard {url}: {exc}; {REBUILD}") from None
    if len(samples) != 1 or key_hash(samples[0]["__key__"]) != int(index.key_hashes[i]):
        found = ", ".join(repr(s["__key__"]) for s in samples) or "nothing"
        raise DataError(f"sample {i} of shard {url} holds {found}, not the key its index recorded: the shard changed "
                        f"after it was indexed; {REBUILD}")
    return samples[0]


def _checked(index: ShardIndex, expected: int | None, file) -> ShardIndex:
    """The shard holds as many samples as `_info.json` says (the first extra one named, when `file` is open)."""
    if expected is not None and len(index) > expected and file is not None:
        extra = read_sample(file, index, expected, index.url)["__key__"]
        raise DataError(f"shard {index.url} holds more than the {expected} samples _info.json says (the first extra "
                        f"is {extra!r}); it is stale or was replaced: {REBUILD}")
    if expected is not None and len(index) != expected:
        raise DataError(f"shard {index.url} holds {len(index)} samples but _info.json says {expected}; it is "
                        f"truncated or stale: {REBUILD}")
    return index


def _unique_keys(index: ShardIndex, file) -> None:
    """No key twice in one shard (across shards: the trainer's key ledger, `split_keys.py`). Equal hashes are read
    back, so only a real repeat is an error."""
    hashes = np.asarray(index.key_hashes)
    order = np.argsort(hashes, kind="stable")
    for i in np.flatnonzero(hashes[order][1:] == hashes[order][:-1]):
        first, second = int(order[i]), int(order[i + 1])
        key_a, key_b = (read_sample(file, index, n, index.url)["__key__"] for n in (first, second))
        if key_a == key_b:
            raise DataError(f"sample key {key_a!r} of shard {index.url} was already read from shard {index.url} "
                            f"(samples {first} and {second}): every sample of a split must occur once; {REBUILD}")


def _open_shard(url: str, path: str | os.PathLike):
    """The shard file for indexing; a gzip shard is refused (no random access into a compressed stream)."""
    from data_tools.shard_files import open_shard_file

    try:
        f = open_shard_file(path)
    except OSError as exc:
        raise DataError(f"cannot open shard {url}: {exc}; check the path in the data spec") from None
    if f.read(2) == b"\x1f\x8b":
        f.close()
        raise DataError(f"shard {url} is gzip-compressed: the train stream reads samples at their offsets, which a "
                        f"compressed shard does not allow; unpack it (`gunzip -c {path} > {Path(path).stem}`) and "
                        "point the data spec at the .tar")
    f.seek(0)
    return f


class _RangeReader:
    """Bytes `start..end` of a file descriptor read in order, then the end-of-archive marker (a sample's tar)."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.at, self.end = fd, start, end
        self.tail = _END_OF_ARCHIVE

    def read(self, n: int = -1) -> bytes:
        if self.at < self.end:
            data = os.pread(self.fd, min(n, self.end - self.at), self.at)
            self.at += len(data)
            if not data:  # the file is shorter than its index says: the tar reader reports the truncation
                self.at = self.end
                self.tail = b""
            return data
        data, self.tail = self.tail[:n], self.tail[n:]
        return data


class _Counting:
    """A reader that counts the bytes taken from it (the offset of the next byte)."""

    def __init__(self, stream) -> None:
        self.stream, self.offset = stream, 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.offset += len(data)
        return data

    def seekable(self) -> bool:
        """A local file: the files' data are seeked past, not read (only the headers are)."""
        seekable = getattr(self.stream, "seekable", None)
        return bool(callable(seekable) and seekable())

    def seek(self, n: int, whence: int) -> None:
        assert whence == 1  # relative: past a member's data
        self.stream.seek(n, 1)
        self.offset += n


def _as_int64(value: int) -> int:
    """An unsigned 64-bit number stored in an int64 column (its bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value
