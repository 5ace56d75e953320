"""The timm folder: `model.safetensors` in timm's keys plus the `config.json` timm's Hub loader reads.

    timm.create_model("local-dir:OUT", pretrained=True)        # timm >= 1.0.16; "hf-hub:USER/REPO" once pushed

That call reads config.json (timm's `_hub._parse_model_cfg`): `architecture` picks the entrypoint, `model_args`
become keyword defaults that override the entrypoint's own, the top-level `num_classes` (0: no head) replaces
the pretrained config's, and `pretrained_cfg` (mean, std, input size, crop) becomes `model.pretrained_cfg`.
`model_args` spell out the whole architecture — including `fc_norm=False` for a GAP model, since ours
normalises every token before averaging while timm's default for `global_pool="avg"` normalises after — so the
entrypoint's defaults never decide anything. The form `create_model(arch, pretrained=True,
pretrained_cfg_overlay=dict(file=…))` does NOT read config.json (timm then uses the registry's config of
`arch`); it needs `num_classes=0` and every `model_args` entry passed as keyword arguments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ...errors import CheckpointError
from ..unwrap import unwrap_state_dict
from ..vit import ViTConfig, VisionTransformer
from .common import WEIGHTS_FILE, Preprocessing, finish_folder, write_safetensors

# timm's registered plain ViT entrypoints (timm/models/vision_transformer.py): name -> (width, depth, heads,
# patch, image size). The closest one is named as the architecture; model_args override its sizes anyway.
TIMM_VITS = {
    "vit_tiny_patch16_224": (192, 12, 3, 16, 224), "vit_tiny_patch16_384": (192, 12, 3, 16, 384),
    "vit_small_patch32_224": (384, 12, 6, 32, 224), "vit_small_patch32_384": (384, 12, 6, 32, 384),
    "vit_small_patch16_224": (384, 12, 6, 16, 224), "vit_small_patch16_384": (384, 12, 6, 16, 384),
    "vit_base_patch32_224": (768, 12, 12, 32, 224), "vit_base_patch32_384": (768, 12, 12, 32, 384),
    "vit_base_patch16_224": (768, 12, 12, 16, 224), "vit_base_patch16_384": (768, 12, 12, 16, 384),
    "vit_large_patch32_224": (1024, 24, 16, 32, 224), "vit_large_patch32_384": (1024, 24, 16, 32, 384),
    "vit_large_patch16_224": (1024, 24, 16, 16, 224), "vit_large_patch16_384": (1024, 24, 16, 16, 384),
    "vit_large_patch14_224": (1024, 24, 16, 14, 224), "vit_huge_patch14_224": (1280, 32, 16, 14, 224),
}
FALLBACK_ARCHITECTURE = "vit_base_patch16_224"
TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorm; model_args cannot change it


def timm_architecture(config: ViTConfig) -> str:
    """timm's entrypoint of this size at this resolution, else of this size, else the base ViT (any size
    builds from it, since model_args give every dimension)."""
    size = (config.embed_dim, config.depth, config.num_heads, config.patch_size)
    same_size = [name for name, dims in TIMM_VITS.items() if dims[:4] == size]
    exact = [name for name in same_size if TIMM_VITS[name][4] == config.img_size]
    return (exact or same_size or [FALLBACK_ARCHITECTURE])[0]


def timm_has_size(config: ViTConfig) -> bool:
    """Whether timm registers a plain ViT of this width, depth, heads and patch (else the architecture named is
    only the base that `model_args` resize)."""
    return any(dims[:4] == (config.embed_dim, config.depth, config.num_heads, config.patch_size)
               for dims in TIMM_VITS.values())


def timm_global_pool(config: ViTConfig) -> str:
    """timm's `global_pool` for our pooling: a model without [class] token averages (timm refuses 'token')."""
    return "token" if config.class_token and config.global_pool == "token" else "avg"


