"""Whether a resume reads the data its checkpoint was trained on: shards compared by identity, not spelling.

    recorded = shard_records(resolve_spec(spec, split))     # kept in every checkpoint (its meta's `data`)
    data_difference(recorded, shard_records(...))            # None when the data is the same, else one clause

A relative path, a trailing slash, a symlinked mount, `DIR` with `data.split` or `DIR:split` all name the same
shards and so have the same identity; shards rebuilt in place under the same names do not. Each shard is known by
- its sha256 from `_info.json` (data_tools records every shard's), with its size when it is a local file: a
  rebuilt shard has another sum. The sums are the index's word: a shard replaced behind its index's back is
  caught by its size (and, when read, by its sample count);
- else, for a local file, its size and modification time (nanoseconds), what `rsync` and `make` trust: a copy that
  keeps times (`cp -p`, `rsync -a`) is the same data, one that does not counts as changed;
- else (a remote URL or a `pipe:` command without an index) its URL as written: nothing cheaper can be known.
Names never count (the same files under another path are the same data); the order of the shards does.

`identity.py` keys reused results by content too, and hashes the bytes of shards without sums (once, for a cache or
a study arm). A resume cannot afford that: it happens at every preemption of a week-long run, on data of any size,
so without sums it trusts sizes and times, and says so when they differ.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .spec import ShardSet

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
KEYS = ("sha256", "size", "mtime_ns", "url")  # what identifies a shard, strongest first


def shard_records(shards: ShardSet) -> list[dict]:
    """One record per shard, in order: `{"name", "sha256"?, "size"?, "mtime_ns"?, "url"?}` (plain data, for a checkpoint)."""
    records = []
    for i, url in enumerate(shards.urls):
        record: dict = {"name": url}
        stat = _stat(url)
        if shards.sha256 is not None:
            record["sha256"] = shards.sha256[i]
            if stat is not None:
                record["size"] = stat.st_size
        elif stat is not None:
            record.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        else:
            record["url"] = url
        records.append(record)
    return records


def data_difference(old: object, new: object) -> str | None:
    """None when `new` is the data `old` recorded; else a clause naming the first shard that differs."""
    if not isinstance(old, list) or not isinstance(new, list):
        return None  # nothing recorded to compare with
    if len(old) != len(new):
        return f"the data has {len(new)} shards now, and had {len(old)} when the checkpoint was written"
    for a, b in zip(old, new):
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
        common = [k for k in KEYS if k in a and k in b]
        if "sha256" in common:
            common = [k for k in common if k in ("sha256", "size")]  # a sum decides; times differ across copies
        changed = [k for k in common if a[k] != b[k]]
        if not common:
            return (f"shard {b['name']} cannot be shown to be {a['name']}, which the checkpoint was trained on (one "
                    f"is known by {_known_by(a)}, the other by {_known_by(b)})")
        if changed:
            return f"shard {b['name']} changed since the checkpoint was written ({_changes(a, b, changed)})"
    return None


def _stat(url: str) -> os.stat_result | None:
    if url.startswith("file:"):
        url = re.sub(r"^file://?", "/", url)
    elif _SCHEME.match(url):
        return None
    try:
        return os.stat(Path(url))
    except OSError:
        return None


def _known_by(record: dict) -> str:
    return " and ".join(k for k in KEYS if k in record) or "nothing"


def _changes(a: dict, b: dict, keys: list[str]) -> str:
    parts = []
    for key in keys:
        if key == "sha256":
            parts.append(f"its sha256 in _info.json is {b[key][:12]}… now, was {a[key][:12]}…: rebuilt in place?")
        elif key == "size":
            parts.append(f"{b[key]} bytes now, {a[key]} then")
        elif key == "mtime_ns":
            parts.append(f"modified {_when(b[key])}, was {_when(a[key])}; without sha256 sums in an _info.json the "
                         "size and modification time decide")
        else:
            parts.append(f"now {b[key]}, was {a[key]}")
    return "; ".join(parts)


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))
