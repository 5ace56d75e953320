"""Remote shards, fetched whole into a size-bounded cache on the node, so the train stream can read any sample.

The exactly-once order reads samples at their offsets (`member_index.py`); over http(s), s3 or a pipe that would
cost a request per image. So a loader worker that needs a remote shard copies it once, whole, through the same
opener as every read (`shards.open_url`: retries, If-Range, minimum rate, deadline, sha256), into
`cache_dir()/shards/`, and reads the copy. Every loader worker and rank of a node shares the copies:

- A shard whose sha256 `_info.json` gives is stored as `<sha256>.tar`: proven by content (the download checked
  it), so any run on the node reuses it.
- A shard without a sum cannot be proven the same later, so its copy belongs to the process that fetched it
  (`url-<digest of the URL>-<pid>.tar`) and is never reused by another.
- One process fetches a copy while the others wait on its lock (`fcntl.flock`), up to the shard's deadline.
- The cache holds at most `limit` bytes: after a fetch, the least recently used copies that no process has open
  (readers hold a shared lock on the copy while they read it) are deleted, oldest first. A window of shards
  bigger than the limit still works; the copies beyond it are then fetched again later (a warning says so).

Only files this module wrote are ever deleted: names it chose, in the folder it made.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from ssl_vit.errors import DataError

from ..files import atomic_write, make_dir
from .member_index import cache_dir
from .remote import RetryPolicy

_LOCK_POLL_S = 0.05


def copies_dir() -> Path:
    return cache_dir() / "shards"


def copy_name(url: str, sha256: str | None) -> str:
    """The copy's file name: by content when the sum is known, else private to this process."""
    if sha256:
        return f"{sha256.lower()}.tar"
    return f"url-{hashlib.sha256(url.encode()).hexdigest()[:24]}-{os.getpid()}.tar"


def local_copy(url: str, *, sha256: str | None, policy: RetryPolicy, limit: int, opener) -> Path:
    """The path of a complete local copy of `url` (fetched now if the cache has none). `opener(url, sha256=,
    policy=)` opens the remote bytes (`shards.open_url`)."""
    folder = make_dir(copies_dir(), "the remote-shard cache (set SSL_VIT_CACHE_DIR to put it elsewhere)")
    path = folder / copy_name(url, sha256)
    if path.is_file():
        os.utime(path)  # recently used
        _evict(folder, limit, keep=path)  # the bound holds at every use, not only after a fetch
        return path
    deadline = time.monotonic() + (policy.deadline if policy.deadline is not None else 3600.0)
    with open(folder / f".{path.name}.lock", "a+b") as lock:
        _lock(lock, deadline, url)
        if not path.is_file():  # another process may have fetched it while this one waited
            _fetch(url, path, sha256, policy, opener)
    _evict(folder, limit, keep=path)
    return path


def hold(file) -> None:
    """Mark an open copy as in use (a shared lock): eviction passes over it."""
    fcntl.flock(file.fileno(), fcntl.LOCK_SH)


def _lock(lock, deadline: float, url: str) -> None:
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DataError(f"waited past the shard deadline for another process to fetch {url} into "
                                f"{copies_dir()}; is a process stuck? (data.remote_shard_deadline_s)") from None
            time.sleep(_LOCK_POLL_S)


def _fetch(url: str, path: Path, sha256: str | None, policy: RetryPolicy, opener) -> None:
    stream = opener(url, sha256=sha256, policy=policy)
    try:
        def write(out) -> None:
            shutil.copyfileobj(stream, out, 1 << 20)
            finish = getattr(stream, "finish", None)
            if callable(finish):
                finish()  # http(s): to the object's end, where its sha256 is checked
        atomic_write(path, write)
    finally:
        stream.close()


def _evict(folder: Path, limit: int, keep: Path) -> None:
    """Delete the least recently used unheld copies until the cache is within `limit` bytes."""
    copies = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".tar") and not entry.name.startswith("."):
            st = entry.stat()
            copies.append((st.st_mtime, st.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in copies)
    for _, size, path in sorted(copies):
        if total <= limit:
            return
        if path == keep:
            continue
        try:
            with open(path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody reads it
                path.unlink()
                total -= size
        except (BlockingIOError, FileNotFoundError):
            continue
    if total > limit:
        print(f"warning: the remote-shard cache {folder} holds {total / 1e9:.1f} GB in copies being read, above "
              f"data.remote_cache_gb ({limit / 1e9:.1f} GB): raise it to at least one shuffle window of shards",
              file=sys.stderr, flush=True)
