"""The feature cache is keyed by content: shards rebuilt under the same names and count, or weights rewritten in
place, are a miss — the score is the one a run without any cache reports, never the stale one."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from imagegen import make_image_folder

from data_tools.build import build_split
import ssl_vit.commands.eval as command
from ssl_vit.eval.backbones import resolve_backbone
from ssl_vit.models import create_model
from ssl_vit.models.weights import save_backbone

TINY = ["image_size=32", "batch_size=8", "num_workers=0", "crop_pct=1.0", "knn.k=[1]"]


def knn(checkpoint: str, shards: Path, out: Path) -> float:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["knn", "--checkpoint", checkpoint, "--train", f"{shards}:train",
                              "--test", f"{shards}:validation", "--out", str(out), *TINY])
    assert command.run(args) == 0
    return json.loads((out / "results.json").read_text())["metrics"]["knn/k1_top1"]


def build(src: Path, out: Path, split: str) -> None:
    build_split(src, out, split, overwrite=True, progress=False)


def test_test_shards_rebuilt_under_the_same_names_are_a_cache_miss(tmp_path: Path):
    classes = ("cat", "dog", "fox")
    make_image_folder(tmp_path / "a", classes=classes, per_class=6, seed=0, mixed=False)
    # The same class names and counts, but each class wears another class's colour.
    make_image_folder(tmp_path / "b", classes=("dog", "fox", "cat"), per_class=6, seed=1, mixed=False)
    shards = tmp_path / "shards"
    build(tmp_path / "a", shards, "train")
    build(tmp_path / "a", shards, "validation")
    out = tmp_path / "eval"
    before = knn("random:vit_nano_patch4", shards, out)
    assert before == 100.0  # colours separate the classes even for a random ViT

    names = sorted(p.name for p in shards.glob("validation-*.tar"))
    dates = {p.name: p.stat().st_mtime_ns for p in shards.glob("validation-*.tar")}
    build(tmp_path / "b", shards, "validation")
    assert sorted(p.name for p in shards.glob("validation-*.tar")) == names
    for name, date in dates.items():  # even the old dates: only the content tells
        os.utime(shards / name, ns=(date, date))

    after = knn("random:vit_nano_patch4", shards, out)
    truth = knn("random:vit_nano_patch4", shards, tmp_path / "no_cache")
    assert after == truth and after < 50.0, (before, after, truth)
    assert len(list((out / "cache").glob("features-*.pt"))) == 3  # train once, validation twice


def test_weights_rewritten_in_place_are_a_cache_miss(tmp_path: Path):
    torch.manual_seed(0)
    path = save_backbone(create_model("vit_nano_patch4"), tmp_path / "vit.safetensors")
    first = resolve_backbone(str(path)).fingerprint
    date = path.stat().st_mtime_ns
    torch.manual_seed(1)
    save_backbone(create_model("vit_nano_patch4"), path)  # same size, same name
    os.utime(path, ns=(date, date))
    assert resolve_backbone(str(path)).fingerprint != first
