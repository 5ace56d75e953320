"""Tiny generated image folders for the tests: mixed formats and modes, reproducible from a seed."""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

# (extension, PIL format, mode): what real folders hold, including files that must be re-encoded.
VARIANTS = [
    ("jpg", "JPEG", "RGB"),
    ("png", "PNG", "RGB"),
    ("webp", "WEBP", "RGB"),
    ("png", "PNG", "RGBA"),
    ("png", "PNG", "L"),
    ("jpg", "JPEG", "CMYK"),
    ("bmp", "BMP", "RGB"),
    ("png", "PNG", "P"),
]


def image_bytes(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    """`img` encoded in a PIL format (`kw`: its save options, e.g. quality, subsampling, progressive)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid_image(color: tuple[int, int, int], size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, color)
    return img.convert(mode) if mode != "RGB" else img


def noise_image(rng: random.Random, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A random-pixel RGB image (random bytes, so every file differs)."""
    return Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 6,
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
    mixed: bool = True,
) -> list[Path]:
    """Write `root/<class>/<i>.<ext>` images; class k gets a distinct dominant colour plus noise.

    With `mixed`, files cycle through VARIANTS (jpg/png/webp/bmp; RGB, RGBA, L, CMYK, P); otherwise all
    are RGB JPEGs. Returns the written paths in sorted order.
    """
    rng = random.Random(seed)
    paths = []
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, fmt, mode = VARIANTS[(k * per_class + i) % len(VARIANTS)] if mixed else ("jpg", "JPEG", "RGB")
            base = noise_image(rng, size)
            tint = Image.new("RGB", size, ((80 * k) % 256, (160 * k + 60) % 256, (40 * k + 120) % 256))
            img = Image.blend(base, tint, 0.7)
            img = img.convert(mode) if mode != "RGB" else img
            path = root / cls / f"img_{i:03d}.{ext}"
            img.save(path, format=fmt)
            paths.append(path)
    return sorted(paths)
