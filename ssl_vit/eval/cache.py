"""On-disk feature cache: extract once per (backbone weights, shard contents, preprocessing, pool, layers).

Feature extraction is the expensive part of every feature-based protocol; the solvers after it take
seconds. The cache key hashes everything that changes the features — by content, not by name: the shards'
sha256 sums from `_info.json` (a URL list's local files by size and modification time), the backbone
weights' hash, and the preprocessing — so shards rebuilt under the same names, or weights rewritten in place,
are a miss, never a stale hit. The files are plain `torch.save` dicts of tensors and strings (loadable with
`weights_only=True`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ssl_vit.errors import DataError
from ssl_vit.files import atomic_write, make_dir
from ssl_vit.safe_load import load_weights_only

from .features import Features

CACHE_VERSION = 2  # bump when the extraction itself changes meaning (2: keys by shard and weight contents)


def cache_key(**fields) -> str:
    """A short stable hash of the JSON-serialisable fields that determine the features."""
    blob = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def shard_contents(shards) -> list[str]:
    """What each shard holds, as far as can be known without reading it: its sha256 from `_info.json`, else a
    local file's size and modification time, else (a remote URL, whose content cannot be known) the URL."""
    if shards.sha256 is not None:
        return [f"sha256:{s}" for s in shards.sha256]
    out = []
    for url in shards.urls:
        path = Path(url.removeprefix("file://").removeprefix("file:"))
        try:
            stat = path.stat()
        except OSError:
            out.append(f"url:{url}")
        else:
            out.append(f"stat:{stat.st_size}:{stat.st_mtime_ns}")
    return out


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"features-{key}.pt"


def save_features(path: Path, features: Features, meta: dict) -> None:
    """Write atomically (temp file + rename) so a crashed run never leaves a half file that looks valid."""
    make_dir(path.parent, "feature cache directory")
    blob = {"x": features.x.contiguous(), "labels": features.labels, "keys": list(features.keys), "meta": json.dumps(meta, default=str)}
    atomic_write(path, lambda f: torch.save(blob, f))


def load_features(path: Path) -> Features:
    try:
        blob = load_weights_only(path)
        return Features(blob["x"], blob["labels"], list(blob["keys"]))
    except Exception as exc:  # a truncated or foreign file: say which and how to recover
        raise DataError(f"feature cache {path} is unreadable ({exc}); delete it to extract the features again") from exc
