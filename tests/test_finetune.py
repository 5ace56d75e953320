"""Fine-tuning: layer-wise lr decay groups, resolution change, and a tiny run that beats chance."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_dataset

from ssl_vit.errors import ConfigError
from ssl_vit.eval import command
from ssl_vit.eval.backbones import resolve_backbone
from ssl_vit.eval.finetune import build_finetune_optimizer, param_groups_lrd
from ssl_vit.eval.finetune_config import FinetuneOptim, load_finetune_config
from ssl_vit.models import create_model
from ssl_vit.models.pos_embed import resample_pos_embed
from ssl_vit.models.weights import save_backbone
from ssl_vit.objectives import ImageClassification

ROOT = Path(__file__).resolve().parents[1]


def test_layer_wise_lr_decay_and_weight_decay_exemptions():
    objective = ImageClassification(create_model("vit_nano_patch4"), num_classes=3)  # depth 2
    groups = param_groups_lrd(objective, FinetuneOptim(name="adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5))
    by_param = {id(p): g for g in groups for p in g["params"]}
    lr = {name: by_param[id(p)]["lr"] for name, p in objective.named_parameters()}
    wd = {name: by_param[id(p)]["weight_decay"] for name, p in objective.named_parameters()}
    assert lr["backbone.patch_embed.proj.weight"] == lr["backbone.pos_embed"] == 0.5**3
    assert lr["backbone.blocks.0.attn.qkv.weight"] == 0.5**2
    assert lr["backbone.blocks.1.mlp.fc2.bias"] == 0.5
    assert lr["backbone.norm.weight"] == lr["backbone.head.weight"] == 1.0
    assert wd["backbone.blocks.0.attn.qkv.weight"] == wd["backbone.head.weight"] == 0.05
    assert wd["backbone.blocks.0.attn.qkv.bias"] == wd["backbone.pos_embed"] == wd["backbone.cls_token"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(objective.parameters()))
    sgd = build_finetune_optimizer(objective, FinetuneOptim(name="sgd", lr=0.1, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and {g["lr"] for g in sgd.param_groups} == {0.1}  # decay 1: one rate


def test_resolution_change_resamples_position_embeddings(tmp_path):
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4")  # 32px: an 8×8 grid
    path = save_backbone(model, tmp_path / "b.safetensors")
    big = resolve_backbone(str(path)).build(img_size=48)  # a 12×12 grid
    assert big.pos_embed.shape == (1, 1 + 144, 64)
    torch.testing.assert_close(big.pos_embed, resample_pos_embed(model.pos_embed.detach(), (12, 12), 1, old_grid=(8, 8)))
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_recipes_load_and_typos_fail():
    paper = load_finetune_config(ROOT / "recipes/finetune/vit_b16_paper.yaml")
    assert (paper.optim.name, paper.optim.momentum, paper.optim.weight_decay, paper.optim.grad_clip) == ("sgd", 0.9, 0.0, 1.0)
    assert (paper.train.global_batch, paper.data.image_size) == (512, 384)
    mae = load_finetune_config(ROOT / "recipes/finetune/vit_b16_mae.yaml")
    assert (mae.optim.name, mae.optim.layer_decay, mae.model["drop_path_rate"]) == ("adamw", 0.65, 0.1)
    assert mae.objective == {"label_smoothing": 0.1, "mixup_alpha": 0.8, "cutmix_alpha": 1.0}
    with pytest.raises(ConfigError, match="optim.layer_decay must be in"):
        load_finetune_config(ROOT / "recipes/finetune/smoke.yaml", ["optim.layer_decay=1.5"])
    with pytest.raises(ConfigError, match="objective.mixup is not an option"):
        load_finetune_config(ROOT / "recipes/finetune/smoke.yaml", ["objective.mixup=0.2"])


@pytest.mark.timeout(120)
def test_tiny_finetune_beats_chance(tmp_path):
    data = write_dataset(tmp_path / "shards", train_per_class=12, test_per_class=6)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "ft"
    args = parser.parse_args(["finetune", "--checkpoint", "random:vit_nano_patch4", "--train", str(data), "--test",
                              str(data), "--config", str(ROOT / "recipes/finetune/smoke.yaml"), "--out", str(out)])
    assert command.run(args) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["finetune/top1"] >= 80.0  # 3 colour-coded classes: chance is 33%
    assert metrics["finetune/top1_best"] >= metrics["finetune/top1"]
    validations = [json.loads(line) for line in (out / "finetune" / "eval.jsonl").read_text().splitlines()]
    assert [v["step"] for v in validations] == [12, 24, 36]  # val_every 12 of 36 steps
    assert (out / "finetune" / "checkpoints" / "latest").is_file()  # the trainer's checkpoints: resumable
    assert command.run(args) == 0  # the same command again: the run is finished, nothing retrains
    again = json.loads((out / "results.json").read_text())["metrics"]
    assert again == metrics
    assert len((out / "finetune" / "eval.jsonl").read_text().splitlines()) == 3
