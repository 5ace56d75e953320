"""One input file → one WebDataset sample (`__key__`, image, `cls`, `json`), or the reason it is skipped.

This is the unit of work the worker processes run; it reads the file itself so only the finished bytes
cross the process boundary.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .images import BadImage, prepare_image
from .options import BuildOptions
from .sources import Source


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


def make_sample(source: Source, opts: BuildOptions) -> Sample | Skipped:
    try:
        with open(source.path, "rb") as f:
            data = f.read()
    except OSError as err:
        return Skipped(source.rel, f"cannot read: {err.strerror or err}", 0)
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


def make_samples(sources: list[Source], opts: BuildOptions) -> list[Sample | Skipped]:
    """A batch, so that one inter-process round trip carries many small files."""
    return [make_sample(s, opts) for s in sources]
