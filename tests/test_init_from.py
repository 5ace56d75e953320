"""`init_from`: an objective starts from existing weights — ours, timm's, Hugging Face's or MAE's — and the
loaded backbone equals the source; the report names what loaded, what is new and what was dropped."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTConfig as HFViTConfig
from transformers import ViTModel

from ssl_vit.errors import CheckpointError
from ssl_vit.models import create_model, load_backbone, save_backbone, to_hf_config
from ssl_vit.models.formats import Preprocessing, write_folder
from ssl_vit.models.init_from import init_from
from ssl_vit.models.vit import Block
from ssl_vit.objectives import build
from weights_fixtures import images, randomized

NANO = "vit_nano_patch4"


def mpp(**overrides) -> torch.nn.Module:
    """A fresh MPP objective around a nano backbone at its own random init (seeded differently from sources)."""
    torch.manual_seed(123)
    return build("mpp", create_model(NANO, **overrides), target="mean_color")


def assert_backbone_equals(backbone: torch.nn.Module, source: torch.nn.Module) -> None:
    ours, theirs = backbone.state_dict(), source.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone.eval().forward_features(x), source.eval().forward_features(x))


NEW_MPP = "new 5 (head.* ×4, mask_token); "


def test_from_an_ssl_vit_export_file_and_folders(tmp_path: Path) -> None:
    source = randomized(create_model(NANO, global_pool="avg"))
    exports = [save_backbone(source, tmp_path / "b.safetensors")]
    for fmt in ("hf", "timm"):
        write_folder(source, tmp_path / fmt, fmt, Preprocessing())
        exports.append(tmp_path / fmt)
    for path in exports:
        objective = mpp(global_pool="avg")
        line = init_from(path, objective.backbone, objective)
        assert_backbone_equals(objective.backbone, source)
        dropped = "2 (pooler.* ×2)" if path.name == "hf" else "0"  # the hf folder's ViTModel pooler (NaN for GAP)
        assert line == f"init_from {path}: loaded 30 tensors; {NEW_MPP}dropped {dropped}"


def test_from_timm_files(tmp_path: Path) -> None:
    """timm's Hub files (a bare state dict, .safetensors or .pth) and its training checkpoints (`state_dict`,
    with `args` as an argparse.Namespace), with a 1000-class head the backbone drops."""
    source = randomized(create_model(NANO))
    state = {**source.state_dict(), "head.weight": torch.randn(1000, 64), "head.bias": torch.randn(1000)}
    save_file(state, tmp_path / "timm.safetensors")
    torch.save(state, tmp_path / "timm.pth")
    torch.save({"epoch": 9, "arch": "vit_nano", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "args": argparse.Namespace(model="vit_nano", lr=1e-3)}, tmp_path / "checkpoint-9.pth.tar")
    for name in ("timm.safetensors", "timm.pth", "checkpoint-9.pth.tar"):
        objective = mpp()
        with pytest.warns(UserWarning, match="dropping its 1000-class head"):
            line = init_from(tmp_path / name, objective.backbone, objective)
        assert_backbone_equals(objective.backbone, source)
        assert line.endswith(f"loaded 30 tensors; {NEW_MPP}dropped 2 (head.* ×2)")


def test_from_a_hugging_face_folder(tmp_path: Path) -> None:
    torch.manual_seed(7)
    hf = ViTModel(HFViTConfig(**to_hf_config(create_model(NANO).config))).eval()  # with its pooler
    hf.save_pretrained(tmp_path / "hf")
    objective = mpp()
    line = init_from(tmp_path / "hf", objective.backbone, objective)
    assert line.endswith(f"loaded 30 tensors; {NEW_MPP}dropped 2 (pooler.* ×2)")
    x = images()
    with torch.no_grad():
        reference = hf(pixel_values=x).last_hidden_state
        assert (objective.backbone.eval().forward_features(x) - reference).abs().max().item() < 1e-5
    assert_backbone_equals(objective.backbone, load_backbone(tmp_path / "hf"))


def write_mae_checkpoint(path: Path, encoder: torch.nn.Module, decoder_dim: int = 32, decoder_depth: int = 1) -> None:
    """facebookresearch/mae's `checkpoint-*.pth` for `encoder`: MaskedAutoencoderViT's state dict (the encoder
    in timm's names, then decoder_embed, mask_token, decoder_pos_embed, decoder_blocks, decoder_norm,
    decoder_pred), the optimizer, epoch, loss scaler, and the run's args as an argparse.Namespace."""
    gen = torch.Generator().manual_seed(11)
    tokens, patch = encoder.pos_embed.shape[1], encoder.patch_size
    model = dict(encoder.state_dict())
    model["decoder_embed.weight"] = torch.randn(decoder_dim, encoder.embed_dim, generator=gen)
    model["decoder_embed.bias"] = torch.randn(decoder_dim, generator=gen)
    model["mask_token"] = torch.randn(1, 1, decoder_dim, generator=gen)
    model["decoder_pos_embed"] = torch.randn(1, tokens, decoder_dim, generator=gen)
    for i in range(decoder_depth):  # timm's Block, as MAE's decoder uses it
        block = Block(decoder_dim, 2, 4.0, True, 0.0, 1e-6)
        model |= {f"decoder_blocks.{i}.{k}": v for k, v in block.state_dict().items()}
    model |= {"decoder_norm.weight": torch.ones(decoder_dim), "decoder_norm.bias": torch.zeros(decoder_dim),
              "decoder_pred.weight": torch.randn(patch * patch * 3, decoder_dim, generator=gen),
              "decoder_pred.bias": torch.zeros(patch * patch * 3)}
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0]}]}
    args = argparse.Namespace(model="mae_vit_nano_patch4", input_size=32, mask_ratio=0.75, norm_pix_loss=True)
    torch.save({"model": model, "optimizer": optimizer, "epoch": 799,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}, "args": args}, path)


