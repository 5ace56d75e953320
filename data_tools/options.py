"""Build options: validation, size parsing, and the record that decides whether a build can resume.

Every option that changes a single output byte is a field of `BuildOptions`; `--workers` and progress
bars are not (they must not change the output), so they stay out of the record a resume compares.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import DataToolsError

LABEL_MODES = ("folder", "none")
CHECK_MODES = ("full", "header")
# Split names become file names (`NAME-000000.tar`) and keys of _info.json: no dots, slashes or spaces.
_SPLIT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str | int) -> int:
    """`256MB` → 256_000_000, `1GiB` → 2**30, `5000` → 5000 (K/M/G/T are decimal, KiB/MiB/... binary)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise DataToolsError(f"--shard-size {text!r} is not a size; write e.g. 256MB, 1GB, 512MiB or 100000")
    number, prefix, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** _POWERS[prefix.lower()])


@dataclass(frozen=True)
class BuildOptions:
    """What a build writes is a pure function of these fields and the input files."""

    split: str
    source: str = "folder"  # "folder" (a walked tree), "list" (a CSV/TSV file list), "parquet" or "datasets"
    labels: str = "folder"
    seed: int = 0
    shard_size: int = 256_000_000
    max_count: int | None = None
    resize_shorter: int | None = None
    quality: int = 95
    check: str = "header"
    follow_symlinks: bool = False
    max_pixels: int | None = None  # width × height cap; None: Pillow's decompression-bomb limit
    image_column: str | None = None  # a table's image / label column as named by the user (None: found)
    label_column: str | None = None

    def validate(self) -> None:
        if not _SPLIT_RE.fullmatch(self.split):
            raise DataToolsError(
                f"--split {self.split!r} is not a valid split name; use letters, digits, '_' and '-' (e.g. train)")
        if self.labels not in LABEL_MODES:
            raise DataToolsError(f"--labels {self.labels!r} is not one of {', '.join(LABEL_MODES)}")
        if self.check not in CHECK_MODES:
            raise DataToolsError(f"--check {self.check!r} is not one of {', '.join(CHECK_MODES)}")
        if self.shard_size <= 0:
            raise DataToolsError(f"--shard-size must be positive, got {self.shard_size}")
        if self.max_count is not None and self.max_count <= 0:
            raise DataToolsError(f"--max-count must be a positive number of samples, got {self.max_count}")
        if self.resize_shorter is not None and self.resize_shorter <= 0:
            raise DataToolsError(f"--resize-shorter must be a positive number of pixels, got {self.resize_shorter}")
        if (self.image_column is not None or self.label_column is not None) and self.source in ("folder", "list"):
            raise DataToolsError("--image-column and --label-column name the columns of a table (parquet, or a "
                                 f"datasets save_to_disk folder); SRC is {'an image folder' if self.source == 'folder' else 'a file list'}")
        if self.label_column is not None and self.labels == "none":
            raise DataToolsError("--label-column names the labels to use, --labels none says to use none: drop one")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise DataToolsError(f"--max-pixels must be a positive number of pixels, got {self.max_pixels}")
        if not 1 <= self.quality <= 100:
            raise DataToolsError(f"--quality must be between 1 and 100, got {self.quality}")

    def record(self) -> dict:
        """The JSON-able form stored in the progress record and compared on resume. A newer option left at
        its default is left out, so a build started by an earlier version still resumes."""
        record = dataclasses.asdict(self)
        for newer in ("max_pixels", "image_column", "label_column"):
            if record[newer] is None:
                del record[newer]
        return record


def describe_differences(old: dict, new: dict) -> str:
    """`seed: 0 → 1, max_count: None → 2`: what changed between an interrupted build and this one."""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))
