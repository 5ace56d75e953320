"""Which colour data set the demo uses, by measurement: the table of docs/demo.md, "The colour data set".

    sudo apt-get install -y --no-install-recommends crawl-tiles-data fonts-noto-color-emoji unicode-data openclipart-png
    python bench/colour_sets.py            # ~3 minutes on one core; prints the markdown table

Three candidates that ship their images inside a Debian package, each made into 32×32 RGB pictures of classes:
- `crawl`: Dungeon Crawl Stone Soup's six tile atlases (floor, wall, feat, main = items, player = equipment,
  gui = interface), one class per atlas, cut into their 32×32 grid cells; cells with under 5% visible pixels
  dropped. The atlases pack trimmed sprites, so a cell of main/player/feat/gui often cuts through two sprites.
- `openclipart`: Openclipart's top-level folders with at least 100 images, minus `unsorted` and `special`
  (gradients, patterns), at most 300 images per folder (seeded), images over 20 megapixels skipped.
- `digits`: the grey control, as the demo writes it (opaque: no transparency).
- `emoji`: the demo's extraction (`ssl_vit/demo/emoji.py`), one class per Unicode emoji group; and the same
  without the group `Flags`, whose outline (a rectangle) names it.

Every picture is cut to its visible pixels, centred on a transparent square and composited on white, as the
emoji extraction does (crawl's cells stay as cut). Measured on a stratified 70/30 split (seed 0):
- colour: of the 4×4-pixel patches (the demo's), the fraction whose 3-bit mean colour is not grey (R, G and B
  bins differ), and how many of the 512 mean colours occur;
- transparency: the visible fraction of the picture, and what the alpha mask alone (32×32, no colour) tells
  about the class: few-shot least squares at 10 shots (the demo's protocol) and ridge on the whole train split;
- raw pixels: the same two classifiers on the 3,072 pixel values, the reference the demo's backbone must beat.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_vit.demo import emoji as E
from ssl_vit.demo.digits import stratified_split
from ssl_vit.eval.context import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.fewshot import L2_GRID, FewShot, select_l2_from_shots
from ssl_vit.eval.lstsq import BIAS_CONSTANT, LeastSquares

SIZE = 32
CRAWL = Path("/usr/share/crawl/dat/tiles")
CRAWL_ATLASES = {"floor": "floor", "wall": "wall", "feat": "feature", "main": "item", "player": "equipment",
                 "gui": "interface"}
OPENCLIPART = Path("/usr/share/openclipart/png")


def square_tile(picture: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """RGBA → (32, 32, 3) uint8 on white, (32, 32) alpha in [0, 1]: cut, centred, composited, resized."""
    box = picture.getchannel("A").getbbox()
    picture = picture.crop(box) if box else picture
    rgb = np.asarray(E.to_tile(picture))
    side = max(picture.size)
    alpha = Image.new("L", (side, side), 0)
    alpha.paste(picture.getchannel("A"), ((side - picture.width) // 2, (side - picture.height) // 2))
    return rgb, np.asarray(alpha.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float32) / 255


def crawl() -> tuple[list, list, list[str]]:
    tiles, labels = [], []
    for atlas in CRAWL_ATLASES:
        sheet = np.asarray(Image.open(CRAWL / f"{atlas}.png").convert("RGBA"))
        for y in range(0, sheet.shape[0] - SIZE + 1, SIZE):
            for x in range(0, sheet.shape[1] - SIZE + 1, SIZE):
                cell = sheet[y:y + SIZE, x:x + SIZE]
                if (cell[..., 3] > 0).mean() >= 0.05:
                    alpha = cell[..., 3:].astype(np.float32) / 255
                    rgb = (cell[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
                    tiles.append((rgb, alpha[..., 0]))
                    labels.append(CRAWL_ATLASES[atlas])
    return [t[0] for t in tiles], [t[1] for t in tiles], labels


def openclipart(per_class: int = 300, min_count: int = 100) -> tuple[list, list, list[str]]:
    Image.MAX_IMAGE_PIXELS = None
    rng = random.Random(0)
    rgbs, alphas, labels = [], [], []
    for folder in sorted(p for p in OPENCLIPART.iterdir() if p.is_dir() and p.name not in ("unsorted", "special")):
        files = sorted(glob.glob(str(folder / "**" / "*.png"), recursive=True))
        if len(files) < min_count:
            continue
        rng.shuffle(files)
        taken = 0
        for path in files:
            if taken == per_class:
                break
            with Image.open(path) as im:
                if im.width * im.height > 20e6:
                    continue
                rgb, alpha = square_tile(im.convert("RGBA"))
            rgbs.append(rgb), alphas.append(alpha), labels.append(folder.name)
            taken += 1
    return rgbs, alphas, labels


def emoji() -> tuple[list, list, list[str]]:
    font_path, table_path = E.source_files(Path("/"))
    font = E.load_font(font_path)
    rgbs, alphas, labels = [], [], []
    for e in E.parse_table(table_path.read_text(encoding="utf-8")):
        picture = E.render(font, e.text)
        if picture is not None:
            rgb, alpha = square_tile(picture)
            rgbs.append(rgb), alphas.append(alpha), labels.append(E.class_name(e.group))
    return rgbs, alphas, labels


def digits() -> tuple[list, list, list[str]]:
    """The grey control, as the demo writes it (`ssl_vit/demo/digits.py`): opaque, so the mask is empty."""
    from ssl_vit.demo.digits import _load_digits, digit_to_rgb

    images, labels = _load_digits()
    rgbs = [np.asarray(digit_to_rgb(image)) for image in images]
    return rgbs, [np.ones((SIZE, SIZE), np.float32)] * len(rgbs), [str(int(label)) for label in labels]


def emoji_without_flags() -> tuple[list, list, list[str]]:
    """The emoji less the group whose outline alone names it (a flag is a rectangle): how much flags add."""
    kept = [t for t in zip(*emoji()) if t[2] != "flags"]
    return [t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept]


def classifiers(x: np.ndarray, y: np.ndarray, is_test: np.ndarray) -> dict[str, float]:
    """10-shot (the demo's headline protocol, 5 draws) and ridge on the whole train split (L2 by leave-one-out)."""
    def feats(mask):
        return Features(torch.from_numpy(x[mask]).float(), torch.from_numpy(y[mask]).long(),
                        [f"{i:06d}" for i in np.flatnonzero(mask)])
    train, test = feats(~is_test), feats(is_test)
    few = FewShot(shots=[10], seeds=5).run(features_context(train, test, seed=0))
    model = LeastSquares.fit(train.x, train.labels, int(y.max()) + 1, BIAS_CONSTANT)
    l2 = select_l2_from_shots(model, 2, L2_GRID)
    predicted = model.predict(test.x, l2).argmax(1)
    recall = [100 * float((predicted[test.labels == c] == c).float().mean()) for c in range(int(y.max()) + 1)]
    return {"10shot": few["fewshot/10shot"], "10shot_std": few["fewshot/10shot_std"],
            "full": model.accuracy(test.x, test.labels, l2), "recall": recall}


def measure(name: str, rgbs: list, alphas: list, labels: list[str]) -> dict:
    rgb, alpha = np.stack(rgbs), np.stack(alphas)
    names = sorted(set(labels))
    y = np.array([names.index(n) for n in labels])
    counts = np.bincount(y)
    is_test = stratified_split(y, 0.3, 0)
    patches = rgb.reshape(len(rgb), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(-1, 3)  # (N·64, 3) mean colours
    bins = np.floor(patches * 8 / 256).astype(int)
    coloured = (bins.max(axis=1) != bins.min(axis=1)).mean()
    used = len(np.unique(bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]))
    visible = np.array([(alpha[y == c] > 0.5).mean() for c in range(len(names))])
    out = {"name": name, "images": len(y), "classes": len(names), "smallest": int(counts.min()),
           "largest": int(counts.max()), "coloured": float(coloured), "colours_used": used,
           "visible": float((alpha > 0.5).mean()), "visible_min": float(visible.min()),
           "visible_max": float(visible.max()), "chance": 100.0 * counts.max() / counts.sum(),
           "mask": classifiers(alpha.reshape(len(y), -1), y, is_test),
           "pixels": classifiers(rgb.reshape(len(y), -1).astype(np.float32), y, is_test),
           "per_class": dict(zip(names, counts.tolist()))}
    return out


def table(rows: list[dict]) -> str:
    head = ("| set | images | classes (smallest–largest) | majority % | patches not grey | "
            "mean colours used (of 512) | visible pixels (class range) | alpha mask alone: 10-shot / full | "
            "raw pixels: 10-shot / full |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        m, p = r["mask"], r["pixels"]
        lines.append(f"| {r['name']} | {r['images']:,} | {r['classes']} ({r['smallest']}–{r['largest']}) | "
                     f"{r['chance']:.1f} | {100 * r['coloured']:.0f}% | {r['colours_used']} | "
                     f"{100 * r['visible']:.0f}% ({100 * r['visible_min']:.0f}–{100 * r['visible_max']:.0f}%) | "
                     f"{m['10shot']:.1f} ± {m['10shot_std']:.1f} / {m['full']:.1f} | "
                     f"{p['10shot']:.1f} ± {p['10shot_std']:.1f} / {p['full']:.1f} |")
    return "\n".join(lines)


SETS = {"digits": digits, "crawl": crawl, "openclipart": openclipart, "emoji": emoji,
        "emoji without flags": emoji_without_flags}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    for name in args.sets:
        start = time.time()
        rows.append(measure(name, *SETS[name]()))
        row = rows[-1]
        recall = ", ".join(f"{c} {m:.0f}/{p:.0f}" for c, m, p in zip(row["per_class"], row["mask"]["recall"],
                                                                    row["pixels"]["recall"]))
        print(f"{name}: {time.time() - start:.0f} s; images per class {row['per_class']}; test recall (%) of ridge "
              f"on the whole train split, mask alone / raw pixels: {recall}", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
