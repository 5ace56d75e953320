"""Evaluation stops on features that are not finite (issue #24): a backbone with NaN weights (a diverged run's
checkpoint) or activations that overflow gives NaN/inf features, which every protocol turned into a meaningless
score. Extraction stops at the first such batch with one line naming the backbone, the data and the split, and
whether the weights or the precision are at fault; nothing is cached."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_dataset

import ssl_vit.commands.eval as command
from ssl_vit.errors import CheckpointError
from ssl_vit.eval.features import check_finite, extract_features
from ssl_vit.models import create_model
from ssl_vit.models.weights import save_backbone

NANO = "vit_nano_patch4"
TINY = ["image_size=32", "batch_size=8", "num_workers=0", "crop_pct=1.0"]


def batches(n: int = 2, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    for b in range(n):
        images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator)
        yield {"image": images, "label": torch.zeros(4, dtype=torch.long), "key": [f"s{b}_{i}" for i in range(4)]}


def poisoned(tensor: str = "blocks.0.attn.qkv.weight", value: float = float("nan")) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(NANO, img_size=32)
    with torch.no_grad():
        dict(model.named_parameters())[tensor].view(-1)[:5] = value
    return model


def test_nan_weights_stop_extraction_at_the_first_batch_naming_the_tensor():
    with pytest.raises(CheckpointError) as err:
        extract_features(poisoned(), batches(), source="--checkpoint run@200 on /data (split 'train')")
    message = str(err.value)
    assert message.startswith("--checkpoint run@200 on /data (split 'train'): the features are not finite (NaN or "
                              "inf) for 4 of the 4 images of a batch (e.g. sample 's0_0'); its weights hold 5 NaN or "
                              "inf values in 1 tensor (first blocks.0.attn.qkv.weight)")
    assert message.endswith("evaluate an earlier checkpoint") and "\n" not in message


def test_finite_weights_that_overflow_blame_the_precision():
    model = poisoned("patch_embed.proj.weight", 3e38)  # finite, but the first matmul overflows
    with pytest.raises(CheckpointError, match="its weights are finite, but its activations overflow even in fp32"):
        extract_features(model, batches(), desc="features train")
    feats = torch.tensor([[1.0, float("inf")], [0.0, 1.0]])
    with pytest.raises(CheckpointError, match=r"for 1 of the 2 images .*sample 'b'.*overflow under bf16; evaluate "
                                              r"with precision=fp32"):
        check_finite(feats, ["b", "c"], create_model(NANO), "x", "bf16")
    check_finite(torch.ones(2, 3), ["a", "b"], create_model(NANO), "x")  # finite: nothing to say


def test_the_eval_command_names_the_checkpoint_and_the_split_and_caches_nothing(tmp_path: Path):
    data = write_dataset(tmp_path / "shards", train_per_class=2, test_per_class=2)
    checkpoint = save_backbone(poisoned(), tmp_path / "diverged.safetensors")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args(["knn", "--checkpoint", str(checkpoint), "--train", str(data), "--test", str(data),
                              "--out", str(out), "knn.k=[1]", *TINY])
    with pytest.raises(CheckpointError) as err:
        command.run(args)
    assert str(err.value).startswith(f"--checkpoint {checkpoint} on {data} (split 'train'): the features are not "
                                     "finite (NaN or inf)")
    assert not list(out.rglob("features-*")) and not list(out.rglob("results.json"))