def test_from_an_mae_checkpoint(tmp_path: Path) -> None:
    source = randomized(create_model(NANO))
    path = tmp_path / "checkpoint-799.pth"
    write_mae_checkpoint(path, source)
    objective = mpp()
    line = init_from(path, objective.backbone, objective)
    assert_backbone_equals(objective.backbone, source)
    # MAE's [MASK] has the decoder's width and is dropped; ours is new.
    assert line.endswith(f"loaded 30 tensors; {NEW_MPP}dropped 20 (decoder_blocks.* ×12, decoder_embed.* ×2, "
                         "decoder_norm.* ×2, decoder_pos_embed, decoder_pred.* ×2, mask_token)")
    # The same checkpoint as a backbone on its own, the size read off its shapes.
    assert_backbone_equals(load_backbone(path), source)


def test_grid_change_resamples_pos_embed_and_size_change_fails_in_one_line(tmp_path: Path) -> None:
    source = randomized(create_model(NANO))
    path = save_backbone(source, tmp_path / "b.safetensors")
    objective = mpp(img_size=48)  # a 12×12 grid from an 8×8 one
    init_from(path, objective.backbone, objective)
    assert objective.backbone.pos_embed.shape == (1, 145, 64)
    assert torch.equal(objective.backbone.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    wider = build("mpp", create_model("vit_micro_patch4"), target="mean_color")
    with pytest.raises(CheckpointError) as err:
        init_from(path, wider.backbone, wider)
    message = str(err.value)
    assert "\n" not in message and "has 2 blocks but the model has 4" in message
    assert "create_model('vit_nano_patch4')" in message


def test_fine_tuning_model_reports_its_new_head(tmp_path: Path) -> None:
    source = randomized(create_model(NANO))
    path = save_backbone(source, tmp_path / "b.safetensors")
    classifier = build("classification", create_model(NANO, num_classes=10), num_classes=10)
    line = init_from(path, classifier.backbone, classifier)
    assert "; new 2 (backbone.head.* ×2); dropped 0" in line
    assert torch.equal(classifier.backbone.head.weight, torch.zeros(10, 64))


def test_eval_accepts_the_same_sources(tmp_path: Path) -> None:
    """`ssl-vit eval --checkpoint` resolves each source to a builder whose backbone is the source's."""
    from ssl_vit.eval.backbones import resolve_backbone

    source = randomized(create_model(NANO))
    for fmt in ("hf", "timm"):
        write_folder(source, tmp_path / fmt, fmt, Preprocessing())
    write_mae_checkpoint(tmp_path / "checkpoint-9.pth", source)
    torch.manual_seed(7)
    hf = ViTModel(HFViTConfig(**to_hf_config(create_model(NANO).config))).eval()
    hf.save_pretrained(tmp_path / "theirs")
    for spec, model, expected in [(tmp_path / "hf", None, source), (tmp_path / "timm", None, source),
                                  (tmp_path / "checkpoint-9.pth", NANO, source),
                                  (tmp_path / "theirs", None, load_backbone(tmp_path / "theirs"))]:
        resolved = resolve_backbone(str(spec), model)
        assert resolved.config == source.config
        assert_backbone_equals(resolved.build(), expected)
    with pytest.raises(CheckpointError, match="pass --model NAME \\(its shapes fit --model vit_nano_patch4\\)"):
        resolve_backbone(str(tmp_path / "checkpoint-9.pth"))


# ------------------------------------------------------------------------------------- the recipe key, wired
def test_pretraining_recipe_starts_from_init_from_and_a_resume_ignores_it(tmp_path, pretrain, pretrain_shards_32,
                                                                         capsys):
    """`model.init_from` in a pretraining recipe: the backbone starts as the source (after one AdamW step of
    lr 1e-12 it is still the source), the report line names the new MPP head and [MASK]; a resume keeps its own."""
    source = randomized(create_model(NANO, img_size=32))
    path = tmp_path / "start"
    write_folder(source, path, "timm", Preprocessing())
    run = tmp_path / "run"
    tiny = {"optim.lr": 1e-12, "optim.min_lr": 0.0, "optim.warmup_steps": 1, "train.checkpoint_every": 1}
    assert pretrain(pretrain_shards_32, run, **{"model.init_from": str(path), "train.total_steps": 2, **tiny}) == 0
    assert f"init_from {path}: loaded 30 tensors; {NEW_MPP}dropped 0" in capsys.readouterr().out
    state = torch.load(run / "checkpoints" / "step_0000001" / "state.pt", weights_only=True)
    loaded = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert all(torch.allclose(loaded[k], v, atol=1e-9) for k, v in source.state_dict().items())

    assert pretrain(pretrain_shards_32, run, "--resume", "auto", **{"model.init_from": str(path),
                                                                    "train.total_steps": 3, **tiny}) == 0
    assert "init_from" not in capsys.readouterr().out


def test_init_from_errors_are_one_line(tmp_path, ssl_vit, pretrain_shards_32):
    from conftest import SMOKE

    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={pretrain_shards_32}",
                      f"output_dir={tmp_path / 'run'}", f"model.init_from={tmp_path / 'nowhere.pth'}")
    assert rc == 2 and err.count("\n") == 1 and "model.init_from" in err and "no such file or directory" in err
    wide = save_backbone(randomized(create_model("vit_micro_patch4")), tmp_path / "micro.safetensors")
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={pretrain_shards_32}",
                      f"output_dir={tmp_path / 'run'}", f"model.init_from={wide}")
    assert rc == 2 and err.count("\n") == 1 and "has 4 blocks but the model has 2" in err


