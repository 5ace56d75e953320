"""Fine-tuning: layer-wise lr decay groups, resolution change, and a tiny run that beats chance."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_dataset, write_split

from ssl_vit.errors import ConfigError
import ssl_vit.commands.eval as command
from ssl_vit.eval.backbones import resolve_backbone
from ssl_vit.train.layer_decay import build_finetune_optimizer, param_groups_lrd
from ssl_vit.config import FinetuneOptim, load_finetune_config
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


def finetune_cli(train: Path, test: Path, out: Path, *overrides: str) -> dict:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["finetune", "--checkpoint", "random:vit_nano_patch4", "--train", str(train), "--test",
                              str(test), "--config", str(ROOT / "recipes/finetune/smoke.yaml"), "--out", str(out),
                              *overrides])
    assert command.run(args) == 0
    return json.loads((out / "results.json").read_text())["metrics"]


@pytest.mark.timeout(180)
def test_tiny_finetune_beats_chance_and_reports_test_at_the_end(tmp_path):
    data = write_dataset(tmp_path / "shards", train_per_class=12, test_per_class=6)
    out = tmp_path / "ft"
    metrics = finetune_cli(data, data, out)
    assert set(metrics) == {"finetune/top1"}  # no selection asked for: test once, at the end of the schedule
    assert metrics["finetune/top1"] >= 80.0  # 3 colour-coded classes: chance is 33%
    assert not (out / "finetune" / "eval.jsonl").exists()  # nothing scored along the way
    assert (out / "finetune" / "checkpoints" / "latest").is_file()  # the trainer's checkpoints: resumable
    assert finetune_cli(data, data, out) == metrics  # the same command again: finished, nothing retrains


@pytest.mark.timeout(300)
def test_selection_uses_a_training_holdout_never_test_labels(tmp_path):
    """The same run against test shards whose labels are wrong: the same validations, the same selected step."""
    data = write_dataset(tmp_path / "shards", train_per_class=12, test_per_class=6)
    wrong = tmp_path / "wrong"
    write_split(wrong, "train", num_classes=3, per_class=12, num_shards=3, seed=0)  # identical to data's train
    write_split(wrong, "validation", num_classes=3, per_class=6, num_shards=2, seed=1, relabel={0: 1, 1: 2, 2: 0})
    select = ["holdout_fraction=0.25", "train.total_steps=36", "val_every=12"]
    right_m = finetune_cli(data, data, tmp_path / "a", *select)
    wrong_m = finetune_cli(wrong, wrong, tmp_path / "b", *select)
    history = [(tmp_path / run / "finetune" / "eval.jsonl").read_text() for run in ("a", "b")]
    assert history[0] == history[1] and [json.loads(l)["step"] for l in history[0].splitlines()] == [12, 24, 36]
    assert "finetune/top1" not in history[0]  # only holdout scores along the way
    for key in ("finetune/selected_step", "finetune/holdout_top1"):
        assert right_m[key] == wrong_m[key]
    assert right_m["finetune/top1"] != wrong_m["finetune/top1"]  # test labels decide the reported score only
    assert set(right_m) == {"finetune/top1", "finetune/top1_selected", "finetune/selected_step", "finetune/holdout_top1"}


def test_holdout_splits_a_split_by_key_in_every_stream(tmp_path):
    from ssl_vit.data.split import Holdout
    from ssl_vit.data.stream import TrainStreamOptions, build_eval_stream, build_train_stream

    data = write_dataset(tmp_path / "shards", train_per_class=12, test_per_class=2)
    kept = {}
    for held in (True, False):
        with build_eval_stream(f"{data}:train", batch_size=5, image_size=32, num_workers=0,
                               holdout=Holdout(0.25, held)) as stream:
            kept[held] = [k for batch in stream for k in batch["key"]]
    assert not set(kept[True]) & set(kept[False]) and len(kept[True]) + len(kept[False]) == 36
    assert 3 <= len(kept[True]) <= 18  # a quarter of 36, give or take the hash
    assert all(Holdout(0.25, True).keeps(k) for k in kept[True]) and not any(Holdout(0.25, True).keeps(k) for k in kept[False])
    options = TrainStreamOptions(batch_size=36, image_size=32, num_workers=0, shuffle_buffer=0)
    with build_train_stream(f"{data}:train", options, seed=0, holdout=Holdout(0.25, held=False)) as stream:
        first = next(iter(stream))
    assert first["label"].shape == (36,)  # a full batch, drawn from the training part only (it cycles)
