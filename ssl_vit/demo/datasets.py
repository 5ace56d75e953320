"""The image sets the demo builds itself (`ssl-vit demo --data NAME`): what each is, where it goes, its licence.

`emoji` (the default) is colour: Unicode's emoji drawn by Noto Color Emoji, one class per emoji group, from two
Debian packages (`emoji.py`). `digits` is the grey control: scikit-learn's handwritten digits (`digits.py`).
docs/demo.md ("The colour data set") says why these and measures both.

Each set writes its own `<split>/<class>/` image folder and shards under the demo's --workdir (the digits keep
the folder names they always had, so their workdirs stay reusable), so switching sets never mixes two sets'
images in one shard build.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import digits, emoji


@dataclass(frozen=True)
class DemoData:
    name: str
    title: str  # what the images are, for the report's title and the stage lines
    recipe: str  # the shipped pretraining recipe made for it
    images: str  # its image folder and shard folder under --workdir
    shards: str
    licence: str
    write: Callable[[Path, Path], dict]  # (image folder, source root) → {"train": n, "test": n, ...}

    def folders(self, work: Path) -> tuple[Path, Path]:
        return work / self.images, work / self.shards


def _write_emoji(folder: Path, source_root: Path) -> dict:
    counts = emoji.write_emoji_folders(folder, source_root)
    return {"train": sum(counts["train"].values()), "test": sum(counts["test"].values()),
            "classes": len(counts["train"]), "skipped": counts["skipped"]}


def _write_digits(folder: Path, source_root: Path) -> dict:
    return {**digits.write_digit_folders(folder), "classes": 10, "skipped": 0}


DATASETS = {
    "emoji": DemoData(
        name="emoji", title="Unicode's emoji in colour (Noto Color Emoji, one class per emoji group)",
        recipe="demo/emoji", images="images_emoji", shards="shards_emoji",
        licence=emoji.LICENCE,
        write=_write_emoji),
    "digits": DemoData(
        name="digits", title="scikit-learn's handwritten digits (grey, the control)",
        recipe="demo/digits", images="images", shards="shards",
        licence=digits.LICENCE,
        write=_write_digits),
}
DEFAULT = "emoji"
