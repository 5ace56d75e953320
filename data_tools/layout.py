"""The files one split owns in OUT, by name: shards, partial shards, the skipped list.

Kept in one place so that resuming, --overwrite and the checks for a foreign split agree on what
belongs to split NAME (`train-000000.tar` is train's; `train-extra-000000.tar` is not).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from .files import atomic_write
from .info import INFO_NAME, remove_split
from .progress import progress_path


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def skipped_path(out: Path, split: str) -> Path:
    return out / f"{split}_skipped.tsv"


def write_skipped(out: Path, split: str, rows: list[tuple[str, str]]) -> None:
    """`NAME_skipped.tsv`: a `path<TAB>reason` header, then one row per skipped input, sorted by path."""
    table = io.StringIO(newline="")
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(rows))
    atomic_write(skipped_path(out, split), table.getvalue())


def split_files(out: Path, split: str) -> list[Path]:
    """This split's shards and partial shards (`train-000000.tar[.tmp]`, not `train-extra-000000.tar`)."""
    pattern = re.compile(re.escape(split) + r"-(\d{6,})\.tar(\.tmp)?")
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def remove_stale(out: Path, split: str, keep: int) -> None:
    """Delete partial shards and any shard past the kept prefix (it will be written again)."""
    for path in split_files(out, split):
        if path.name.endswith(".tmp") or int(path.name[len(split) + 1:].split(".")[0]) >= keep:
            path.unlink()


def clear_split(out: Path, split: str) -> None:
    """--overwrite: forget everything of this split (other splits in OUT are untouched)."""
    for path in split_files(out, split):
        path.unlink()
    progress_path(out, split).unlink(missing_ok=True)
    skipped_path(out, split).unlink(missing_ok=True)
    if (out / INFO_NAME).exists():
        remove_split(out, split)
