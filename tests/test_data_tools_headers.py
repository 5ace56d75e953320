"""The header scanner (data_tools/headers.py) must give exactly Pillow's verdict or step aside.

Every generated file — clean, progressive, rotated, CMYK, grey, MPO, with ICC/XMP/Adobe segments, truncated
at many offsets, with corrupted header bytes — goes through `prepare_image(check="header")` twice: with the
scanner and with it disabled (pure Pillow). The outcomes (stored bytes, size, re-encode reason, or skip
reason) must be identical.
"""
from __future__ import annotations

import random

import pytest
from PIL import Image

from imagegen import image_bytes as _jpeg
from imagegen import noise_image

import data_tools.images as images
from data_tools.headers import jpeg_pass_through_size
from data_tools.images import BadImage, prepare_image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


_XMP = b"http://ns.adobe.com/xap/1.0/\0"  # the APP1 signature of an XMP packet, as Pillow reads and writes it


def _insert_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """`data` with one more segment right after SOI."""
    return data[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


def _variants() -> dict[str, bytes]:
    rng = random.Random(0)
    rgb = noise_image(rng, (40, 30))
    other = noise_image(rng, (40, 30))
    files = {
        "baseline": _jpeg(rgb),
        "q50_444": _jpeg(rgb, quality=50, subsampling=0),
        "progressive": _jpeg(rgb, progressive=True),
        "optimized": _jpeg(rgb, optimize=True),
        "tall": _jpeg(noise_image(rng, (20, 52))),
        "restart": _jpeg(rgb, restart_marker_blocks=1),
        "comment": _jpeg(rgb, comment=b"made \xff\xd9 here"),
        "icc": _jpeg(rgb, icc_profile=b"\0" * 300),
        "icc_big": _jpeg(rgb, icc_profile=bytes(range(256)) * 300),  # split over several APP2 segments
        "grey": _jpeg(rgb.convert("L")),
        "cmyk": _jpeg(rgb.convert("CMYK")),
        "ycbcr": _jpeg(rgb.convert("YCbCr")),
        "mpo": _jpeg(rgb, "MPO", save_all=True, append_images=[other]),
        "png": _jpeg(rgb, "PNG"),
    }
    for o in range(1, 9):
        files[f"exif_{o}"] = _jpeg(rgb, exif=_exif(o))
    base = files["baseline"]
    for name, orientation in (("xmp_upright", b"1"), ("xmp_rotated", b"6")):  # written here: older Pillow writes no XMP
        files[name] = _insert_segment(base, 0xE1, _XMP + b'<x tiff:Orientation="' + orientation + b'"/>')
    files["adobe_rgb"] = _insert_segment(base, 0xEE, b"Adobe\0\x64\0\0\0\0\0")  # transform 0: RGB, not YCC
    files["adobe_short"] = _insert_segment(base, 0xEE, b"Adobe\0")
    files["jfif_short"] = _insert_segment(base[:2] + base[20:], 0xE0, b"JFIF\0")  # replaces the real APP0
    files["icc_short"] = _insert_segment(base, 0xE2, b"ICC_PROFILE\0\x01")
    files["photoshop"] = _insert_segment(base, 0xED, b"Photoshop 3.0\x008BIM\x04\x04\0\0\0\0\0\0")
    files["fill_bytes"] = base[:2] + b"\xff\xff" + base[2:]
    files["no_eoi"] = base[:-2]
    files["eoi_in_header_only"] = files["comment"][:-2]
    files["trailing_junk"] = base + b"\0" * 10
    return files


def _outcome(data: bytes, resize: int | None) -> tuple:
    try:
        p = prepare_image(data, resize_shorter=resize, quality=90, check="header")
    except BadImage as err:
        return ("skipped", str(err))
    return (p.ext, p.data, p.width, p.height, p.reencoded)


def _both(data: bytes, resize: int | None, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, tuple]:
    fast = _outcome(data, resize)
    with monkeypatch.context() as m:
        m.setattr(images, "jpeg_pass_through_size", lambda _: None)
        reference = _outcome(data, resize)
    return fast, reference


def _cases() -> list[tuple[str, bytes]]:
    cases = []
    for name, data in _variants().items():
        cases.append((name, data))
        header_end = data.find(b"\xff\xda") + 20
        head_step = max(1, header_end // 150)  # ~150 cuts in the header (every byte of a small one), a few after
        for cut in sorted({*range(0, min(header_end, len(data)), head_step), *range(header_end, len(data), 97)}):
            cases.append((f"{name}[:{cut}]", data[:cut]))
    rng = random.Random(1)
    base = _variants()["baseline"]
    for pos in range(2, base.find(b"\xff\xda") + 12):  # every header byte, set to a few telling values
        for value in (0x00, 0xFF, 0xC4, 0xDA, 0xD9, rng.randrange(256)):
            cases.append((f"baseline[{pos}]={value:#x}", base[:pos] + bytes([value]) + base[pos + 1:]))
    return cases


@pytest.mark.timeout(120)
def test_scanner_verdicts_match_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted = 0
    for name, data in _cases():
        for resize in (None, 30, 10):
            fast, reference = _both(data, resize, monkeypatch)
            assert fast == reference, f"{name} resize={resize}: scanner {fast[:1] + fast[2:]} vs Pillow " \
                                      f"{reference[:1] + reference[2:]}"
        accepted += jpeg_pass_through_size(data) is not None
    assert accepted >= 300  # the fast path is actually taken: clean files, their long truncations, ...


def test_scanner_accepts_clean_rgb_and_declines_the_rest() -> None:
    files = _variants()
    for name in ("baseline", "q50_444", "progressive", "optimized", "restart", "comment", "icc", "icc_big",
                 "ycbcr", "adobe_rgb", "trailing_junk"):
        assert jpeg_pass_through_size(files[name]) == (40, 30), name
    assert jpeg_pass_through_size(files["tall"]) == (20, 52)
    for name in ("exif_1", "exif_6", "xmp_upright", "xmp_rotated", "grey", "cmyk", "mpo", "png", "adobe_short",
                 "jfif_short", "icc_short", "photoshop", "fill_bytes", "no_eoi", "eoi_in_header_only"):
        assert jpeg_pass_through_size(files[name]) is None, name


def test_an_xmp_orientation_turns_the_image_upright_like_an_exif_one() -> None:
    """Pillow reads a JPEG's XMP orientation from 11.2 on, pyproject's floor: an older one would store such a
    photo sideways, silently, where the scanner (which leaves every XMP file to Pillow) cannot notice."""
    files = _variants()
    for name in ("exif_6", "xmp_rotated"):
        prepared = prepare_image(files[name], resize_shorter=None, quality=90, check="header")
        assert (prepared.reencoded, prepared.width, prepared.height) == ("EXIF orientation", 30, 40), name


def test_scanner_leaves_bombs_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _variants()["baseline"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    assert jpeg_pass_through_size(data) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30)
    assert jpeg_pass_through_size(data) == (40, 30)


def test_full_check_never_uses_the_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: bytes) -> None:
        raise AssertionError("scanner called on the full-check path")

    monkeypatch.setattr(images, "jpeg_pass_through_size", refuse)
    prepared = prepare_image(_variants()["baseline"], resize_shorter=None, quality=90, check="full")
    assert (prepared.reencoded, prepared.width, prepared.height) == (None, 40, 30)
