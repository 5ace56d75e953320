"""What a computed number came from, by content: the shards' bytes and the code's version, never their names.

Everything reused from an earlier command — a study's or the demo's finished arm, cached features — is reused
only when its key matches this command's: the same resolved recipe, the same data and the same code. Names are
not evidence: shards rebuilt in place keep their names (often their sizes and dates too), and one folder spelled
two ways (a relative path, a trailing slash, a symlinked mount) is one data set. So the data enter a key as

- each shard's sha256 from `_info.json` (written by `ssl-vit-shards build`: free to read, and a rebuild rewrites
  it), with a local file's size (a shard replaced behind its index's back mostly has another), else
- a local file's own bytes, hashed (once per process and file version: a rewrite changes its ctime, which no
  tool can set back), else
- a remote or `pipe:` URL (or anything but a regular file, which reading would block on) as spelled, whose
  content cannot be known without reading it all;

plus what `_info.json` says about them (counts, class names). `content_key` hashes such a record; records that
hold numbers add `code_version()`, so a new release recomputes instead of mixing its numbers with an older one's.

A resume asks the same question more cheaply (`shard_records` without `hash_bytes`, recorded in every checkpoint,
and `data_difference`): it happens at every preemption of a week-long run, on data of any size, so a local file
without sums is known by its size and modification time (nanoseconds), what `rsync` and `make` trust — a copy
that keeps times (`cp -p`, `rsync -a`) is the same data, one that does not counts as changed, and says so.
Names never count there either; the order of the shards does.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from importlib import metadata
from pathlib import Path
from stat import S_ISREG
from typing import Any, Mapping

from .spec import ShardSet

_HASHED: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) → sha256 of its bytes
_ABSENT = "(unset)"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_KEYS = ("sha256", "size", "mtime_ns", "url")  # what identifies a shard in a record, strongest first


def shard_records(shards: ShardSet, *, hash_bytes: bool = False) -> list[dict]:
    """One record per shard, in order (plain data, for a checkpoint or a key): `{"name", "sha256"?, "size"?,
    "mtime_ns"?, "url"?}`. The sha256 is `_info.json`'s, else (`hash_bytes`) a local regular file's own bytes';
    without either, a local file is known by its size and modification time, anything else by its URL."""
    records = []
    for i, url in enumerate(shards.urls):
        record: dict = {"name": url}
        stat = _stat(url)
        if shards.sha256 is not None:
            record["sha256"] = shards.sha256[i]
            if stat is not None:
                record["size"] = stat.st_size
        elif stat is not None and hash_bytes and S_ISREG(stat.st_mode):
            record.update(sha256=_bytes_sha256(url, stat), size=stat.st_size)
        elif stat is not None and not hash_bytes:
            record.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        else:  # remote, pipe:, missing, or a FIFO/device that reading would block on (the stream refuses it by name)
            record["url"] = url
        records.append(record)
    return records


def shard_identity(shards: ShardSet) -> list[str]:
    """One string per shard for a content key, `NAME sha256:HEX SIZEB` or `url:URL` (the file's name, never its
    folder's spelling), that changes whenever its content does."""
    out = []
    for record in shard_records(shards, hash_bytes=True):
        if "sha256" not in record:
            out.append(f"url:{record['url']}")
        else:
            size = f" {record['size']}B" if "size" in record else ""
            out.append(f"{_name(record['name'])} sha256:{record['sha256']}{size}")
    return out


def data_difference(old: object, new: object) -> str | None:
    """None when `new` (`shard_records`) is the data `old` recorded; else a clause naming the first shard that
    differs. Nothing recorded (a checkpoint from before shards were recorded): None."""
    if not isinstance(old, list) or not isinstance(new, list):
        return None
    if len(old) != len(new):
        return f"the data has {len(new)} shards now, and had {len(old)} when the checkpoint was written"
    for a, b in zip(old, new):
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
        common = [k for k in _KEYS if k in a and k in b]
        if "sha256" in common:
            common = [k for k in common if k in ("sha256", "size")]  # a sum decides; times differ across copies
        changed = [k for k in common if a[k] != b[k]]
        if not common:
            return (f"shard {b['name']} cannot be shown to be {a['name']}, which the checkpoint was trained on (one "
                    f"is known by {_known_by(a)}, the other by {_known_by(b)})")
        if changed:
            return f"shard {b['name']} changed since the checkpoint was written ({_changes(a, b, changed)})"
    return None


def data_identity(shards: ShardSet) -> dict[str, Any]:
    """The data as a key sees it: the shards' contents, in order, with `_info.json`'s counts and class names."""
    return {"shards": shard_identity(shards), "num_samples": shards.num_samples,
            "shard_lengths": list(shards.shard_lengths) if shards.shard_lengths is not None else None,
            "class_names": list(shards.class_names) if shards.class_names is not None else None}


def code_version() -> dict[str, str]:
    """The versions whose change may change a number: this package (as installed) and torch."""
    import torch

    try:
        ours = metadata.version("ssl_vit")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        ours = "not installed"
    return {"ssl_vit": ours, "torch": torch.__version__}


def canonical(material: Mapping[str, Any]) -> dict[str, Any]:
    """`material` as it reads back from JSON (tuples become lists, keys strings), so a recorded copy compares
    equal to a fresh one."""
    return json.loads(json.dumps(material, sort_keys=True, default=str))


def content_key(material: Mapping[str, Any], length: int = 20) -> str:
    """A short stable hash of `material` (JSON-serialisable: the resolved recipe, `data_identity`s, …)."""
    blob = json.dumps(canonical(material), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> list[str]:
    """The dotted keys whose values differ between two records, with both values shortened: `key: old → new`
    (a list of shards item by item, so the changed shard is named)."""
    flat_old, flat_new = _flatten(canonical(old)), _flatten(canonical(new))
    keys = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k, _ABSENT) != flat_new.get(k, _ABSENT))
    shown = [f"{k}: {_short(flat_old.get(k, _ABSENT))} → {_short(flat_new.get(k, _ABSENT))}" for k in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and prefix.endswith("shards"):  # name the shard that changed
        return {f"{prefix}[{i}]": v for i, v in enumerate(value)}
    return {prefix: value}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _stat(url: str) -> os.stat_result | None:
    """A local shard's stat (`file:` URLs too); None for a remote or `pipe:` URL, or a missing file."""
    if url.startswith("file:"):
        url = re.sub(r"^file://?", "/", url)
    elif _SCHEME.match(url):
        return None
    try:
        return os.stat(Path(url))
    except OSError:
        return None


def _bytes_sha256(url: str, stat: os.stat_result) -> str:
    """A local file's sha256, read once per process and version of the file (a rewrite changes its ctime, which no
    tool can set back)."""
    path = Path(re.sub(r"^file://?", "/", url) if url.startswith("file:") else url)
    version = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if version not in _HASHED:
        with open(path, "rb") as f:
            _HASHED[version] = hashlib.file_digest(f, "sha256").hexdigest()
    return _HASHED[version]


def _known_by(record: dict) -> str:
    return " and ".join(k for k in _KEYS if k in record) or "nothing"


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


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]
