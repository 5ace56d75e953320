"""All-or-nothing image decoding, shared by the build (`--check full`, re-encoding), `verify` and the streams.

An image either decodes completely and correctly, or it raises `UndecodableImage` with the reason; there is
no second decoder to fall back on, because a fallback is exactly what hid damage before: libjpeg-turbo
(simplejpeg, `strict=True`) refuses a JPEG whose entropy-coded scan is damaged ("Corrupt JPEG data: 229
extraneous bytes before marker 0xd9", "premature end of data segment"), and Pillow, which silences
libjpeg's warnings, returned the same file as an image filled with grey. So:

- JPEGs are decoded only by simplejpeg in strict mode (any libjpeg warning is an error). Grey and CMYK
  JPEGs convert to RGB inside libjpeg-turbo too. JPEG has no checksum: damage that leaves a valid Huffman
  stream (a flipped bit inside one coefficient) is invisible to every decoder; shard sha256 sums guard
  the bytes after the build.
- Other formats are decoded by Pillow with its warnings turned into errors, `ImageFile.LOAD_TRUNCATED_IMAGES`
  required off (it makes truncated files decode as grey), and for PNG every chunk's CRC checked (Pillow
  skips the CRCs of image data) and the IEND chunk required.
- The pixel count is capped before any pixel is decoded (`max_pixels`, default Pillow's own
  decompression-bomb limit `Image.MAX_IMAGE_PIXELS`, ~89.5 Mpx, above which Pillow only warns): a 420 kB
  PNG can claim 144 Mpx, and decoding it would cost 430 MB per copy. With the cap, the memory one image
  can cost is bounded by the cap, whatever the file.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's warning threshold (None: it was switched off)


class UndecodableImage(ValueError):
    """The bytes are not one complete, correct image within the pixel cap; the message says why."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def check_pixel_cap(width: int, height: int, max_pixels: int | None) -> None:
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if width * height > cap:
        raise UndecodableImage(
            f"{width}x{height} = {width * height:,} pixels exceeds the cap of {cap:,} (max_pixels); "
            "a decompression bomb, or raise max_pixels if such images are expected")


def max_file_bytes(max_pixels: int | None) -> int:
    """The largest image file read, in the build and in the streams: an uncompressed 4-channel image at the pixel
    cap, plus 16 MiB of metadata. Bounds what one file costs a worker, whatever it is (a 50 GB file or tar
    member, /proc/kcore, a sparse file)."""
    return 4 * (DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels) + (16 << 20)


def jpeg_size(data: bytes, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from a JPEG's header, strictly parsed, within the pixel cap."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as err:
        raise UndecodableImage(f"JPEG header does not parse: {err}") from None
    check_pixel_cap(width, height, max_pixels)
    return width, height


def decode_jpeg(data: bytes, *, min_width: int = 0, min_height: int = 0) -> np.ndarray:
    """Strict RGB decode (H, W, 3) at the smallest DCT scale (1, 1/2, 1/4, 1/8) keeping the minimum size.

    A reduced scale skips only the inverse DCT's detail: every entropy-coded byte is still decoded, so a
    damaged scan is refused at any scale. Call `jpeg_size` first: it applies the pixel cap.
    """
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_width, min_height=min_height,
                                      strict=True)
    except ValueError as err:
        raise UndecodableImage(f"JPEG data is damaged or truncated: {err}") from None


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Pillow's view of the header (format, mode, size) with the pixel cap applied; nothing decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below decides
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UndecodableImage("not an image (no image format recognises it)") from None
    except Image.DecompressionBombError:
        raise UndecodableImage("more pixels than twice Pillow's decompression-bomb limit") from None
    except Exception as err:  # Pillow reports unknown or broken headers as several exception types
        raise UndecodableImage(f"not a readable image ({type(err).__name__}: {err})") from None
    check_pixel_cap(*img.size, max_pixels)
    return img


def load_strictly(img: Image.Image, data: bytes) -> None:
    """Decode every pixel of a Pillow image (`img` opened on `data`), or raise `UndecodableImage`.

    JPEGs go through `check_jpeg` instead (Pillow cannot see libjpeg's corrupt-data warnings).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise UndecodableImage(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on, so truncated images would decode as grey; "
            "turn it off (some library or script set it)")
    if img.format == "PNG":
        _check_png_chunks(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a decoder's warning means it guessed: all or nothing
            img.load()
    except Exception as err:  # OSError, SyntaxError, ValueError, EOFError, a warning, ...
        raise UndecodableImage(f"cannot decode: {type(err).__name__}: {err}") from None


def check_jpeg(data: bytes, max_pixels: int | None = None) -> tuple[int, int]:
    """Strictly decode every entropy-coded byte of a JPEG (at 1/8 scale: the IDCT is the cheap part skipped);
    returns its (width, height)."""
    size = jpeg_size(data, max_pixels)
    decode_jpeg(data, min_width=1, min_height=1)
    return size


def check_pixels(img: Image.Image, data: bytes, max_pixels: int | None = None) -> None:
    """The all-or-nothing verdict on `data` (opened as `img`): JPEGs strictly by libjpeg-turbo, the rest by
    Pillow with `load_strictly`."""
    if img.format in ("JPEG", "MPO") and is_jpeg(data):
        check_jpeg(data, max_pixels)
    else:
        load_strictly(img, data)


def _check_png_chunks(data: bytes) -> None:
    """Every chunk's CRC-32 matches and the file ends with IEND: Pillow checks neither for the image data,
    so a damaged IDAT whose deflate stream still parses would decode to wrong pixels."""
    pos = len(PNG_MAGIC)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        crc = zlib.crc32(data[pos + 4:end])
        if crc != struct.unpack(">I", data[end:end + 4])[0]:
            raise UndecodableImage(f"PNG chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC: damaged data")
        if kind == b"IEND":
            return
        pos = end + 4
    raise UndecodableImage("PNG ends before its IEND chunk: truncated")
