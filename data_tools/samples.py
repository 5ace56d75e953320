"""One input file or table row → one WebDataset sample (`__key__`, image, `cls`, `json`), or why it is skipped.

This is the unit of work the worker processes run; it reads a file itself so only the finished bytes
cross the process boundary (a table row arrives with its bytes: tables are read by blocks, in the main process).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass

from .decoding import max_file_bytes
from .images import BadImage, prepare_image
from .options import BuildOptions
from .sources import Source
from .table_rows import LoadedRow


@dataclass(frozen=True)
class Sample:
    key: str
    members: tuple[tuple[str, bytes], ...]  # (extension, bytes) in tar order: image, cls, json
    read_bytes: int  # size of the source file, for the MB/s figure
    reencoded: str | None


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str
    read_bytes: int


def sample_key(rel: str) -> str:
    """20 hex digits of a hash of the relative path: stable across rebuilds, re-shuffles and re-sharding.

    Hex digits contain no dots, which WebDataset would read as the start of an extension.
    """
    return hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()


def make_sample(source: Source | LoadedRow, opts: BuildOptions) -> Sample | Skipped:
    """A file (`Source`, read here) or a table row (`LoadedRow`, whose bytes the reader sent along)."""
    try:
        if isinstance(source, LoadedRow):
            data = _row_bytes(source, max_file_bytes(opts.max_pixels))
        else:
            data = read_regular_file(source.path, max_file_bytes(opts.max_pixels))
    except OSError as err:
        return Skipped(source.rel, f"cannot read: {err.strerror or err}", 0)
    except BadImage as err:
        return Skipped(source.rel, str(err), 0)
    try:
        image = prepare_image(data, resize_shorter=opts.resize_shorter, quality=opts.quality, check=opts.check,
                              max_pixels=opts.max_pixels)
    except BadImage as err:
        return Skipped(source.rel, str(err), len(data))
    meta = {"path": source.rel, "class": source.class_name, "width": image.width, "height": image.height}
    members = (
        (image.ext, image.data),
        ("cls", str(source.cls).encode("ascii")),
        ("json", json.dumps(meta).encode("utf-8")),
    )
    return Sample(sample_key(source.rel), members, len(data), image.reencoded)


def _row_bytes(row: LoadedRow, limit: int) -> bytes:
    """The same bounds as for a file: no bytes, or more than any image within the pixel cap, is a skip."""
    if row.data is None:
        raise BadImage(row.missing)
    if len(row.data) > limit:
        raise BadImage(f"{len(row.data):,} bytes: larger than any image within the pixel cap ({limit:,} bytes)")
    return row.data


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of `path`, which must still be a regular file of at most `limit` bytes when opened.

    The listing refused special files, but a path can change between listing and reading: O_NONBLOCK keeps
    the open of a FIFO swapped in from blocking for ever, fstat checks what was really opened, and the read
    stops one byte past the limit (files such as /proc's report size 0 but have content).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not a regular file (it changed since it was listed)")
        if info.st_size > limit:
            raise BadImage(f"{info.st_size:,} bytes: larger than any image within the pixel cap ({limit:,} bytes)")
        # read() allocates what it is asked for: ask for the size (+1 to see the end), then small pieces
        chunks, total, want = [], 0, info.st_size + 1 if info.st_size else 1 << 16
        while chunk := f.read(min(want, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BadImage(f"more than {limit:,} bytes: larger than any image within the pixel cap")
            want = 1 << 20
    return b"".join(chunks)


def make_samples(sources: list[Source | LoadedRow], opts: BuildOptions) -> list[Sample | Skipped]:
    """A batch, so that one inter-process round trip carries many small files."""
    return [make_sample(s, opts) for s in sources]
