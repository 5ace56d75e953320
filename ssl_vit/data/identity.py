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
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from stat import S_ISREG
from typing import Any, Mapping

from .spec import ShardSet

_HASHED: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) → sha256 of its bytes
_ABSENT = "(unset)"


def shard_identity(shards: ShardSet) -> list[str]:
    """One string per shard, `NAME sha256:HEX` or `url:URL`, that changes whenever its content does (see the
    module doc for the three kinds)."""
    if shards.sha256 is not None:  # with a local file's size: a shard replaced behind its index's back differs
        return [f"{_name(url)} sha256:{s}{_size(url)}" for url, s in zip(shards.urls, shards.sha256)]
    return [_file_identity(url) for url in shards.urls]


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


def _file_identity(url: str) -> str:
    """A local shard's sha256 (its bytes, read once per version of the file); a URL as spelled otherwise."""
    path = _local(url)
    try:
        stat = path.stat()
    except OSError:  # remote, pipe:, or missing (reading it will say so): its content cannot be known here
        return f"url:{url}"
    if not S_ISREG(stat.st_mode):  # a FIFO or device would block the read; the stream refuses it by name
        return f"url:{url}"
    version = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if version not in _HASHED:
        with open(path, "rb") as f:
            _HASHED[version] = hashlib.file_digest(f, "sha256").hexdigest()
    return f"{path.name} sha256:{_HASHED[version]}"


def _size(url: str) -> str:
    try:
        return f" {os.stat(_local(url)).st_size}B"
    except OSError:
        return ""


def _local(url: str) -> Path:
    return Path(url.removeprefix("file://").removeprefix("file:"))


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]
