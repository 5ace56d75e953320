"""Export folders: Hugging Face's `save_pretrained` layout (checked by transformers itself) and timm's Hub layout
(checked against timm's published config format and the keys its ViT builds, since timm does not import here)."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, ViTModel, pipeline
from transformers import ViTConfig as HFViTConfig

from ssl_vit.data.crops import center_crop
from ssl_vit.data.decode import decode_crop
from ssl_vit.data.normalize import normalize_uint8
from ssl_vit.errors import CheckpointError
from ssl_vit.models import create_model, load_backbone
from ssl_vit.models.formats import Preprocessing, write_folder
from ssl_vit.models.formats.timm import TIMM_VITS, timm_architecture
from weights_fixtures import images, randomized

NANO = "vit_nano_patch4"
PRE = Preprocessing(crop_pct=0.875)


# -------------------------------------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_hf_folder_loads_in_transformers_with_our_tokens(tmp_path: Path, pool: str) -> None:
    ours = randomized(create_model(NANO, global_pool=pool))
    write_folder(ours, tmp_path, "hf", PRE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = HFViTConfig.from_pretrained(tmp_path)  # a real transformers ViTConfig
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.image_size,
            config.patch_size, config.intermediate_size, config.layer_norm_eps) == (64, 2, 2, 32, 4, 256, 1e-6)
    assert config.architectures == ["ViTModel"] and config.ssl_vit["global_pool"] == pool

    hf, info = ViTModel.from_pretrained(tmp_path, output_loading_info=True)  # its pooler too: nothing initialised
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = images()
    with torch.no_grad():
        out = hf.eval()(pixel_values=x)
        tokens, pooler_output = out.last_hidden_state, out.pooler_output  # (B, 1 + N, D), (B, D)
        ours_tokens = ours.forward_features(x)
        assert (tokens - ours_tokens).abs().max().item() < 1e-5
        # The pooling the model card prescribes for each model gives our features.
        pooled = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(1)
        assert (pooled - ours.pool(ours_tokens)).abs().max().item() < 1e-5

    if pool == "token":  # the export's pooler: our features, or NaN where no ViTModel pooler can give them
        assert torch.allclose(pooler_output, ours.pool(ours_tokens), atol=1e-6)
    else:
        assert pooler_output.isnan().all()

    back = load_backbone(tmp_path).eval()  # the folder reads back, pooling included
    assert back.config == ours.config
    with torch.no_grad():
        assert torch.equal(back.forward_features(x), ours.forward_features(x))


def test_hf_preprocessor_is_our_eval_transform(tmp_path: Path) -> None:
    """AutoImageProcessor reads our mean, std, resize and crop, and gives the pixels our eval stream gives."""
    write_folder(randomized(create_model(NANO)), tmp_path, "hf", PRE)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 36} and processor.crop_size == {"height": 32, "width": 32}
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    yy, xx = np.mgrid[0:40, 0:56]  # a smooth 56×40 image: resize order and rounding matter little
    array = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    theirs = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"]  # (1, 3, 32, 32)
    pixels = decode_crop(buffer.getvalue(), lambda w, h: center_crop(w, h, PRE.crop_pct), 32)  # (32, 32, 3) uint8
    ours = normalize_uint8(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().mean().item() < 0.02  # same crop and scale: a wrong one differs by ~0.2


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_hf_feature_extraction_pipeline_pools_our_features(tmp_path: Path, pool: str) -> None:
    """`pipeline("image-feature-extraction", pool=True)` on the folder (offline: its own image processor) gives
    our pooled features of the processed image for a [class]-token model, NaN for a GAP model."""
    ours = randomized(create_model(NANO, global_pool=pool)).eval()
    write_folder(ours, tmp_path, "hf", PRE)
    yy, xx = np.mgrid[0:40, 0:56]
    image = Image.fromarray(np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8))
    pooled = torch.tensor(pipeline("image-feature-extraction", model=str(tmp_path), pool=True)(image))  # (1, D)
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = ours.pool(ours.forward_features(pixels))
    if pool == "token":
        assert pooled.shape == (1, 64) and torch.allclose(pooled, expected, atol=1e-5)
    else:
        assert pooled.isnan().all()


def test_hf_refuses_a_model_without_class_token(tmp_path: Path) -> None:
    model = create_model(NANO, class_token=False, global_pool="avg")
    with pytest.raises(CheckpointError, match="always has a \\[class\\] token.*--format timm"):
        write_folder(model, tmp_path / "out", "hf", PRE)
    assert not any((tmp_path / "out").iterdir())  # refused before anything was written


# ---------------------------------------------------------------------------------------------------- timm
# timm 1.0.x, timm/models/_pretrained.py: the fields of `PretrainedCfg` (an unknown key is a TypeError there).
TIMM_PRETRAINED_CFG_FIELDS = {
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag", "custom_load",
    "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation", "crop_pct",
    "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names",
    "label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier", "license", "description",
    "origin_url", "paper_name", "paper_ids", "notes",
}
# The config.json of timm's own Hub model timm/vit_base_patch16_224.augreg2_in21k_ft_in1k, as timm's
# `save_config_for_hf` writes it (architecture, num_classes, num_features, global_pool, pretrained_cfg).
TIMM_PUBLISHED = {
    "architecture": "vit_base_patch16_224", "num_classes": 1000, "num_features": 768, "global_pool": "token",
    "pretrained_cfg": {
        "tag": "augreg2_in21k_ft_in1k", "custom_load": False, "input_size": [3, 224, 224], "fixed_input_size": True,
        "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center", "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "num_classes": 1000, "pool_size": None, "first_conv": "patch_embed.proj",
        "classifier": "head",
    },
}
# timm's entrypoints set these model_args (vision_transformer.py, e.g. `vit_base_patch16_224`), and its
# VisionTransformer's defaults the rest.
TIMM_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool="token", embed_dim=768,
                     depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, class_token=True, no_embed_class=False,
                     reg_tokens=0, fc_norm=None, init_values=None, final_norm=True, pre_norm=False)


def timm_create_kwargs(config_json: dict) -> dict:
    """The VisionTransformer kwargs `timm.create_model("local-dir:OUT", pretrained=True)` ends up with: timm's
    `_hub._parse_model_cfg` (top-level num_classes into pretrained_cfg, model_args as kwarg defaults),
    the entrypoint (`dict(entry_args, **kwargs)`) and `_builder._update_default_model_kwargs` (num_classes and
    in_chans from pretrained_cfg, img_size from input_size when fixed_input_size)."""
    pretrained_cfg = dict(config_json["pretrained_cfg"], num_classes=config_json["num_classes"])
    assert set(pretrained_cfg) <= TIMM_PRETRAINED_CFG_FIELDS
    kwargs = dict(config_json.get("model_args", {}))
    width, depth, heads, patch, size = TIMM_VITS[config_json["architecture"]]
    entry = dict(patch_size=patch, embed_dim=width, depth=depth, num_heads=heads)
    kwargs.setdefault("num_classes", pretrained_cfg["num_classes"])
    kwargs.setdefault("in_chans", pretrained_cfg["input_size"][0])
    if pretrained_cfg.get("fixed_input_size"):
        kwargs.setdefault("img_size", pretrained_cfg["input_size"][-2:][0])
    return {**TIMM_DEFAULTS, **entry, **kwargs}


def timm_vit_keys(k: dict) -> dict[str, tuple[int, ...]]:
    """The state dict (key → shape) of timm's VisionTransformer(**k) for the options these tests use."""
    assert k["class_token"] or k["global_pool"] != "token"  # timm's own assertion
    d, grid = k["embed_dim"], (k["img_size"] // k["patch_size"]) ** 2
    prefix = int(k["class_token"]) + k["reg_tokens"]
    use_fc_norm = k["global_pool"] in ("avg", "avgmax", "max") if k["fc_norm"] is None else k["fc_norm"]
    hidden = int(d * k["mlp_ratio"])
    keys = {"pos_embed": (1, grid + (0 if k["no_embed_class"] else prefix), d),
            "patch_embed.proj.weight": (d, k["in_chans"], k["patch_size"], k["patch_size"]),
            "patch_embed.proj.bias": (d,)}
    if k["class_token"]:
        keys["cls_token"] = (1, 1, d)
    for i in range(k["depth"]):
        keys |= {f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm1.bias": (d,),
                 f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.proj.weight": (d, d),
                 f"blocks.{i}.attn.proj.bias": (d,), f"blocks.{i}.norm2.weight": (d,), f"blocks.{i}.norm2.bias": (d,),
                 f"blocks.{i}.mlp.fc1.weight": (hidden, d), f"blocks.{i}.mlp.fc1.bias": (hidden,),
                 f"blocks.{i}.mlp.fc2.weight": (d, hidden), f"blocks.{i}.mlp.fc2.bias": (d,)}
        if k["qkv_bias"]:
            keys[f"blocks.{i}.attn.qkv.bias"] = (3 * d,)
    norm = "fc_norm" if use_fc_norm else "norm"
    keys |= {f"{norm}.weight": (d,), f"{norm}.bias": (d,)}
    if k["num_classes"]:
        keys |= {"head.weight": (k["num_classes"], d), "head.bias": (k["num_classes"],)}
    return keys


def timm_features(model: torch.nn.Module, x: torch.Tensor, k: dict) -> torch.Tensor:
    """timm's `forward_head(forward_features(x), pre_logits=True)` for these kwargs, written with our modules:
    blocks, `norm` on every token unless fc_norm, pool ('token': [class]; 'avg': mean of the patch tokens),
    then `fc_norm` when enabled."""
    tokens = model.add_position_embedding(model.embed_patches(x))
    for block in model.blocks:
        tokens = block(tokens)
    use_fc_norm = k["global_pool"] == "avg" if k["fc_norm"] is None else k["fc_norm"]
    if not use_fc_norm:
        tokens = model.norm(tokens)
    pooled = tokens[:, 0] if k["global_pool"] == "token" else tokens[:, int(k["class_token"]):].mean(1)
    return model.norm(pooled) if use_fc_norm else pooled


@pytest.mark.parametrize("name, overrides", [
    (NANO, {}),  # a [class]-token model
    (NANO, {"global_pool": "avg"}),  # GAP with [class] token: our norm comes before the average
    (NANO, {"class_token": False, "global_pool": "avg"}),  # GAP without [class] token
    (NANO, {"img_size": 48}),
])
def test_timm_folder_is_what_timm_builds(tmp_path: Path, name: str, overrides: dict) -> None:
    ours = randomized(create_model(name, **overrides))
    write_folder(ours, tmp_path, "timm", PRE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config_json = json.loads((tmp_path / "config.json").read_text())
    # The published layout, plus model_args; pretrained_cfg carries the same fields with our preprocessing.
    assert set(config_json) == set(TIMM_PUBLISHED) | {"model_args"}  # no metadata given here
    assert set(config_json["pretrained_cfg"]) == set(TIMM_PUBLISHED["pretrained_cfg"])
    cfg = config_json["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"], cfg["crop_pct"], cfg["interpolation"]) == ([0.5] * 3, [0.5] * 3, 0.875, "bilinear")
    assert cfg["input_size"] == [3, ours.config.img_size, ours.config.img_size] and cfg["num_classes"] == 0
    assert config_json["num_classes"] == 0 and config_json["num_features"] == 64

    kwargs = timm_create_kwargs(config_json)
    assert (kwargs["num_classes"], kwargs["fc_norm"]) == (0, False)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        assert f.metadata()["format"] == "pt"
    assert shapes == timm_vit_keys(kwargs)  # timm's load_pretrained loads strictly: every key, every shape

    x = images()
    with torch.no_grad():  # timm's pooling for these kwargs gives our features
        assert torch.allclose(timm_features(ours, x, kwargs), ours.pool(ours.forward_features(x)), atol=1e-6)
    assert load_backbone(tmp_path).config == ours.config  # and the folder reads back


def test_timm_defaults_without_model_args_would_change_a_gap_model() -> None:
    """Why model_args spell out fc_norm: timm's default for global_pool='avg' moves the norm after pooling."""
    ours = randomized(create_model(NANO, global_pool="avg"))
    kwargs = {**TIMM_DEFAULTS, "img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2,
              "num_classes": 0, "global_pool": "avg"}
    assert "fc_norm.weight" in timm_vit_keys(kwargs) and "norm.weight" not in timm_vit_keys(kwargs)
    x = images()
    with torch.no_grad():
        assert not torch.allclose(timm_features(ours, x, kwargs), ours.pool(ours.forward_features(x)), atol=1e-3)


@pytest.mark.parametrize("name, img_size, expected", [
    ("vit_base_patch16", 224, "vit_base_patch16_224"),
    ("vit_base_patch16", 384, "vit_base_patch16_384"),
    ("vit_large_patch14", 224, "vit_large_patch14_224"),
    ("vit_huge_patch14", 448, "vit_huge_patch14_224"),  # no 448 entrypoint: model_args give img_size
    ("vit_tiny_patch32", 224, "vit_base_patch16_224"),  # no such timm model: every size from model_args
    (NANO, 32, "vit_base_patch16_224"),
])
def test_timm_architecture_is_the_matching_entrypoint(name: str, img_size: int, expected: str) -> None:
    with torch.device("meta"):
        config = create_model(name, img_size=img_size).config
    assert timm_architecture(config) == expected
    kwargs = timm_create_kwargs({"architecture": expected, "num_classes": 0, "model_args": {},
                                 "pretrained_cfg": {"input_size": [3, img_size, img_size], "fixed_input_size": True}})
    if expected.startswith(name):  # the entrypoint alone already builds this size
        assert (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"], kwargs["patch_size"]) == (
            config.embed_dim, config.depth, config.num_heads, config.patch_size)


def test_timm_refuses_what_timm_cannot_build(tmp_path: Path) -> None:
    model = create_model(NANO, norm_eps=1e-5)
    with pytest.raises(CheckpointError, match="LayerNorm eps 1e-06 and this model 1e-05"):
        write_folder(model, tmp_path, "timm", PRE)
    assert dataclasses.replace(model.config, norm_eps=1e-6) == create_model(NANO).config


def test_timms_own_hub_config_reads_as_its_architecture() -> None:
    """A folder from timm's Hub (no model_args) reads as its entrypoint's size at its input size."""
    from ssl_vit.models import model_config
    from ssl_vit.models.formats.timm import config_from_timm

    assert config_from_timm(TIMM_PUBLISHED) == model_config("vit_base_patch16")
    gap = dict(TIMM_PUBLISHED, global_pool="avg")  # timm's default GAP normalises after pooling: not ours
    assert config_from_timm(gap) is None
