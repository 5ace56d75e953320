"""A strict JPEG header scan for `check="header"`: the clean file's verdict without opening it in Pillow.

Why: with the header check nothing is decoded, and Pillow's Python JPEG parser (it unpacks quantization
tables into lists, keeps every APP segment, ...) was a third of a pass-through build's time. This scan
answers one question only — "would `prepare_image` pass these bytes through unchanged, and at what
size?" — and only for files whose layout leaves no doubt about Pillow's answer. For anything else it
returns None and the caller asks Pillow, so a verdict or a reason string can never differ.

It mirrors Pillow's JpegImagePlugin (13.x): the mode comes from the SOF component count alone (3 → RGB,
whatever an Adobe APP14 transform says); a file is MPO only when it has an APP2 "MPF" segment; the
orientation comes only from Exif or XMP. Files with either of those (or Photoshop APP13, fill bytes,
unusual markers, a second SOF, ...) go to Pillow.
"""
from __future__ import annotations

from PIL import Image

_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_SKIPPED = {0xC4, 0xDD, 0xFE}  # DHT, DRI, COM: Pillow only skips or stores them
_TO_PILLOW = (b"Exif\0\0", b"http://ns.adobe.com/xap/1.0/\0", b"MPF\0", b"Photoshop 3.0\0")
_SHORT_IS_ERROR = {0xE0: b"JFIF", 0xEE: b"Adobe"}  # Pillow reads a 16-bit field at offset 5 of these
_EOI = b"\xff\xd9"


def jpeg_pass_through_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when Pillow would open `data` as an 8-bit 3-component JPEG with no orientation and
    the header check would accept it (an end-of-image marker after the scan header); None when unsure."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    size = None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        nxt = pos + 2 + length
        if length < 2 or nxt > end:
            return None
        if marker == 0xDA:  # start of scan: the header ends here
            if size is None or data.rfind(_EOI) < nxt:
                return None
            return size if _below_bomb_limit(size) else None
        segment = data[pos + 4:nxt]
        if 0xE0 <= marker <= 0xEF:
            if not _plain_app(marker, segment):
                return None
        elif marker == 0xDB:
            if not _valid_dqt(segment):
                return None
        elif marker in _SOF:
            if size is not None or len(segment) != 15 or segment[0] != 8 or segment[5] != 3:
                return None  # a second frame, not 8-bit, not 3 components: Pillow decides
            size = ((segment[3] << 8) | segment[4], (segment[1] << 8) | segment[2])
            if 0 in size:
                return None
        elif marker not in _SKIPPED:
            return None
        pos = nxt
    return None


def _plain_app(marker: int, segment: bytes) -> bool:
    """An APPn segment that cannot change Pillow's verdict (no orientation, not MPO, parses cleanly)."""
    if segment.startswith(_TO_PILLOW):
        return False
    short = _SHORT_IS_ERROR.get(marker)
    if short is not None and segment.startswith(short) and len(segment) < 7:
        return False
    # Pillow indexes byte 13 of the first ICC fragment when the frame header arrives.
    return not (marker == 0xE2 and segment.startswith(b"ICC_PROFILE\0") and len(segment) < 14)


def _valid_dqt(segment: bytes) -> bool:
    """Pillow raises on a quantization segment that does not hold whole tables."""
    pos = 0
    while pos < len(segment):
        pos += 65 if segment[pos] < 16 else 129  # 8-bit or 16-bit entries, 64 each, after a 1-byte id
        if pos > len(segment):
            return False
    return True


def _below_bomb_limit(size: tuple[int, int]) -> bool:
    """Above Pillow's decompression-bomb limit `Image.open` warns or raises; leave that to Pillow."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is None or size[0] * size[1] <= limit