def timm_model_args(config: ViTConfig) -> dict:
    """The `VisionTransformer` keyword arguments that build our network in timm, all spelled out."""
    if config.norm_eps != TIMM_NORM_EPS:
        raise CheckpointError(f"timm's ViT uses LayerNorm eps {TIMM_NORM_EPS} and this model {config.norm_eps}: "
                              "export it with --format hf or safetensors")
    return {
        "img_size": config.img_size, "patch_size": config.patch_size, "in_chans": config.in_chans,
        "embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio, "qkv_bias": config.qkv_bias, "class_token": config.class_token,
        "no_embed_class": False,  # our pos_embed covers the [class] position too
        "reg_tokens": 0,
        "global_pool": timm_global_pool(config),
        "fc_norm": False,  # the final norm comes before pooling, on every token (timm's default for 'avg' is after)
    }


def timm_config_json(config: ViTConfig, preprocessing: Preprocessing) -> dict:
    """config.json in the layout of timm's `save_config_for_hf` (what timm's Hub models carry), plus model_args."""
    p = preprocessing
    pretrained_cfg = {
        "tag": "ssl_vit",
        "custom_load": False,
        "input_size": [config.in_chans, config.img_size, config.img_size],
        "fixed_input_size": True,
        "interpolation": p.interpolation,
        "crop_pct": p.crop_pct,
        "crop_mode": "center",
        "mean": list(p.mean),
        "std": list(p.std),
        "num_classes": 0,
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    return {
        "architecture": timm_architecture(config),
        "num_classes": 0,
        "num_features": config.embed_dim,
        "global_pool": timm_global_pool(config),
        "model_args": timm_model_args(config),
        "pretrained_cfg": pretrained_cfg,
    }


def write_timm(model: VisionTransformer, out: Path, preprocessing: Preprocessing, metadata: dict | None,
               extra: dict[str, str] | None = None) -> list[Path]:
    config = model.config
    info = timm_config_json(config, preprocessing)  # refuses what timm cannot build, first
    if metadata is not None:
        info["ssl_vit"] = dict(metadata)  # timm ignores top-level keys it does not know
    tensors = {k: v for k, v in unwrap_state_dict(model.state_dict()).items()
               if not k.startswith("head.")}  # num_classes 0: timm's head is an Identity
    weights = write_safetensors(tensors, out / WEIGHTS_FILE,
                                {"format": "pt", "ssl_vit_config": json.dumps(config.to_dict())})
    return finish_folder(out, info, [weights], extra, record=metadata is not None)


def config_from_timm(info: Mapping) -> ViTConfig | None:
    """Our ViTConfig from a timm config.json: from `model_args` (ours spell out every size), else from the
    architecture's entrypoint for timm's own plain ViTs; None when neither tells (the weights' shapes then do)."""
    args = dict(info.get("model_args") or {})
    if args.get("fc_norm") or args.get("reg_tokens") or args.get("no_embed_class"):
        return None  # not a layout ssl_vit builds: the weights' filter fits what it can
    entry = TIMM_VITS.get(info.get("architecture", ""))
    if entry is not None:
        width, depth, heads, patch, _ = entry
        args = {"embed_dim": width, "depth": depth, "num_heads": heads, "patch_size": patch, **args}
    if not all(k in args for k in ("embed_dim", "depth", "num_heads", "patch_size")):
        return None
    input_size = (info.get("pretrained_cfg") or {}).get("input_size") or [3, 224, 224]
    pool = args.get("global_pool", info.get("global_pool", "token"))
    if pool == "avg" and args.get("fc_norm") is None and "model_args" not in info:
        return None  # timm's default GAP normalises after pooling (fc_norm): let the weights decide
    return ViTConfig(
        img_size=int(args.get("img_size", input_size[-1])), patch_size=int(args["patch_size"]),
        in_chans=int(args.get("in_chans", input_size[0])), embed_dim=int(args["embed_dim"]),
        depth=int(args["depth"]), num_heads=int(args["num_heads"]), mlp_ratio=float(args.get("mlp_ratio", 4.0)),
        qkv_bias=bool(args.get("qkv_bias", True)), class_token=bool(args.get("class_token", True)),
        global_pool="avg" if pool == "avg" else "token",
    )
