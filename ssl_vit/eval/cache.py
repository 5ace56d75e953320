"""On-disk feature cache: extract once per (backbone weights, shard contents, preprocessing, pool, layers, code).

Feature extraction is the expensive part of every feature-based protocol; the solvers after it take
seconds. The cache key hashes everything that changes the features — by content, not by name
(`ssl_vit/data/identity.py`): the shards' sha256 sums from `_info.json` (a URL list's local files by their
bytes), the backbone weights' hash, the preprocessing, and the code's version — so shards rebuilt under the
same names, weights rewritten in place, or another release of the extraction are a miss, never a stale hit.
The files are plain `torch.save` dicts of tensors and strings (loadable with `weights_only=True`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_vit.data.identity import code_version, content_key, shard_identity
from ssl_vit.errors import DataError
from ssl_vit.files import atomic_write, make_dir
from ssl_vit.safe_load import load_weights_only

from .features import Features

CACHE_VERSION = 3  # bump when the extraction itself changes meaning (3: the code's version and a URL list's bytes)


def cache_key(**fields) -> str:
    """A short stable hash of the JSON-serialisable fields that determine the features, with the code's version."""
    return content_key({"version": CACHE_VERSION, "code": code_version(), **fields})


def shard_contents(shards) -> list[str]:
    """What each shard holds: its sha256 from `_info.json`, else a local file's bytes hashed, else (a remote URL,
    whose content cannot be known without reading it) the URL (`ssl_vit.data.identity.shard_identity`)."""
    return shard_identity(shards)


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
