"""A colour image folder from the emoji that ship inside two Debian packages: one class per Unicode emoji group.

The digits are grey, so the paper's colour targets have little to predict there (a grey patch uses 8 of the 512
3-bit mean colours). Colour images that install offline: Noto Color Emoji (`fonts-noto-color-emoji`) draws each
emoji as a 136×128 colour bitmap, and Unicode's `emoji-test.txt` (`unicode-data`) puts every emoji in one of ten
groups. docs/demo.md ("The colour data set") measured this set against Crawl's tiles and Openclipart's PNGs and
says why it was chosen.

What becomes an image:
- every fully-qualified emoji of emoji-test.txt, outside the group `Component` (skin tones and hair styles
  alone are parts, not pictures), without its skin-tone variants (a 5-fold copy of people in other colours,
  which would put near-copies of one picture on both sides of the split);
- drawn at the font's one bitmap size, cut to its visible pixels, centred on a transparent square, composited
  on a fixed white background (a fixed background adds no colour of its own: the silhouette is all the
  transparency leaves behind, and docs/demo.md measures how much the silhouette alone says about the group),
  and resized to 32×32;
- a sequence the text layout does not join into one glyph (Pillow without libraqm draws a ZWJ sequence as its
  parts side by side) is skipped and counted, not written as a picture of several emoji.

The split is stratified and fixed by its seed (`digits.stratified_split`), as the digits' is. The folder's
`emoji.json` records the settings, the sha256 of the font and the table, the layout engine, the counts and the
licence; a folder written with the same record is kept, so the demo's later stages reuse its shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from ..errors import DataError, UserError
from ..files import atomic_write, make_dir
from .digits import stratified_split

IMAGE_SIZE = 32
FONT = Path("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # under the source root, as the packages lay it out
TABLE = Path("usr/share/unicode/emoji/emoji-test.txt")
PACKAGES = {FONT: "fonts-noto-color-emoji", TABLE: "unicode-data"}
APT = "apt-get install -y --no-install-recommends fonts-noto-color-emoji unicode-data"
STRIKE = 109  # pixels per em of Noto Color Emoji's one bitmap strike; FreeType draws a bitmap font at no other size
BACKGROUND = (255, 255, 255)
EXCLUDED_GROUPS = ("Component",)
SKIN_TONES = range(0x1F3FB, 0x1F400)
LICENCE = ("Noto Color Emoji (Debian fonts-noto-color-emoji; © Google): the emoji images are Apache-2.0, the font "
           "SIL Open Font License 1.1; the groups come from Unicode's emoji-test.txt (Debian unicode-data), under "
           "the Unicode terms of use (/usr/share/doc/fonts-noto-color-emoji/copyright, "
           "/usr/share/doc/unicode-data/copyright)")


@dataclass(frozen=True)
class Emoji:
    text: str  # the fully-qualified code point sequence
    group: str  # Unicode's group name, e.g. "Food & Drink"
    name: str  # Unicode's short name, e.g. "hot pepper"

    @property
    def key(self) -> str:
        """The file name: its code points, e.g. `1f336-fe0f` (unique within emoji-test.txt)."""
        return "-".join(f"{ord(c):x}" for c in self.text)


def class_name(group: str) -> str:
    """A folder name for a group: "Smileys & Emotion" → `smileys_emotion`."""
    return re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")


_LINE = re.compile(r"^([0-9A-Fa-f ]+);\s*([a-z-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(.*)$")


def parse_table(text: str, source: str = TABLE.name) -> list[Emoji]:
    """emoji-test.txt → the emoji that become images, in the file's order (see the module docstring)."""
    group, out = None, []
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        match = _LINE.match(line)
        if not match or match.group(2) != "fully-qualified" or group in EXCLUDED_GROUPS:
            continue
        points = [int(p, 16) for p in match.group(1).split()]
        if group is None or any(p in SKIN_TONES for p in points):
            continue
        out.append(Emoji("".join(map(chr, points)), group, match.group(3).strip()))
    if not out:
        raise DataError(f"{source}: no fully-qualified emoji under a '# group:' line; is it Unicode's emoji-test.txt?")
    return out


def first_of_each_group(emoji: list[Emoji], limit: int) -> list[Emoji]:
    """The first `limit` emoji of every group, in the table's order (a quick run's every class, smaller)."""
    taken: dict[str, int] = {}
    out = []
    for e in emoji:
        if taken.get(e.group, 0) < limit:
            out.append(e)
            taken[e.group] = taken.get(e.group, 0) + 1
    return out


