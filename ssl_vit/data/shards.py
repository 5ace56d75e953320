"""Read one shard: open its URL (webdataset's openers), walk the tar, group files into samples, check the count.

Decision on broken shards: a shard that cannot be opened, a tar that is truncated or corrupt, a `pipe:`
command that fails, or a shard whose sample count disagrees with `_info.json` stops the stream with a
`DataError` naming the shard. Skipping the rest of a shard would silently change what an epoch holds (and
would break the eval stream's exactly-once promise); shards carry sha256 sums, so a broken one is fixed by
rebuilding or re-downloading it, not trained around. Single bad *samples* are a different matter: they are
skipped and counted downstream (`stages.BadSampleTally`).

Shards may be gzip-compressed (`.tar.gz`, recognised by their first bytes); remote http(s) shards are read
through `remote.HTTPStream`, `hf://`, `gs://` and other fsspec URLs through `remote_fsspec.FsspecStream`: both
retry transient errors, resume from the same object only, and check the shard's sha256 from `_info.json` at its
end (a mismatch is a broken promise, never skipped). Nothing is extracted to disk: a member is (name, bytes) in
memory, and its name only splits into the sample's key and extension. A key is an opaque string, kept as the
archive spells it (a member `../../x.jpg` is sample `../../x`), and nothing in ssl_vit uses a key as a file name.
"""
from __future__ import annotations

import gzip
import re
import shlex
from collections.abc import Iterable, Iterator
from typing import Any

from webdataset.gopen import gopen

from data_tools.shard_files import open_shard_file
from ssl_vit.errors import DataError

from .remote import ChecksumMismatch, HTTPStream, ReadInterrupted, RemoteStream, RetryPolicy, is_http
from .remote_fsspec import BackendMissing, FsspecStream, is_fsspec
from .spec import is_local, local_path
from .tarstream import iter_members

REBUILD = "rebuild it with `ssl-vit-shards` (or re-download it), or drop it from the data spec"


def open_url(url: str, *, sha256: str | None = None, policy: RetryPolicy | None = None) -> Any:
    """A readable byte stream for a shard URL: http(s) through `remote.HTTPStream` and fsspec URLs (`hf://`,
    `gs://`, …) through `remote_fsspec.FsspecStream` (both: retries and limits from `policy`, resumes, check
    `sha256` in `finish()`), s3 through the AWS CLI (webdataset 1.0.2 has no s3 opener), the rest through
    webdataset's openers. A local file is opened only if it is a regular file (`open_shard_file`: a FIFO or a
    device swapped in after the data spec was checked is refused, never read)."""
    if is_local(url):
        return open_shard_file(local_path(url))
    if is_http(url):
        return HTTPStream(url, policy, sha256=sha256)
    if is_fsspec(url):
        return FsspecStream(url, policy, sha256=sha256)
    if url.startswith("s3://"):
        url = f"pipe:aws s3 cp {shlex.quote(url)} -"
    return gopen(url)


class ShardUnreadable(DataError):
    """A shard could not be opened or read to its end (IO, network, tar or pipe errors)."""


def _tar_bytes(stream: Any) -> Any:
    """`stream` itself, or its decompressed bytes when it starts with gzip's magic number (a .tar.gz shard:
    gzip reads forward only, so pipes and HTTP streams work as well as files)."""
    head = stream.read(2)
    rest = _Prefixed(head, stream)
    return gzip.GzipFile(fileobj=rest, mode="rb") if head == b"\x1f\x8b" else rest


class _Prefixed:
    """Bytes already read from a stream, then the rest of the stream."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n is None or n < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data if len(data) == n else data + self.stream.read(n - len(data))


def read_shard(
    url: str, *, stride: int = 1, offset: int = 0, expected: int | None = None, max_member: int | None = None,
    sha256: str | None = None, policy: RetryPolicy | None = None,
) -> Iterator[dict]:
    """Samples (`__key__`, `__url__`, one entry per file extension) of `url` whose index % stride == offset.

    `expected` is the shard's length from `_info.json`: a tar that ends early at a file boundary reads as a
    valid shorter tar, and only the count reveals it. A file above `max_member` bytes is not read into memory:
    its entry is a `tarstream.OversizeMember` (the streams skip and count the sample). `sha256` (from
    `_info.json`) and `policy` (retries and rate limits) apply to http(s) shards.
    """
    try:
        stream = open_url(url, sha256=sha256, policy=policy)
    except (ReadInterrupted, BackendMissing):
        raise
    except Exception as exc:  # noqa: BLE001 - any opener failure means the same thing to the user
        advice = getattr(exc, "advice", None) or "check the path or URL in the data spec"  # a remote error may know
        raise ShardUnreadable(f"cannot open shard {url}: {exc}; {advice}") from None
    count = 0
    closed = False
    try:
        for sample in group_samples(iter_members(_tar_bytes(stream), max_member), url):
            if expected is not None and count == expected:
                raise _Broken(f"shard {url} holds more than the {expected} samples _info.json says (the first extra "
                              f"is {sample['__key__']!r}); it is stale or was replaced: {REBUILD}")
            if count % stride == offset:
                yield sample
            count += 1
        if isinstance(stream, RemoteStream):
            stream.finish()  # to the object's end: its sha256
        closed = True
        stream.close()  # a pipe: URL reports its command's exit status here
    except (_Broken, ChecksumMismatch, ReadInterrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - tar, IO and pipe errors all mean a broken shard
        # A failed command or download (curl's 404) explains its missing or bad bytes better than the tar does.
        cause = exc if closed else _close_error(stream) or exc
        closed = True
        advice = getattr(cause, "advice", None) or REBUILD  # a remote error may know better (a slow link)
        raise ShardUnreadable(f"shard {url} is unreadable after {count} samples ({type(cause).__name__}: {cause}); "
                              f"{advice}") from None
    finally:
        if not closed:
            _close_error(stream)  # abandoned mid-shard: a pipe's command then dies of SIGPIPE, which is no error
    if expected is not None and count != expected:
        raise DataError(
            f"shard {url} holds {count} samples but _info.json says {expected}; it is truncated or stale: {REBUILD}"
        )


class _Broken(DataError):
    """A promise of `_info.json` broken while reading (raised as it is, not as 'unreadable')."""


# webdataset's conventions: the key is the path up to the first dot of the file name, the rest its extension;
# names like __meta__ are archive metadata, not sample files.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


def group_samples(members: Iterable[tuple[str, Any]], url: str) -> Iterator[dict]:
    """Consecutive files with the same key → one sample {"__key__", "__url__", extension: bytes, ...}."""
    current: dict | None = None
    for name, data in members:
        match = _KEY_EXT.match(name)
        if match is None or _META.match(name):
            continue
        key, ext = match.group(1), match.group(2).lower()
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if ext in current:
            raise ValueError(f"sample {key!r} has two {ext!r} files")
        current[ext] = data
    if current is not None:
        yield current


def _close_error(stream: Any) -> Exception | None:
    """Close the stream; the error closing raised (a pipe's command failed), if any."""
    try:
        stream.close()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None
