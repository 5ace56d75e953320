"""`OUT/.NAME.progress.json`: what an interrupted build had finished, so the same command can resume.

Written (atomically) after every shard. It holds the options and an input digest — a resume with
anything different is refused —, the class list the labels index, and, per finished shard, its sha256,
size, sample count and how far into the shuffled input order it reached. A resume keeps the longest prefix of recorded shards whose files are
still intact and carries on from the input after the last one; since shard boundaries are a pure function
of the inputs and options, the result is byte-identical to an uninterrupted build.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataToolsError
from .jsonfile import write_json_atomic


@dataclass
class ShardRecord:
    filename: str
    sha256: str
    bytes: int
    count: int
    next_input: int  # index (in the shuffled order) of the first input not in this or an earlier shard


@dataclass
class Progress:
    options: dict
    inputs: str  # digest of the input listing (paths, labels, sizes, mtimes)
    shards: list[ShardRecord] = field(default_factory=list)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (input index, rel path, reason)
    complete: bool = False
    # The class list the shards are labelled with; None in records of versions that did not keep it.
    class_names: list[str] | None = None


def progress_path(out: Path, split: str) -> Path:
    return out / f".{split}.progress.json"


def load_progress(out: Path, split: str) -> Progress | None:
    path = progress_path(out, split)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Progress(
            options=raw["options"], inputs=raw["inputs"],
            shards=[ShardRecord(**s) for s in raw["shards"]],
            skipped=[(int(i), str(rel), str(reason)) for i, rel, reason in raw["skipped"]],
            complete=bool(raw["complete"]),
            class_names=[str(n) for n in raw["class_names"]] if raw.get("class_names") is not None else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataToolsError(f"{path} is unreadable ({err}); rerun with --overwrite to rebuild split {split}") from None


def save_progress(out: Path, split: str, progress: Progress) -> None:
    write_json_atomic(progress_path(out, split), dataclasses.asdict(progress))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def intact_prefix(out: Path, shards: list[ShardRecord], *, hash_files: bool) -> int:
    """How many leading recorded shards still exist with their recorded size (and sha256 if `hash_files`)."""
    for i, shard in enumerate(shards):
        path = out / shard.filename
        if not path.is_file() or path.stat().st_size != shard.bytes:
            return i
        if hash_files and file_sha256(path) != shard.sha256:
            return i
    return len(shards)
