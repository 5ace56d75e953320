"""A test class that no training sample carries is named (issue #24): no classifier fitted on the training
features can predict it, so its test images count as wrong whatever the backbone. Few-shot, linear and kNN each
say so on the console and add `test_only_class/NAME`; results.json and results.md name the class."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_split

import ssl_vit.commands.eval as command
from ssl_vit.eval.context import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.registry import build

TINY = ["image_size=32", "batch_size=8", "num_workers=0", "crop_pct=1.0"]


def features(labels: list[int], seed: int) -> Features:
    generator = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.one_hot(torch.tensor(labels), 4).float() * 5 + torch.randn(len(labels), 4, generator=generator)
    return Features(x, torch.tensor(labels), [f"k{seed}_{i}" for i in range(len(labels))])


@pytest.mark.parametrize("name, options", [("fewshot", {"shots": [2], "seeds": 1}), ("knn", {"k": [3]}),
                                           ("linear", {"weight_decays": [1e-3], "max_iter": 20})])
def test_each_feature_protocol_names_a_test_class_without_training_samples(name, options, capsys):
    train = features([0, 1, 2] * 4, 0)  # classes 0-2
    test = features([0, 1, 2, 3, 3, 3] * 2, 1)  # class 3 only here: 6 of 12 test images
    metrics = build(name, **options).run(features_context(train, test))
    assert metrics["test_only_class/class 3"] == 6.0
    err = capsys.readouterr().err
    assert (f"{name}: 1 test class that no training sample carries: 'class 3' (6 images); no classifier can predict "
            "it, so those 50.0% of the test images count as wrong whatever the backbone") in err
    both = build(name, **options).run(features_context(train, features([0, 1, 2] * 2, 2)))
    assert not [m for m in both if m.startswith("test_only_class/")] and "no training sample" not in capsys.readouterr().err


def test_results_name_the_class_by_its_name(tmp_path: Path, capsys):
    """Shards whose train split has no image labelled c2 (its images carry c0) while the test split has 2."""
    data = tmp_path / "shards"
    write_split(data, "train", num_classes=3, per_class=3, relabel={2: 0})
    write_split(data, "validation", num_classes=3, per_class=2, num_shards=2, seed=1)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "eval"
    assert command.run(parser.parse_args(["knn", "--checkpoint", "random:vit_nano_patch4", "--train", str(data),
                                          "--test", str(data), "--out", str(out), "knn.k=[1]", *TINY])) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["test_classes_without_training_samples"] == {"c2": 2}
    assert record["metrics"]["test_only_class/c2"] == 2.0
    md = (out / "results.md").read_text()
    assert "- test classes that no training sample carries: `c2` (2 images); no classifier can predict them" in md
    assert "| test_only_class/c2 | 2 |" in md
    assert "knn: 1 test class that no training sample carries: 'c2' (2 images)" in capsys.readouterr().err
