"""On-disk feature cache: extract once per (checkpoint, data, split, preprocessing, pool, layers).

Feature extraction is the expensive part of every feature-based protocol; the solvers after it take
seconds. The cache key hashes everything that changes the features, so a stale file is never reused, and
the files are plain `torch.save` dicts of tensors and strings (loadable with `weights_only=True`).
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

CACHE_VERSION = 1  # bump when the extraction itself changes meaning


def cache_key(**fields) -> str:
    """A short stable hash of the JSON-serialisable fields that determine the features."""
    blob = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


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