def test_fine_tuning_recipe_takes_init_from(tmp_path, ssl_vit):
    from eval_fixtures import write_dataset

    source = randomized(create_model(NANO))
    path = save_backbone(source, tmp_path / "b.safetensors")
    data = write_dataset(tmp_path / "shards", train_per_class=4, test_per_class=2)
    recipe = Path(__file__).resolve().parents[1] / "recipes/finetune/smoke.yaml"
    common = ["eval", "finetune", "--train", str(data), "--test", str(data), "--config", str(recipe)]
    rc, err = ssl_vit(*common, "--checkpoint", str(path), "--out", str(tmp_path / "x"), f"model.init_from={path}")
    assert rc == 2 and err.count("\n") == 1 and "model.init_from" in err and "keep one" in err
    out = tmp_path / "ft"
    rc, err = ssl_vit(*common, "--out", str(out), f"model.init_from={path}", "train.total_steps=2", "optim.warmup_steps=1", "val_every=2",
                      "train.checkpoint_every=2")
    assert rc == 0, err
    import json

    assert json.loads((out / "results.json").read_text())["checkpoint"] == str(path)


def test_pretraining_init_from_takes_a_run_directory(tmp_path, pretrain, pretrain_shards_32, ssl_vit, capsys):
    """`model.init_from=RUN_DIR` starts from that run's latest checkpoint, as `eval --checkpoint` and `export` read
    a run (it once failed: "is a directory; pass one weights file inside it"); a run whose `latest` is lost names
    its intact checkpoints."""
    from conftest import SMOKE

    tiny = {"optim.lr": 1e-12, "optim.min_lr": 0.0, "optim.warmup_steps": 1, "train.checkpoint_every": 1}
    first = tmp_path / "first"
    assert pretrain(pretrain_shards_32, first, **{"train.total_steps": 2, **tiny, "optim.lr": 1e-3}) == 0
    capsys.readouterr()
    latest = first / "checkpoints" / "step_0000002"
    second = tmp_path / "second"
    assert pretrain(pretrain_shards_32, second, **{"model.init_from": str(first), "train.total_steps": 1, **tiny,
                                                   "optim.warmup_steps": 0}) == 0
    assert f"init_from {latest / 'state.pt'}: loaded 30 tensors; " in capsys.readouterr().out
    started = torch.load(second / "checkpoints" / "step_0000001" / "state.pt", weights_only=True)["model"]
    source = torch.load(latest / "state.pt", weights_only=True)["model"]
    assert all(torch.allclose(started[k], v, atol=1e-9) for k, v in source.items() if k.startswith("backbone."))

    (first / "checkpoints" / "latest").unlink()
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={pretrain_shards_32}",
                      f"output_dir={tmp_path / 'third'}", f"model.init_from={first}")
    assert rc == 2 and err.count("\n") == 1 and f"model.init_from {first}: " in err
    assert "intact checkpoints: step_0000001, step_0000002" in err
