"""Tiny WebDataset shards in the documented format (docs/architecture.md), written with webdataset.TarWriter.

Independent of data_tools on purpose: the data tests must not depend on the shard builder they read from.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image

# Class k's solid colour: far apart, so a JPEG-compressed crop still says which class it came from.
PALETTE = [(230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 30), (200, 40, 220), (20, 20, 20)]


@dataclass(frozen=True)
class Sample:
    key: str
    data: bytes
    label: int = -1
    ext: str = "jpg"
    size: tuple[int, int] = (0, 0)


def encode(img: Image.Image, ext: str = "jpg", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    img.save(buf, format=fmt, **({"quality": quality} if fmt != "PNG" else {}))
    return buf.getvalue()


def solid_samples(
    num_classes: int = 3, per_class: int = 10, size: tuple[int, int] = (40, 32), ext: str = "jpg"
) -> list[Sample]:
    """Class k's images are PALETTE[k]; samples are interleaved by class (c0, c1, c2, c0, ...)."""
    return [
        Sample(f"c{k}_{i:04d}", encode(Image.new("RGB", size, PALETTE[k]), ext), k, ext, size)
        for i in range(per_class)
        for k in range(num_classes)
    ]


def unique_samples(n: int, size: tuple[int, int] = (36, 28)) -> list[Sample]:
    """Sample i carries label i, so a label identifies the sample even in the (keyless) train batches."""
    return [
        Sample(f"s{i:05d}", encode(Image.new("RGB", size, PALETTE[i % len(PALETTE)])), i, "jpg", size) for i in range(n)
    ]


def write_shards(
    out: Path,
    samples: list[Sample],
    *,
    split: str = "train",
    shard_size: int = 10,
    class_names: list[str] | None = None,
) -> list[Path]:
    """Write `out/{split}-%06d.tar` and add the split to `out/_info.json`; returns the shard paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths, lengths = [], []
    for start in range(0, len(samples), shard_size):
        path = out / f"{split}-{len(paths):06d}.tar"
        chunk = samples[start : start + shard_size]
        with wds.TarWriter(str(path)) as sink:
            for s in chunk:
                meta = {"path": f"{s.key}.{s.ext}", "class": None, "width": s.size[0], "height": s.size[1]}
                cls, meta_bytes = str(s.label).encode(), json.dumps(meta).encode()
                sink.write({"__key__": s.key, s.ext: s.data, "cls": cls, "json": meta_bytes})
        paths.append(path)
        lengths.append(len(chunk))
    info_path = out / "_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"splits": {}}
    info["splits"][split] = {
        "name": split,
        "num_samples": len(samples),
        "filenames": [p.name for p in paths],
        "shard_lengths": lengths,
        "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
        "bytes": [p.stat().st_size for p in paths],
        "class_names": class_names,
        "num_classes": len(class_names) if class_names else None,
    }
    info_path.write_text(json.dumps(info, indent=1))
    return paths
