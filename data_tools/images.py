"""One image file's bytes → the bytes to store: passed through untouched, or re-encoded to upright RGB.

Pass-through (the common, fast case): the file decodes, is JPEG/PNG/WebP, its mode is 8-bit RGB, its EXIF
orientation is upright, it is a still image and `resize_shorter` does not shrink it. Its bytes are
stored exactly as read, so nothing is lost and nothing is spent on encoding.

Everything else is decoded, turned upright (`ImageOps.exif_transpose`), converted to RGB (alpha is
composited on white; 16-bit is scaled to 8-bit; CMYK, palette, grayscale are converted) and re-encoded:

* PNG when the source is lossless or graphic-like — PNG, GIF or BMP files, or palette, bilevel, alpha or
  16-bit images — so no JPEG artefacts are added to pixels that had none;
* JPEG (quality `quality`, default 95, 4:2:0) otherwise — JPEG, CMYK JPEG, TIFF, WebP being resized, ... —
  the photographs.

Re-encoded files carry no metadata except an RGB source's ICC profile, and Pillow's encoders are
deterministic, so the same input gives the same bytes on every run.

Extensions are never trusted. The default, `check="header"`, parses the header (a strict scanner for clean
RGB JPEGs, Pillow for everything else) and checks that the end-of-image marker is present: it catches
truncated, empty and non-image files while the build runs near the speed of copying. It does not decode the
compressed data, so a JPEG whose scan is damaged but still ends in its end marker passes; the streams skip
and count such samples, and `ssl-vit-shards verify` finds them. `check="full"` decodes all compressed data
all or nothing (`decoding.py`: JPEGs by strict libjpeg-turbo at 1/8 DCT scale — the entropy decoding that
finds damage is complete, the inverse DCT is skipped —, PNG CRCs, Pillow's warnings as errors). A file that
is re-encoded is always decoded that strictly first, whatever `check` says: its pixels become the sample.
Every image's pixel count is capped (`max_pixels`) before it is decoded.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from .decoding import UndecodableImage, check_pixel_cap, check_pixels, open_image
from .headers import jpeg_pass_through_size

PASS_THROUGH = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_LOSSLESS_FORMATS = {"PNG", "GIF", "BMP"}
_PNG_MODES = {"1", "P", "PA", "RGBA", "RGBa", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_ORIENTATION = 0x0112


class BadImage(Exception):
    """The file cannot be used; the message is the reason written to NAME_skipped.tsv."""


@dataclass(frozen=True)
class Prepared:
    ext: str  # jpg | png | webp
    data: bytes
    width: int
    height: int
    reencoded: str | None  # why it was re-encoded; None when passed through byte for byte


def prepare_image(data: bytes, *, resize_shorter: int | None, quality: int, check: str,
                  max_pixels: int | None = None) -> Prepared:
    """The stored form of one image file's bytes; raises `BadImage` with the reason when unusable."""
    if not data:
        raise BadImage("empty file")
    if check == "header":  # the common clean JPEG without Pillow's slower parse (same verdict, see headers.py)
        size = jpeg_pass_through_size(data)
        if size is not None and (resize_shorter is None or min(size) <= resize_shorter):
            try:
                check_pixel_cap(*size, max_pixels)
            except UndecodableImage as err:
                raise BadImage(str(err)) from None
            return Prepared("jpg", data, size[0], size[1], None)
    try:
        with open_image(data, max_pixels) as img:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # odd EXIF: the verdict comes from decoding instead
                reason = _reencode_reason(img, data, resize_shorter)
                if reason is None:
                    _check(img, data, check, max_pixels)  # before getexif(), which loads a PNG's pixels
                    if img.getexif().get(_ORIENTATION, 1) in range(2, 9):
                        reason = "EXIF orientation"
                if reason is None:
                    return Prepared(PASS_THROUGH[img.format], data, img.width, img.height, None)
                check_pixels(img, data, max_pixels)  # its pixels become the sample: all or nothing first
                return _reencode(img, reason, resize_shorter, quality)
    except UndecodableImage as err:
        raise BadImage(str(err)) from None
    except BadImage:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise BadImage(f"cannot decode: {type(err).__name__}: {err}") from None


def _reencode_reason(img: Image.Image, data: bytes, resize_shorter: int | None) -> str | None:
    if img.format not in PASS_THROUGH:
        return f"format {img.format}"
    if img.mode != "RGB":
        return f"mode {img.mode}"
    if img.format == "PNG" and data[12:16] == b"IHDR" and data[24] != 8:
        return f"{data[24]}-bit PNG"
    if img.format != "MPO" and getattr(img, "is_animated", False):  # MPO: extra frames are stereo views
        return "animated"
    if resize_shorter is not None and min(img.size) > resize_shorter:
        return "resize"
    return None


def _check(img: Image.Image, data: bytes, check: str, max_pixels: int | None) -> None:
    if check == "full":
        check_pixels(img, data, max_pixels)
        return
    if img.format == "WEBP":
        complete = int.from_bytes(data[4:8], "little") + 8 <= len(data)
    else:
        end = b"IEND" if img.format == "PNG" else b"\xff\xd9"
        complete = data.rfind(end) > img.tile[0][2]  # the end marker must follow the start of pixel data
    if not complete:
        raise BadImage("truncated (no end-of-image marker)")


def _reencode(img: Image.Image, reason: str, resize_shorter: int | None, quality: int) -> Prepared:
    """`img` has passed `check_pixels`; Pillow decodes it (again, for JPEGs) to convert and re-encode it."""
    img.load()
    lossless = img.format in _LOSSLESS_FORMATS or img.mode in _PNG_MODES or "transparency" in img.info
    icc = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
    rgb = _to_rgb(ImageOps.exif_transpose(img))
    if resize_shorter is not None and min(rgb.size) > resize_shorter:
        rgb = rgb.resize(_shorter_side_to(rgb.size, resize_shorter), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if lossless:
        rgb.save(buf, format="PNG", icc_profile=icc)
    else:
        rgb.save(buf, format="JPEG", quality=quality, icc_profile=icc)
    return Prepared("png" if lossless else "jpg", buf.getvalue(), rgb.width, rgb.height, reason)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited on white, 16-bit scaled (Pillow's own conversion would clip it)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        wide = img.convert("I")
        if img.mode != "I" or wide.getextrema()[1] > 255:
            wide = wide.point(lambda v: v * (1 / 256))
        return wide.convert("L").convert("RGB")
    if img.mode == "F":
        return img.convert("L").convert("RGB")
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _shorter_side_to(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(W, H) scaled so that min(W, H) == shorter, the other side rounded, never below 1."""
    w, h = size
    if w <= h:
        return shorter, max(1, round(h * shorter / w))
    return max(1, round(w * shorter / h)), shorter
