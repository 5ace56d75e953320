"""Fast decode and crop decisions: reduced-DCT path vs plain path, formats, no fallback, crop boxes."""
from __future__ import annotations

import numpy as np
import pytest
from imagegen import image_bytes as encode
from PIL import Image

from data_tools.decoding import UndecodableImage

from ssl_vit.data import CropBox, center_crop, decode_crop, random_resized_crop
from ssl_vit.data import decode as decode_module
from ssl_vit.data.decode import dct_reduction


def smooth_photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """Gradients + low-frequency waves + a little noise: photo-like spectra, so resampling errors stay small."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    channels = [
        120 + 100 * np.sin(2 * np.pi * (1.5 * x + 0.5 * y)),
        60 + 150 * x * y + 30 * np.cos(6 * y),
        200 - 140 * x + 20 * np.sin(9 * x * y),
    ]
    pixels = np.stack(channels, -1) + rng.normal(0, 2, (height, width, 3))  # (H, W, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


BOX = CropBox(40, 30, 400, 360)  # shorter side 360 >= 4 × 48 but < 8 × 48: a 1/4 decode


def test_reduction_factor() -> None:
    assert dct_reduction(BOX, 48) == 4
    assert dct_reduction(CropBox(0, 0, 95, 500), 48) == 1  # < 2× on the short side: full decode
    assert dct_reduction(CropBox(0, 0, 96, 96), 48) == 2
    assert dct_reduction(CropBox(0, 0, 4000, 4000), 48) == 8  # 1/8 is libjpeg's smallest scale


def test_fast_path_matches_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(smooth_photo(), "JPEG", quality=95)
    plain = decode_crop(data, lambda w, h: BOX, 48, reduce=False).astype(np.float64)
    decoded_shapes: list[tuple[int, ...]] = []
    real = decode_module.decode_jpeg

    def spy(*args: object, **kw: object) -> np.ndarray:
        out = real(*args, **kw)
        decoded_shapes.append(out.shape)
        return out

    monkeypatch.setattr(decode_module, "decode_jpeg", spy)
    fast = decode_crop(data, lambda w, h: BOX, 48)
    assert fast.shape == (48, 48, 3) and fast.dtype == np.uint8
    assert decoded_shapes == [(120, 160, 3)]  # really decoded at 1/4 scale
    assert np.abs(fast - plain).mean() < 3.0, "reduced decode moved or blurred the crop"
    # The box matters: a crop shifted by 40 px differs far more than the fast/plain difference.
    shifted = decode_crop(data, lambda w, h: CropBox(80, 30, 400, 360), 48, reduce=False)
    assert np.abs(shifted - plain).mean() > 3 * np.abs(fast - plain).mean()


def test_crop_box_selects_the_right_pixels() -> None:
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))  # left half red, right half blue
    data = encode(img, "PNG")
    left = decode_crop(data, lambda w, h: CropBox(0, 0, 100, 100), 16)
    right = decode_crop(data, lambda w, h: CropBox(100, 0, 100, 100), 16)
    assert (left == np.array([255, 0, 0], np.uint8)).all()
    assert (right == np.array([0, 0, 255], np.uint8)).all()


@pytest.mark.parametrize(
    "fmt,mode,kw",
    [
        ("JPEG", "RGB", {"quality": 95}),
        ("JPEG", "CMYK", {}),
        ("JPEG", "L", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("WEBP", "RGB", {"quality": 95}),
    ],
)
def test_formats_and_modes_decode_to_rgb(fmt: str, mode: str, kw: dict) -> None:
    color = (200, 60, 30) if mode != "L" else (98, 98, 98)
    img = Image.new("RGB", (64, 48), color)
    converted = img.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else img.convert(mode)
    data = encode(converted, fmt, **kw)
    out = decode_crop(data, lambda w, h: CropBox(0, 0, w, h), 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.array(color)).max() <= 4


def test_a_libjpeg_turbo_refusal_is_final_no_pillow_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(smooth_photo(96, 64), "JPEG", quality=95)

    def refuse(*args: object, **kw: object) -> np.ndarray:
        raise ValueError("simulated libjpeg-turbo refusal")

    monkeypatch.setattr("data_tools.decoding.simplejpeg.decode_jpeg", refuse)
    with pytest.raises(UndecodableImage, match="simulated libjpeg-turbo refusal"):
        decode_crop(data, lambda w, h: CropBox(8, 4, 60, 50), 24)


def test_garbage_bytes_raise() -> None:
    with pytest.raises(Exception):
        decode_crop(b"\xff\xd8\xff\xe0 definitely not a jpeg", lambda w, h: CropBox(0, 0, w, h), 8)
    with pytest.raises(Exception):
        decode_crop(b"plain text", lambda w, h: CropBox(0, 0, w, h), 8)


def test_center_crop_box() -> None:
    assert center_crop(200, 100, 0.875) == CropBox(56.25, 6.25, 87.5, 87.5)
    assert center_crop(100, 300, 1.0) == CropBox(0, 100, 100, 100)


def test_random_resized_crop_respects_bounds_scale_ratio_and_seed() -> None:
    rng = np.random.default_rng(0)
    boxes = [random_resized_crop(500, 375, rng, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(300)]
    for b in boxes:
        assert 0 <= b.left and 0 <= b.top and b.left + b.width <= 500 and b.top + b.height <= 375
        assert 0.075 <= b.width * b.height / (500 * 375) <= 1.0
        assert 3 / 4 - 0.02 <= b.width / b.height <= 4 / 3 + 0.02
    assert len({(b.width, b.height) for b in boxes}) > 250  # really random
    again = np.random.default_rng(0)
    assert [random_resized_crop(500, 375, again) for _ in range(300)] == boxes


def test_random_resized_crop_fallback_is_central() -> None:
    # No 1:1 box of >= 90% of a 1000x10 image exists: the fallback takes the central 10x10 square.
    box = random_resized_crop(1000, 10, np.random.default_rng(0), (0.9, 1.0), (1.0, 1.0))
    assert box == CropBox(495, 0, 10, 10)
