"""One save function, one load function: round trips, foreign layouts, resampling, and refusals with reasons."""
from __future__ import annotations

import argparse
import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from weights_fixtures import RunsCode, images, randomized

from ssl_vit.errors import CheckpointError
from ssl_vit.models import create_model, infer_config, load_backbone, model_config, save_backbone, unwrap_state_dict
from ssl_vit.models.pos_embed import resample_pos_embed, sincos_2d

NANO = "vit_nano_patch4"


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 32) -> bool:
    x = images(2, size)
    with torch.no_grad():
        return torch.equal(a.eval().forward_features(x), b.eval().forward_features(x))


@pytest.fixture
def nano() -> torch.nn.Module:
    return randomized(create_model(NANO))


# ------------------------------------------------------------------------------------------ timm layout
def timm_vit_base_patch16_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """timm's vit_base_patch16_224 state dict, written out by hand."""
    keys = {
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 197, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "patch_embed.proj.bias": (768,),
    }
    for i in range(12):
        keys |= {
            f"blocks.{i}.norm1.weight": (768,), f"blocks.{i}.norm1.bias": (768,),
            f"blocks.{i}.attn.qkv.weight": (2304, 768), f"blocks.{i}.attn.qkv.bias": (2304,),
            f"blocks.{i}.attn.proj.weight": (768, 768), f"blocks.{i}.attn.proj.bias": (768,),
            f"blocks.{i}.norm2.weight": (768,), f"blocks.{i}.norm2.bias": (768,),
            f"blocks.{i}.mlp.fc1.weight": (3072, 768), f"blocks.{i}.mlp.fc1.bias": (3072,),
            f"blocks.{i}.mlp.fc2.weight": (768, 3072), f"blocks.{i}.mlp.fc2.bias": (768,),
        }
    keys |= {"norm.weight": (768,), "norm.bias": (768,)}
    if num_classes:
        keys |= {"head.weight": (num_classes, 768), "head.bias": (num_classes,)}
    return keys


@pytest.mark.parametrize("num_classes", [0, 1000])
def test_state_dict_is_timm_layout(num_classes: int) -> None:
    with torch.device("meta"):
        model = create_model("vit_base_patch16", num_classes=num_classes)
    expected = timm_vit_base_patch16_keys(num_classes)
    assert len(expected) == 4 + 12 * 12 + 2 + (2 if num_classes else 0)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


# ---------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip(tmp_path: Path, nano: torch.nn.Module) -> None:
    path = save_backbone(nano, tmp_path / "out" / "nano.safetensors", metadata={"step": 12})
    assert path == tmp_path / "out" / "nano.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["nano.json", "nano.safetensors"]
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format"] == "ssl_vit.backbone" and info["model"] == model_config(NANO).to_dict()
    assert (info["model_name"], info["num_params"], info["step"]) == (NANO, 107_456, 12)

    loaded = load_backbone(path)  # rebuilt from the JSON
    assert loaded.config == nano.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in nano.state_dict().items())
    assert same_outputs(nano, loaded)
    assert same_outputs(nano, load_backbone(path, create_model(NANO), strict=True))

    path.with_suffix(".json").unlink()  # a lone .safetensors still carries its config in the header
    assert load_backbone(path).config == nano.config


def test_round_trip_keeps_every_option(tmp_path: Path) -> None:
    model = randomized(create_model(NANO, class_token=False, global_pool="avg", pos_embed="sincos", num_classes=3,
                                    mlp_ratio=2.0, qkv_bias=False))
    loaded = load_backbone(save_backbone(model, tmp_path / "x.safetensors"))
    assert loaded.config == model.config
    assert not loaded.pos_embed.requires_grad
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch.jit shims
def test_save_unwraps_compile_and_ddp_wrappers(tmp_path: Path, nano: torch.nn.Module) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Wrapper(torch.nn.Module):  # what DDP and Accelerate put around the model: keys gain `module.`
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module = module

    plain = set(nano.state_dict())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:  # real DDP (one process): what Accelerate's extract_model_from_parallel unwraps
        for i, wrapped in enumerate([torch.compile(nano), DDP(nano), DDP(torch.compile(nano))]):
            assert set(wrapped.state_dict()) != plain
            loaded = load_backbone(save_backbone(wrapped, tmp_path / f"w{i}.safetensors"))
            assert set(loaded.state_dict()) == plain and same_outputs(nano, loaded)
            assert set(unwrap_state_dict(wrapped.state_dict())) == plain
    finally:
        dist.destroy_process_group()
    for wrapped in (Wrapper(nano), Wrapper(torch.compile(nano))):  # a state dict saved from any wrapper
        assert set(wrapped.state_dict()) != plain and set(unwrap_state_dict(wrapped.state_dict())) == plain

    t = torch.zeros(1)
    wrapped_keys = {"module._orig_mod.blocks.0.norm1.weight": t, "backbone._orig_mod.norm.bias": t}
    assert list(unwrap_state_dict(wrapped_keys)) == ["blocks.0.norm1.weight", "backbone.norm.bias"]
    with pytest.raises(CheckpointError, match="unwraps to 'norm.bias'"):
        unwrap_state_dict({"norm.bias": t, "module.norm.bias": t})


