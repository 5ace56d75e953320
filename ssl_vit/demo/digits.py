"""A real image folder from the handwritten digits that ship inside scikit-learn.

`load_digits` holds 1,797 real 8×8 scans (10 classes, 17 grey levels). We write them as RGB PNGs upsampled
to 32×32 under `<split>/<class>/` folders, with a fixed stratified train/test split, so the demo exercises
exactly the path users take with their own folders: folder → shards → streams.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..files import atomic_write, make_dir

IMAGE_SIZE = 32
LICENCE = ("UCI's Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak), shipped in scikit-learn as "
           "load_digits: CC BY 4.0")


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # the `demo` extra brings scikit-learn
        raise UserError("the demo needs scikit-learn for its digits: pip install 'ssl_vit[demo]'") from e
    data = load_digits()
    return data.images, data.target  # (1797, 8, 8) floats in 0..16, (1797,) ints


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean test mask holding `test_fraction` of every class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_test[idx[: int(round(test_fraction * len(idx)))]] = True
    return is_test


def digit_to_rgb(image_8x8: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """(8, 8) grey levels 0..16 → a size×size RGB image (bicubic upsampling, so strokes stay smooth)."""
    grey = np.clip(image_8x8 / 16.0 * 255.0, 0, 255).astype(np.uint8)  # (8, 8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")


def write_digit_folders(root: Path, test_fraction: float = 0.3, seed: int = 0, limit: int | None = None) -> dict:
    """Write `root/train/<digit>/NNNN.png` and `root/test/<digit>/NNNN.png`; returns the counts per split.

    Idempotent: a folder already written with the same settings (recorded in `root/digits.json`) is kept.
    `limit` keeps only the first `limit` scans (for quick tests).
    """
    root = Path(root)
    settings = {"test_fraction": test_fraction, "seed": seed, "limit": limit, "size": IMAGE_SIZE}
    record = root / "digits.json"
    if record.exists() and json.loads(record.read_text()).get("settings") == settings:
        return json.loads(record.read_text())["counts"]
    images, labels = _load_digits()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    is_test = stratified_split(labels, test_fraction, seed)
    counts = {"train": 0, "test": 0}
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "test" if is_test[i] else "train"
        folder = root / split / str(int(label))
        make_dir(folder)
        picture = digit_to_rgb(img)
        atomic_write(folder / f"{i:04d}.png", lambda f: picture.save(f, format="PNG"))
        counts[split] += 1
    atomic_write(record, json.dumps({"settings": settings, "counts": counts}, indent=1))
    return counts
