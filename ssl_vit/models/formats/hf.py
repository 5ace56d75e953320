"""The Hugging Face folder: what `ViTModel.save_pretrained` writes, so `ViTModel.from_pretrained(folder)` loads it.

    config.json               a transformers `ViTConfig` (model_type "vit", architectures ["ViTModel"])
    model.safetensors         Hub-layout keys (`encoder.layer.{i}.attention.attention.query.weight`, …)
    preprocessor_config.json  a `BitImageProcessor`: resize the shorter side, centre-crop, rescale, normalise

transformers itself is not needed to write it. ViTModel's pooler (`pooler_output`, and what
`pipeline("image-feature-extraction", pool=True)` returns) is a dense layer and `pooler_act` on the [class] token;
a backbone trained without it must not get a fresh random one (`from_pretrained` would initialise it silently).
So the folder holds pooler weights: for a [class]-token model the identity (dense = I, bias 0, `pooler_act:
linear`), making `pooler_output` our pooled features exactly; for a GAP model, whose features (the mean of the
patch tokens) no ViTModel computes, NaN, so `pooler_output` cannot pass for features — the card says to average
`last_hidden_state[:, 1:]`. config.json records our pooling under `ssl_vit` (transformers keeps unknown config
fields as attributes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from ...errors import CheckpointError
from ..hf import to_hf_config, to_hf_state_dict
from ..vit import ViTConfig, VisionTransformer
from .common import WEIGHTS_FILE, Preprocessing, finish_folder, write_json, write_safetensors

PREPROCESSOR_FILE = "preprocessor_config.json"
_PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values, as image processors store them


def hf_config_json(config: ViTConfig, metadata: dict | None = None) -> dict:
    """config.json of a `ViTModel` with our architecture, as `transformers.ViTConfig.save_pretrained` writes it."""
    if not config.class_token:
        raise CheckpointError("Hugging Face's ViTModel always has a [class] token; this model was built with "
                              "class_token=False: export it with --format timm or safetensors")
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        **to_hf_config(config),
        "encoder_stride": config.patch_size,
        "initializer_range": 0.02,
        "pooler_act": "linear",  # with the pooler weights below: the identity, or NaN for a GAP model
        "pooler_output_size": config.embed_dim,
        "ssl_vit": {**(metadata or {}), "global_pool": config.global_pool, "pos_embed": config.pos_embed},
    }


def pooler_weights(config: ViTConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """ViTPooler's weights: the identity on the [class] token (our features, for a [class]-token model), or
    NaN for a GAP model, whose features are no function of the [class] token alone."""
    d = config.embed_dim
    if config.global_pool == "token":
        return {"pooler.dense.weight": torch.eye(d, dtype=dtype), "pooler.dense.bias": torch.zeros(d, dtype=dtype)}
    nan = float("nan")
    return {"pooler.dense.weight": torch.full((d, d), nan, dtype=dtype), "pooler.dense.bias": torch.full((d,), nan, dtype=dtype)}


def preprocessor_json(preprocessing: Preprocessing, img_size: int) -> dict:
    """preprocessor_config.json: timm's / our eval transform (shorter side → S / crop_pct, centre crop S)."""
    p = preprocessing
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": p.resize_shorter(img_size)},
        "resample": _PIL_RESAMPLE[p.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": img_size, "width": img_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
        "do_convert_rgb": True,
    }


def write_hf(model: VisionTransformer, out: Path, preprocessing: Preprocessing, metadata: dict | None,
             extra: dict[str, str] | None = None) -> list[Path]:
    config = model.config
    hf_config = hf_config_json(config, metadata)  # refuses a model without [class] token before anything is written
    # transformers refuses safetensors files whose header lacks format "pt".
    weights = write_safetensors({**to_hf_state_dict(model, layout="hub"), **pooler_weights(config, model.norm.weight.dtype)}, out / WEIGHTS_FILE,
                                {"format": "pt", "ssl_vit_config": json.dumps(config.to_dict())})
    processor = write_json(out / PREPROCESSOR_FILE, preprocessor_json(preprocessing, config.img_size))
    return finish_folder(out, hf_config, [weights, processor], extra, record=metadata is not None)


def config_from_hf(info: Mapping, where: str) -> ViTConfig:
    """Our ViTConfig from a transformers ViT config.json (ours or anybody's)."""
    if info.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{where}: hidden_act {info['hidden_act']!r} is not the exact GELU ssl_vit's ViT uses")
    try:
        hidden = int(info["hidden_size"])
        extras = info.get("ssl_vit") or {}
        return ViTConfig(
            img_size=int(info.get("image_size", 224)),
            patch_size=int(info.get("patch_size", 16)),
            in_chans=int(info.get("num_channels", 3)),
            embed_dim=hidden,
            depth=int(info["num_hidden_layers"]),
            num_heads=int(info["num_attention_heads"]),
            mlp_ratio=int(info.get("intermediate_size", 4 * hidden)) / hidden,
            qkv_bias=bool(info.get("qkv_bias", True)),
            norm_eps=float(info.get("layer_norm_eps", 1e-12)),
            global_pool=extras.get("global_pool", "token"),
            pos_embed=extras.get("pos_embed", "learn"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: not a usable ViT config ({type(err).__name__}: {err})") from None