def test_meta_model_gets_the_tensors_assigned(tmp_path: Path, nano: torch.nn.Module) -> None:
    path = save_backbone(nano, tmp_path / "nano.safetensors")
    with torch.device("meta"):
        empty = create_model(NANO)
    loaded = load_backbone(path, empty)
    assert not any(p.is_meta for p in loaded.parameters())
    assert loaded.pos_embed.requires_grad and same_outputs(nano, loaded)


# ------------------------------------------------------------------------------------------ other sources
def test_accepts_state_dict_files_and_checkpoints(tmp_path: Path, nano: torch.nn.Module) -> None:
    state = nano.state_dict()
    objective = {f"backbone.{k}": v for k, v in state.items()} | {"head.proj.weight": torch.zeros(48, 64)}
    sources = {
        "timm.pth": state,
        "timm.bin": state,
        "ckpt_model.pt": {"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 5},
        "ckpt_backbone.pt": {"backbone": state, "step": 5},
        "ckpt_objective.pt": {"model": objective, "step": 5},
        "ddp.pth": {f"module.{k}": v for k, v in state.items()},
    }
    for name, obj in sources.items():
        torch.save(obj, tmp_path / name)
        assert same_outputs(nano, load_backbone(tmp_path / name, create_model(NANO))), name
        assert same_outputs(nano, load_backbone(obj)), name  # in memory, config inferred
    save_file(dict(state), tmp_path / "timm.safetensors")  # no JSON, no header: the config is inferred
    assert load_backbone(tmp_path / "timm.safetensors").config == nano.config


def test_refuses_pickles_that_need_code(tmp_path: Path, nano: torch.nn.Module) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": nano.state_dict(), "extra": RunsCode(marker)}, tmp_path / "evil.pth")
    code = re.escape(f"({io.open.__module__}.open")  # builtins.open pickles as io.open, `_io.open` from Python 3.12
    with pytest.raises(CheckpointError, match=r"evil.pth: refusing to load: unpickling it would run code " + code):
        load_backbone(tmp_path / "evil.pth")
    assert not marker.exists()
    # The one plain-data class allowed: the `args` Namespace MAE, DeiT and timm training checkpoints carry.
    torch.save({"model": nano.state_dict(), "args": argparse.Namespace(lr=0.1, extra=RunsCode(marker))},
               tmp_path / "args_with_code.pth")
    with pytest.raises(CheckpointError, match="refusing to load: unpickling it would run code"):
        load_backbone(tmp_path / "args_with_code.pth")  # its attributes are held to the same rule
    assert not marker.exists()
    torch.save({"model": nano.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    assert same_outputs(load_backbone(tmp_path / "args.pth", create_model(NANO)), nano)


def test_unreadable_files_name_the_path(tmp_path: Path, nano: torch.nn.Module) -> None:
    path = save_backbone(nano, tmp_path / "nano.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 10)
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_dir" / "model.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "words.pth").write_bytes(b"")
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "no_weights.pt")
    cases = {
        "truncated.safetensors": "not a readable safetensors file",
        "garbage.pth": "not a readable PyTorch file",
        "words.pth": "not a readable PyTorch file",
        "missing.pth": "no such file",
        "a_dir": r"is a directory; pass one weights file inside it \(model.safetensors\)",
        "no_weights.pt": "holds no weights",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=rf"{tmp_path / name}:? {message}"):
            load_backbone(tmp_path / name)
    with pytest.raises(CheckpointError, match="not a ViT state dict"):
        load_backbone({"fc.weight": torch.zeros(2, 2)})
    path.with_suffix(".json").write_text(json.dumps({"format": "ssl_vit.backbone", "model": {"widht": 3}}))
    with pytest.raises(CheckpointError, match=r"nano\.json: the model config does not fit"):
        load_backbone(path)


def test_save_refuses_other_suffixes_and_models(tmp_path: Path, nano: torch.nn.Module) -> None:
    with pytest.raises(CheckpointError, match=r"use .*nano\.safetensors"):
        save_backbone(nano, tmp_path / "nano.pth")
    with pytest.raises(TypeError, match="Linear"):
        save_backbone(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


# ------------------------------------------------------------------------------------- fitting the model
def test_pos_embed_resampling_14_to_24_is_continuous() -> None:
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    slopes = torch.linspace(-1, 1, 8)
    ramp = (rows[..., None] * slopes + cols[..., None] * slopes.flip(0)).reshape(1, 196, 8)  # (1, 196, D)
    cls = torch.randn(1, 1, 8)
    table = torch.cat([cls, ramp], dim=1)  # (1, 197, 8)
    out = resample_pos_embed(table, (24, 24))
    assert out.shape == (1, 577, 8)
    assert torch.equal(out[:, :1], cls)
    # Sample centres of the 24-grid in 14-grid coordinates (align_corners=False): where the ramp is evaluated.
    coord = (torch.arange(24.0) + 0.5) * 14 / 24 - 0.5
    r, c = torch.meshgrid(coord, coord, indexing="ij")
    expected = (r[..., None] * slopes + c[..., None] * slopes.flip(0)).reshape(1, 576, 8)
    error = (out[:, 1:] - expected).abs().reshape(24, 24, 8)  # values span [-13, 13]
    # PyTorch's bicubic kernel (a = -0.75, as timm) follows a ramp to ~0.1 of one old step inside, ~0.2 at the
    # replicate-padded border; a transposed or shifted grid would be off by whole steps.
    assert error[2:-2, 2:-2].max() < 0.12 and error.max() < 0.25
    grid = out[0, 1:].reshape(24, 24, 8)
    step = 14 / 24  # one new position is 14/24 of an old one, and |slope| <= 1 per old position
    assert (grid[1:] - grid[:-1]).abs().max() < 1.2 * step
    assert (grid[:, 1:] - grid[:, :-1]).abs().max() < 1.2 * step

    smooth = torch.sin(torch.stack([rows / 4, cols / 5, (rows + cols) / 6], -1)).reshape(1, 196, 3)
    back = resample_pos_embed(resample_pos_embed(torch.cat([cls[..., :3], smooth], 1), (24, 24)), (14, 14))
    assert torch.equal(back[:, :1], cls[..., :3])
    assert (back[:, 1:] - smooth).abs().max() < 0.01  # values span [-1, 1]


def test_224_checkpoint_loads_into_a_384_model() -> None:
    source = randomized(create_model("vit_base_patch16", depth=1))
    target = load_backbone(source.state_dict(), create_model("vit_base_patch16", depth=1, img_size=384))
    assert target.pos_embed.shape == (1, 577, 768)
    assert torch.equal(target.pos_embed[:, 0], source.pos_embed[:, 0])  # the [class] position is kept exactly
    assert torch.equal(target.pos_embed, resample_pos_embed(source.pos_embed.detach(), (24, 24)))
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        assert target.forward_features(torch.zeros(1, 3, 384, 384)).shape == (1, 577, 768)


def test_resampled_model_matches_on_the_fly_resampling(nano: torch.nn.Module) -> None:
    """Loading at 48px gives the network that the 32px model computes on a 48px input."""
    bigger = load_backbone(nano.state_dict(), create_model(NANO, img_size=48))
    x = images(2, 48)
    with torch.no_grad():
        assert (bigger.forward_features(x) - nano.forward_features(x)).abs().max() < 1e-6


def test_sincos_model_gets_a_fresh_table_for_its_grid() -> None:
    source = create_model(NANO, pos_embed="sincos")
    target = load_backbone(source.state_dict(), create_model(NANO, pos_embed="sincos", img_size=48))
    assert torch.equal(target.pos_embed[0, 1:], sincos_2d(64, (12, 12)))


def test_head_of_another_size_is_dropped_with_a_warning() -> None:
    source = randomized(create_model(NANO, num_classes=10)).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = load_backbone(source, create_model(NANO, num_classes=10))
        assert torch.equal(same.head.weight, source["head.weight"])
        headless = {k: v for k, v in source.items() if not k.startswith("head.")}
        fresh = load_backbone(headless, create_model(NANO, num_classes=5))  # fine-tuning from a backbone
        assert torch.count_nonzero(fresh.head.weight) == 0
    with pytest.warns(UserWarning, match="dropping its 10-class head; the model has num_classes=5"):
        other = load_backbone(source, create_model(NANO, num_classes=5))
    assert torch.count_nonzero(other.head.weight) == 0
    assert torch.equal(other.blocks[1].mlp.fc2.weight, source["blocks.1.mlp.fc2.weight"])
    with pytest.warns(UserWarning, match="dropping its 10-class head; the model has num_classes=0"):
        assert isinstance(load_backbone(source, NANO).head, torch.nn.Identity)


def test_size_mismatch_names_checkpoint_key_shapes_and_the_fitting_model(tmp_path: Path, nano: torch.nn.Module) -> None:
    path = save_backbone(nano, tmp_path / "nano.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_backbone(path, create_model(NANO, embed_dim=128, num_heads=4))
    message = str(err.value)
    assert str(path) in message and "key 'cls_token' has shape (1, 1, 64) in the checkpoint but (1, 1, 128)" in message
    assert "width 64, depth 2, patch 4, 32px: build it with create_model('vit_nano_patch4')" in message
    with pytest.raises(CheckpointError, match="nano.safetensors has 2 blocks but the model has 4.*vit_nano_patch4"):
        load_backbone(path, "vit_micro_patch4")
    deeper = create_model(NANO, depth=3).state_dict()
    with pytest.raises(CheckpointError, match="state dict has 3 blocks but the model has 2.*depth 3"):
        load_backbone(deeper, NANO)
    coarser = create_model(NANO, patch_size=8).state_dict()
    with pytest.raises(CheckpointError, match=r"'patch_embed.proj.weight' has shape \(64, 3, 8, 8\).*\(64, 3, 4, 4\)"):
        load_backbone(coarser, NANO)
    with pytest.raises(CheckpointError, match="has a \\[class\\] token .* class_token=False"):
        load_backbone(nano.state_dict(), create_model(NANO, class_token=False))


def test_strict_refuses_unknown_and_missing_keys(nano: torch.nn.Module) -> None:
    extra = dict(nano.state_dict()) | {"reg_token": torch.zeros(1, 4, 64)}
    with pytest.raises(CheckpointError, match=r"not in the model: reg_token \(1\).*strict=False"):
        load_backbone(extra, NANO)
    with pytest.warns(UserWarning, match="reg_token"):
        assert same_outputs(nano, load_backbone(extra, NANO, strict=False))
    missing = {k: v for k, v in nano.state_dict().items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: norm.weight \(1\)"):
        load_backbone(missing, NANO)


def test_timm_fc_norm_becomes_the_final_norm(nano: torch.nn.Module) -> None:
    """timm's avg-pool models keep the final norm as `fc_norm` (after pooling) and have no `norm`."""
    state = {k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v for k, v in nano.state_dict().items()}
    with pytest.warns(UserWarning, match="fc_norm as the final norm"):
        model = load_backbone(state, create_model(NANO, global_pool="avg"))
    assert torch.equal(model.norm.weight, nano.norm.weight)
    assert infer_config(state).global_pool == "avg"


def test_infer_config_reads_the_size_off_the_weights() -> None:
    for name in (NANO, "vit_micro_patch4"):
        assert infer_config(create_model(name).state_dict()) == model_config(name)
    odd = create_model(
        NANO, class_token=False, global_pool="avg", pos_embed="sincos", num_classes=7, mlp_ratio=3.0, img_size=48
    )
    assert infer_config(odd.state_dict()) == odd.config
    unregistered = create_model(NANO, embed_dim=96, num_heads=3).state_dict()
    with pytest.raises(CheckpointError, match="number of attention heads for width 96"):
        infer_config(unregistered)
    assert infer_config(unregistered, num_heads=3).num_heads == 3
