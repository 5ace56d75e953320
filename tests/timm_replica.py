"""A replica of timm's WebDataset layout (`timm/imagenet-1k-wds` on the Hugging Face Hub), written the way timm's
shard writer writes it: shards `imagenet1k-train-0000.tar`, `imagenet1k-validation-00.tar` of samples `jpg` + `cls`
(an int) + `json` {label, width, height, filename}, keyed by the image's file stem; an index
`{"name", "splits": {NAME: {"name", "filenames", "shard_lengths", "num_samples", "alt_label"}}}`. Also the eval
stream's (key, label) pairs, to compare what a spec reads with what was written."""
from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds
from PIL import Image
from shardgen import PALETTE, encode

from ssl_vit.data import build_eval_stream

SIZES = {"train": [4, 4, 3], "validation": [3, 2]}  # samples per shard
DIGITS = {"train": 4, "validation": 2}  # timm's writer: ceil(log10(number of shards)) digits (1024 → 4, 64 → 2)


def timm_replica(root: Path, *, index: str = "_info.json", brace: bool = False, alt_split: bool = False) -> dict:
    """Write the replica into `root`; returns {split: [(key, label), ...]} in shard order."""
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[tuple[str, int]]] = {}
    info: dict = {"name": "imagenet1k", "splits": {}}
    for split, sizes in SIZES.items():
        names, items = [], []
        for shard, count in enumerate(sizes):
            name = f"imagenet1k-{split}-{shard:0{DIGITS[split]}d}.tar"
            with wds.TarWriter(str(root / name)) as sink:
                for i in range(count):
                    n = len(items)
                    label = n % 3
                    key = f"n0144076{label}_{n:05d}" if split == "train" else f"ILSVRC2012_val_{n + 1:08d}"
                    image = Image.new("RGB", (40, 30), PALETTE[label])
                    # as timm's writer: an int cls, a dict json (TarWriter encodes both)
                    sink.write({"__key__": key, "jpg": encode(image), "cls": label,
                                "json": {"label": label, "width": 40, "height": 30, "filename": f"{key}.JPEG"}})
                    items.append((key, label))
            names.append(name)
        filenames = [f"imagenet1k-{split}-{{{0:0{DIGITS[split]}d}..{len(sizes) - 1:0{DIGITS[split]}d}}}.tar"] \
            if brace else names
        info["splits"][split] = {"name": split, "filenames": filenames, "shard_lengths": sizes,
                                 "num_samples": sum(sizes), "alt_label": None}
        written[split] = items
    if alt_split:  # timm's ImageNet-22k: a second split over the same shards, labelled by a json field
        info["splits"]["train_12k"] = dict(info["splits"]["train"], name="train_12k", alt_label="label_12k")
    (root / index).write_text(json.dumps(info, indent=4))
    return written


def eval_items(spec: str) -> list[tuple[str, int]]:
    out = []
    for batch in build_eval_stream(spec, batch_size=4, image_size=16, num_workers=0):
        out += list(zip(batch["key"], batch["label"].tolist()))
    return out
