"""Fast decode: encoded image bytes + a crop decision → uint8 (S, S, 3).

Decoding dominates the CPU cost of the pipeline. Three things keep it cheap:

1. JPEGs go through simplejpeg (libjpeg-turbo, ~2× Pillow); Pillow decodes PNG/WebP and the rest.
2. The crop is chosen from the header's width/height before any pixel is decoded (`choose_box(w, h)`).
3. When the crop is at least twice the output size on both sides, the JPEG is decoded at 1/2, 1/4 or 1/8
   scale in the DCT domain (libjpeg's scaled IDCT, via simplejpeg's `min_width/min_height`), the box is
   mapped into the reduced image, and only then resized. The reduced image still has at least S pixels
   across the box, so the final antialiased resize sees the same frequencies.

Decoding is all or nothing (`data_tools.decoding`): a JPEG that strict libjpeg-turbo refuses is not handed to
a second decoder, a PNG must pass its CRCs, Pillow's warnings are errors, and an image above `max_pixels` is
refused before decoding. The caller skips and counts what raises.

The box is rounded to whole pixels of the (possibly reduced) image and resized with torch's antialiased
bilinear uint8 kernel, which reproduces Pillow's BILINEAR resize (within 1/255) at 2-3× its speed.
EXIF orientation is not applied; `ssl-vit-shards` writes upright images.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data_tools.decoding import decode_jpeg, is_jpeg, jpeg_size, load_strictly, open_image

from .crops import CropBox

BoxChooser = Callable[[int, int], CropBox]


def dct_reduction(box: CropBox, size: int) -> int:
    """The largest k in (1, 2, 4, 8) that keeps the crop at least `size` pixels on both sides after a 1/k decode."""
    short = min(box.width, box.height)
    k = 1
    while k < 8 and short / (2 * k) >= size:
        k *= 2
    return k


class Header(NamedTuple):
    """An image's size from its header; for formats Pillow decodes, the image Pillow opened to read it, which
    `decode_box` then decodes (opening it again cost ~7% of a small PNG's decode)."""

    width: int
    height: int
    opened: Image.Image | None = None


def read_header(data: bytes, max_pixels: int | None = None) -> Header:
    """The header alone (refused above `max_pixels`), as `decode_crop` reads it.

    The train stream chooses every random crop from this size, so fast-forwarding a stream (`stages.train_items`
    with `skip`) draws the same random numbers as decoding would, without decoding.
    """
    if is_jpeg(data):
        return Header(*jpeg_size(data, max_pixels))
    img = open_image(data, max_pixels)
    return Header(*img.size, img)


def decode_crop(
    data: bytes, choose_box: BoxChooser, size: int, *, reduce: bool = True, max_pixels: int | None = None
) -> np.ndarray:
    """Decode `data`, crop `choose_box(width, height)` and resize it to (size, size, 3) uint8 RGB.

    `reduce=False` is the plain path (full-resolution decode), kept for tests and comparisons. `max_pixels`
    caps width × height (None: Pillow's bomb limit). Raises `data_tools.decoding.UndecodableImage` when the
    bytes are not one complete image within the cap.
    """
    header = read_header(data, max_pixels)
    return decode_box(data, choose_box(header.width, header.height), size, header, reduce=reduce)


def decode_box(data: bytes, box: CropBox, size: int, header: Header, *, reduce: bool = True) -> np.ndarray:
    """Decode `data`, whose header `read_header` read, crop `box` and resize it to (size, size, 3)."""
    width, height = header.width, header.height
    if header.opened is None:  # a JPEG
        k = dct_reduction(box, size) if reduce else 1
        pixels = decode_jpeg(data, min_width=-(-width // k), min_height=-(-height // k))
        return _resize(pixels, box, size, width, height, k)
    load_strictly(header.opened, data)
    return _resize(np.array(header.opened.convert("RGB")), box, size, width, height, 1)


def _resize(pixels: np.ndarray, box: CropBox, size: int, width: int, height: int, k: int) -> np.ndarray:
    """Crop `box` (original coordinates) out of `pixels` (the original scaled by a DCT factor, ideally 1/k)
    and resize it to (size, size, 3)."""
    rh, rw = pixels.shape[:2]
    # libjpeg's 1/k decode maps original pixel x to x / k exactly, and its output is ceil(width / k) wide.
    exact = rw == -(-width // k) and rh == -(-height // k)
    sx, sy = (1 / k, 1 / k) if exact else (rw / width, rh / height)
    left, top, right, bottom = (math.floor(v + 0.5) for v in box.scaled(sx, sy, rw, rh))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    region = torch.from_numpy(pixels[top:bottom, left:right]).permute(2, 0, 1)[None]  # (1, 3, h, w), a view
    # channels_last uint8 is the layout of torch's vectorised antialiased bilinear kernel (Pillow's filter)
    region = region.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()  # (S, S, 3)
