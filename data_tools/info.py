"""`OUT/_info.json`: the per-split shard index that `ssl_vit.data` and timm's WebDataset reader consume.

Layout (docs/architecture.md): `{"splits": {NAME: {"name", "num_samples", "filenames", "shard_lengths",
"sha256", "bytes", "class_names", "num_classes"}}}`. Several splits share one file, so it is updated
read-modify-write under an advisory lock and replaced atomically: building `test` never disturbs `train`.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from .errors import DataToolsError
from .jsonfile import write_json_atomic

INFO_NAME = "_info.json"
SPLIT_KEYS = ("name", "num_samples", "filenames", "shard_lengths", "sha256", "bytes", "class_names", "num_classes")

try:  # POSIX; elsewhere concurrent builds into one OUT are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def split_entry(name: str, filenames: list[str], shard_lengths: list[int], sha256: list[str],
                sizes: list[int], class_names: list[str]) -> dict:
    return {
        "name": name,
        "num_samples": sum(shard_lengths),
        "filenames": filenames,
        "shard_lengths": shard_lengths,
        "sha256": sha256,
        "bytes": sizes,
        "class_names": class_names,
        "num_classes": len(class_names),
    }


def read_info(out: Path) -> dict:
    """The parsed file, `{"splits": {}}` when absent; a `DataToolsError` naming the file when malformed."""
    path = out / INFO_NAME
    if not path.exists():
        return {"splits": {}}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataToolsError(f"{path} is not valid JSON ({err}); fix it or delete it and rebuild") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits", {}), dict):
        raise DataToolsError(f"{path} has no 'splits' mapping; fix it or delete it and rebuild")
    info.setdefault("splits", {})
    return info


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(out / ".info.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def set_split(out: Path, entry: dict) -> None:
    with _locked(out):
        info = read_info(out)
        info["splits"][entry["name"]] = entry
        write_json_atomic(out / INFO_NAME, info)


def remove_split(out: Path, name: str) -> None:
    with _locked(out):
        info = read_info(out)
        if info["splits"].pop(name, None) is not None:
            write_json_atomic(out / INFO_NAME, info)