def source_files(source_root: Path) -> tuple[Path, Path]:
    """(font, table) under `source_root` (`/` on a machine with the packages), or one line naming what to install."""
    missing = [f"{source_root / rel} ({package})" for rel, package in PACKAGES.items()
               if not (source_root / rel).is_file()]
    if missing:
        raise UserError(f"the colour demo draws Unicode's emoji from two Debian packages, and {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing: install them with `sudo {APT}` (or run the "
                        "grey control: ssl-vit demo --data digits)")
    return source_root / FONT, source_root / TABLE


def load_font(path: Path) -> ImageFont.FreeTypeFont:
    """The font at `path` exactly: given a file name it cannot load, Pillow looks for a font of the same name in
    the system's font folders, and would draw a broken --source-root's emoji with the installed font."""
    try:
        return ImageFont.truetype(io.BytesIO(path.read_bytes()), STRIKE)
    except OSError as e:
        raise DataError(f"{path}: cannot be read as a font at {STRIKE} pixels per em ({e}); reinstall "
                        f"{PACKAGES[FONT]}") from e


def render(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    """One emoji as RGBA, cut to its visible pixels; None when it is not one glyph or draws nothing."""
    left, top, right, bottom = font.getbbox(text)
    if right - left > 1.5 * STRIKE or right <= left or bottom <= top:
        return None  # several glyphs side by side: the layout did not join the sequence
    canvas = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((-left, -top), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    return None if box is None else canvas.crop(box)


def to_tile(picture: Image.Image, size: int = IMAGE_SIZE, background=BACKGROUND) -> Image.Image:
    """RGBA of any shape → size×size RGB: centred on a transparent square, composited on `background`, resized."""
    side = max(picture.size)
    square = Image.new("RGBA", (side, side), (*background, 255))
    square.alpha_composite(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_emoji_folders(root: Path, source_root: Path = Path("/"), test_fraction: float = 0.3, seed: int = 0,
                        limit: int | None = None) -> dict:
    """Write `root/{train,test}/<group>/<code points>.png`; returns the record's counts (per split, and skipped).

    Idempotent: a folder already written from the same font, table and settings (`root/emoji.json`) is kept.
    `limit` keeps the first `limit` emoji of every group (for quick runs).
    """
    root = Path(root)
    font_path, table_path = source_files(Path(source_root))
    settings = {"test_fraction": test_fraction, "seed": seed, "limit": limit, "size": IMAGE_SIZE,
                "background": list(BACKGROUND), "font_sha256": sha256(font_path),
                "table_sha256": sha256(table_path), "raqm": bool(features.check("raqm")), "pillow": Image.__version__}
    record = root / "emoji.json"
    old = _read(record)
    if old.get("settings") == settings:
        return old["counts"]
    for rel in old.get("files", []):  # another extraction's images: none of them may reach this one's shards
        (root / rel).unlink(missing_ok=True)
    emoji = parse_table(table_path.read_text(encoding="utf-8"), str(table_path))
    if limit is not None:
        emoji = first_of_each_group(emoji, limit)
    font = load_font(font_path)
    tiles, kept, skipped = [], [], []
    for e in emoji:
        picture = render(font, e.text)
        if picture is None:
            skipped.append(e.key)
        else:
            tiles.append(to_tile(picture))
            kept.append(e)
    if not kept:
        raise DataError(f"{font_path}: drew none of the {len(emoji)} emoji of {table_path}; is it a colour emoji font?")
    labels = np.array([class_name(e.group) for e in kept])
    is_test = stratified_split(labels, test_fraction, seed)
    counts: dict = {"train": {}, "test": {}, "skipped": len(skipped)}
    files = []
    for tile, e, test in zip(tiles, kept, is_test):
        split, name = ("test" if test else "train"), class_name(e.group)
        make_dir(root / split / name)
        files.append(f"{split}/{name}/{e.key}.png")
        atomic_write(root / files[-1], lambda f, tile=tile: tile.save(f, format="PNG"))
        counts[split][name] = counts[split].get(name, 0) + 1
    atomic_write(record, json.dumps({"settings": settings, "counts": counts, "licence": LICENCE,
                                     "skipped": skipped, "files": files}, indent=1) + "\n")
    return counts


def _read(record: Path) -> dict:
    """The folder's record, or {} when there is none or it cannot be read (then everything is written afresh)."""
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}
