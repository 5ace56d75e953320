"""Tiny labelled shards for the evaluation tests: one colour per class, so even a tiny ViT separates them.

Written with webdataset's TarWriter in the layout docs/architecture.md fixes (`__key__`, `png`, `cls` as ASCII
digits, `json`) plus `_info.json`, several splits sharing one directory.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from ssl_vit.models import create_model

# Far apart in RGB: class k is recognisable from any crop of any of its images.
PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (200, 60, 210), (40, 210, 210)]


def class_image(k: int, rng: random.Random, size: int = 40) -> Image.Image:
    """Class k's colour with per-image brightness jitter and a few random pixels (no two images equal)."""
    shift = rng.randint(-25, 25)
    base = tuple(max(0, min(255, c + shift)) for c in PALETTE[k % len(PALETTE)])
    img = Image.new("RGB", (size, size), base)
    for _ in range(12):
        img.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randrange(256) for _ in range(3)))
    return img


def write_split(
    root: Path, split: str, *, num_classes: int = 3, per_class: int = 8, num_shards: int = 3, seed: int = 0,
    size: int = 40, relabel: dict[int, int] | None = None,
) -> list[str]:
    """Write `root/{split}-00000k.tar`, consecutive runs of the class-cycling sample list, so that every shard
    (and so every rank) holds every class, as shuffled real shards do; returns the keys. `relabel` maps the
    class an image shows to the label written for it (wrong labels, for tests that must not read them)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{split}-{seed}")
    samples = [(k, i) for i in range(per_class) for k in range(num_classes)]
    n = len(samples)
    shards = [samples[s * n // num_shards : (s + 1) * n // num_shards] for s in range(num_shards)]
    names, keys = [], []
    for s, members in enumerate(shards):
        name = f"{split}-{s:06d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for k, i in members:
                buf = io.BytesIO()
                class_image(k, rng, size).save(buf, format="PNG")
                key = f"{split}_c{k}_{i:04d}"
                meta = {"path": f"c{k}/{i}.png", "class": f"c{k}", "width": size, "height": size}
                sink.write({"__key__": key, "png": buf.getvalue(), "cls": str((relabel or {}).get(k, k)).encode(), "json": json.dumps(meta).encode()})
                keys.append(key)
        names.append(name)
    info_path = root / "_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"splits": {}}
    info["splits"][split] = {
        "name": split, "num_samples": len(samples), "filenames": names, "shard_lengths": [len(m) for m in shards],
        "class_names": [f"c{k}" for k in range(num_classes)], "num_classes": num_classes,
    }
    info_path.write_text(json.dumps(info, indent=1))
    return keys


def write_dataset(root: Path, *, train_per_class: int = 8, test_per_class: int = 4, num_classes: int = 3) -> Path:
    """A shard directory with splits `train` and `validation`."""
    write_split(root, "train", num_classes=num_classes, per_class=train_per_class, num_shards=3, seed=0)
    write_split(root, "validation", num_classes=num_classes, per_class=test_per_class, num_shards=2, seed=1)
    return root


def nano_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A vit_nano_patch4 state dict from a fixed seed (stands in for a pretrained checkpoint)."""
    torch.manual_seed(seed)
    return create_model("vit_nano_patch4").state_dict()


def _extract_main(data: str, out: str) -> None:
    """Run under `accelerate launch`: each rank records the keys it read itself and the gathered features."""
    from accelerate import Accelerator

    from ssl_vit.config import EvalData
    from ssl_vit.eval.context import EvalContext

    accelerator = Accelerator(cpu=True)
    ctx = EvalContext(
        backbone_factory=lambda: create_model("vit_nano_patch4").requires_grad_(False),
        data=EvalData(train=data, test=data, image_size=32, batch_size=5, num_workers=2),
        accelerator=accelerator,
    )
    torch.manual_seed(0)  # the same random weights on every rank
    with ctx.eval_batches("train") as stream:
        own = [key for batch in stream for key in batch["key"]]
    torch.manual_seed(0)
    feats = ctx.features("train")
    torch.save({"own": own, "keys": feats.keys, "x": feats.x, "labels": feats.labels}, f"{out}/rank{ctx.rank}.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group, so both ranks exit cleanly


if __name__ == "__main__":
    import sys

    _extract_main(sys.argv[1], sys.argv[2])
