"""Hostile inputs the data tests build themselves: damaged JPEG scans, decompression bombs, damaged PNG data.

Each builder also states why it is hostile (e.g. Pillow decodes the damaged JPEG without a word), and the
tests assert that premise, so a Pillow or libjpeg-turbo upgrade that changes it is noticed.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(width: int = 128, height: int = 96, seed: int = 0) -> Image.Image:
    """Noise on a gradient: a JPEG of it has a long entropy-coded scan to damage."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)  # (H, W, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scan(data: bytes) -> tuple[int, int]:
    """(first, end) byte offsets of the entropy-coded data of a single-scan JPEG (end = before FFD9)."""
    sos = data.index(b"\xff\xda")
    first = sos + 2 + ((data[sos + 2] << 8) | data[sos + 3])
    assert data.endswith(b"\xff\xd9")
    return first, len(data) - 2


def damaged_scan_jpeg(seed: int = 0, kind: str = "garbage") -> bytes:
    """A JPEG whose compressed scan is damaged, but whose headers and end marker are intact.

    kind="garbage": 64 bytes a third into the scan are overwritten with random non-0xFF bytes (a disk or
    transfer error; no marker is created, so only the Huffman decoding can notice).
    kind="cut": the scan stops half-way and the end-of-image marker follows at once (a truncated download
    that a tool "repaired" by appending FFD9).
    Pillow decodes both without an error (grey fill); strict libjpeg-turbo refuses both.
    """
    data = bytearray(jpeg_bytes(photo(seed=seed)))
    first, end = _scan(bytes(data))
    if kind == "cut":
        return bytes(data[: first + (end - first) // 2]) + b"\xff\xd9"
    pos = first + (end - first) // 3
    data[pos:pos + 64] = np.random.default_rng(seed).integers(0, 0xFF, 64).astype(np.uint8).tobytes()
    return bytes(data)


def pillow_accepts(data: bytes) -> bool:
    """Does plain Pillow (LOAD_TRUNCATED_IMAGES off) decode `data` without raising?"""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001
        return False


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = 12_000, height: int = 12_000) -> bytes:
    """A valid 8-bit greyscale PNG of width × height black pixels (144 Mpx by default) that compresses to a few
    hundred kB: rows of zeros deflate ~1000:1. Built chunk by chunk, without ever holding the pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    rows = bytes(1 + width) * 1000  # 1000 rows of (filter byte 0, black pixels)
    packer = zlib.compressobj(1)
    idat = b"".join(packer.compress(rows[: (1 + width) * min(1000, height - y)]) for y in range(0, height, 1000))
    idat += packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_without_iend(img: Image.Image) -> bytes:
    """A PNG cut just before its IEND chunk: every pixel is there, so Pillow loads it; the file is truncated."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()[:-12]  # IEND is 12 bytes: length, type, no data, CRC
