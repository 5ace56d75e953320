"""Crop decisions in original-image coordinates.

A crop is decided from the image's width and height alone (read from its header), before any pixel is
decoded; that is what lets `decode.decode_crop` decode a large JPEG at reduced DCT scale when the crop is
much bigger than the output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropBox:
    """A rectangle in original-image pixel coordinates (floats, so sub-pixel centre crops stay exact)."""

    left: float
    top: float
    width: float
    height: float

    def scaled(self, sx: float, sy: float, bound_w: int, bound_h: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in an image scaled by (sx, sy), clipped to it (PIL's `resize(box=)`)."""
        return (
            self.left * sx,
            self.top * sy,
            min((self.left + self.width) * sx, bound_w),
            min((self.top + self.height) * sy, bound_h),
        )


def random_resized_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropBox:
    """Inception-style crop: area fraction ~ U(scale), log aspect ~ U(log ratio); 10 tries, then a centre crop.

    Same algorithm as torchvision's `RandomResizedCrop.get_params`, drawing from `rng` instead of global state.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(left, top, w, h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def center_crop(width: int, height: int, crop_pct: float) -> CropBox:
    """The centred square of side crop_pct × shorter side.

    Equals timm's eval transform (resize the shorter side to S / crop_pct, centre-crop S) up to the rounding
    of the intermediate size, done in one resize instead of two.
    """
    side = min(width, height) * crop_pct
    return CropBox((width - side) / 2, (height - side) / 2, side, side)
