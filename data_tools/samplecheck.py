"""Is one sample read back from a shard what `build` promises? Returns the problems, [] when it is fine.

The promise (docs/architecture.md): exactly one image under jpg/png/webp that fully decodes to RGB (all or
nothing, within `max_pixels`: see decoding.py) at the width and height its json states; `cls` an ASCII
integer in range (-1 when unlabelled); `json` with path, class (the class name of `cls`, or null), width and
height.
"""
from __future__ import annotations

import json

from .decoding import UndecodableImage, check_pixels, open_image

IMAGE_FORMATS = {"jpg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",)}
_META_KEYS = ("path", "class", "width", "height")


def check_sample(parts: dict[str, bytes], class_names: list[str] | None, max_pixels: int | None = None) -> list[str]:
    images = [ext for ext in parts if ext in IMAGE_FORMATS]
    if len(images) != 1:
        return [f"expected one image (jpg, png or webp), found {', '.join(images) or 'none'}"]
    ext = images[0]
    problems = []
    extra = sorted(set(parts) - {ext, "cls", "json"})
    if extra:
        problems.append(f"unexpected members {', '.join(extra)}")
    cls = _check_cls(parts.get("cls"), class_names, problems)
    meta = _check_meta(parts.get("json"), problems)
    if meta is not None and cls is not None and class_names is not None:
        expected = class_names[cls] if cls >= 0 else None
        if meta["class"] != expected:
            problems.append(f"json class {meta['class']!r} does not match cls {cls} ({expected!r})")
    problems += _check_image(parts[ext], ext, meta, max_pixels)
    return problems


def _check_cls(raw: bytes | None, class_names: list[str] | None, problems: list[str]) -> int | None:
    if raw is None:
        problems.append("no cls member")
        return None
    try:
        cls = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        problems.append(f"cls {raw[:20]!r} is not an ASCII integer")
        return None
    if class_names is not None:
        valid = cls == -1 if not class_names else 0 <= cls < len(class_names)
        if not valid:
            problems.append(f"cls {cls} is out of range for {len(class_names)} classes")
            return None
    return cls


def _check_meta(raw: bytes | None, problems: list[str]) -> dict | None:
    if raw is None:
        problems.append("no json member")
        return None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        problems.append(f"json does not parse ({err})")
        return None
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        problems.append(f"json lacks one of {', '.join(_META_KEYS)}")
        return None
    if not all(isinstance(meta[k], int) and meta[k] > 0 for k in ("width", "height")):
        problems.append("json width/height are not positive integers")
        return None
    return meta


def _check_image(data: bytes, ext: str, meta: dict | None, max_pixels: int | None) -> list[str]:
    try:
        with open_image(data, max_pixels) as img:
            if img.format not in IMAGE_FORMATS[ext]:
                return [f"{ext} member holds a {img.format} image"]
            mode, size = img.mode, img.size
            check_pixels(img, data, max_pixels)
    except UndecodableImage as err:
        return [f"image does not decode ({err})"]
    problems = [] if mode == "RGB" else [f"image mode is {mode}, not RGB"]
    if meta is not None and size != (meta["width"], meta["height"]):
        problems.append(f"image is {size[0]}x{size[1]}, json says {meta['width']}x{meta['height']}")
    return problems
