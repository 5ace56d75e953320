"""Hugging Face `transformers` ViT weights ↔ timm layout: one key-mapping filter in each direction.

HF splits attention into query/key/value; timm (and we) fuse them into one `qkv`. Both order output features
as (head, head_dim), so concatenating q, k, v rows is exact.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Literal, Mapping

import torch
from accelerate.utils import extract_model_from_parallel

from ..errors import CheckpointError
from .unwrap import StateDict, unwrap_state_dict
from .vit import ViTConfig, VisionTransformer

HF_PREFIXES = ("embeddings.", "encoder.layer.", "layers.")

# Hugging Face ViT names in two layouts. "hub": checkpoint files, what `save_pretrained` writes in transformers
# 4 and 5, blocks under `encoder.layer.{i}.`; "module": transformers >= 5's modules, blocks under `layers.{i}.`.
_HF_BLOCK_PREFIX = {"hub": "encoder.layer", "module": "layers"}
_HF_QKV_NAMES = {
    "hub": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    "module": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
}
_HF_BLOCK_NAMES = {  # ours -> HF, inside a block
    "hub": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"},
    "module": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
}
# Reading accepts either layout: HF name inside a block -> q/k/v index, or -> our name.
_HF_QKV = {name: i for names in _HF_QKV_NAMES.values() for i, name in enumerate(names)}
_HF_BLOCK = {hf: ours for names in _HF_BLOCK_NAMES.values() for ours, hf in names.items()}
_HF_TOP = {  # HF prefix -> ours
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
    "classifier.": "head.",
}
HF_DROPPED = ("pooler.", "embeddings.mask_token")  # HF-only extras with no counterpart in a ViT backbone
_HF_BLOCK_KEY = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
def hf_to_timm(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> StateDict:
    """Rename Hugging Face ViT keys to timm's and concatenate query/key/value into the fused `qkv`.

    Unknown keys are kept under their own names, so strict loading reports them. `pooler.*` and
    `embeddings.mask_token` are dropped: neither exists in the backbone.
    """
    out: StateDict = {}
    # (block index, "weight" | "bias") -> {0: query, 1: key, 2: value}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for key, value in state_dict.items():
        name = key.removeprefix("vit.")
        if name.startswith(HF_DROPPED):
            continue
        block = _HF_BLOCK_KEY.match(name)
        if block and block[2] in _HF_QKV:
            qkv[(block[1], block[3])][_HF_QKV[block[2]]] = value
        elif block and block[2] in _HF_BLOCK:
            out[f"blocks.{block[1]}.{_HF_BLOCK[block[2]]}.{block[3]}"] = value
        else:
            prefix = next((p for p in _HF_TOP if name.startswith(p)), None)
            out[_HF_TOP[prefix] + name[len(prefix):] if prefix else key] = value
    for (index, param), parts in sorted(qkv.items()):
        if len(parts) != 3:
            missing = [("query", "key", "value")[i] for i in range(3) if i not in parts]
            raise CheckpointError(f"{source}: block {index} lacks the attention {'/'.join(missing)} {param}")
        # Each (D, D) or (D,); HF and timm both order output features as (head, head_dim), so concatenation suffices.
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)  # (3D, D) / (3D,)
    return out


def to_hf_state_dict(
    model: VisionTransformer, *, layout: Literal["hub", "module"] = "hub", classification: bool = False
) -> StateDict:
    """Our weights in Hugging Face ViT names.

    `layout="hub"` gives the names of Hub files (what `save_pretrained` writes and `from_pretrained` reads in
    transformers 4 and 5); `"module"` gives transformers >= 5's in-memory names, for `load_state_dict`.
    `classification=True` gives `ViTForImageClassification` keys (`vit.` prefix, our head as `classifier`),
    otherwise `ViTModel` keys (built with `add_pooling_layer=False`). HF's ViT always has a [class] token.
    """
    if layout not in _HF_BLOCK_PREFIX:
        raise ValueError(f"layout must be 'hub' or 'module', got {layout!r}")
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    cfg = model.config
    if not cfg.class_token:
        raise CheckpointError("Hugging Face's ViT always has a [class] token; this model has class_token=False")
    if classification and (cfg.num_classes == 0 or cfg.global_pool != "token"):
        raise CheckpointError("ViTForImageClassification classifies the [class] token: build with num_classes > 0 "
                              "and global_pool='token'")
    block_prefix, qkv_names, block_names = _HF_BLOCK_PREFIX[layout], _HF_QKV_NAMES[layout], _HF_BLOCK_NAMES[layout]
    top_names = {ours: hf for hf, ours in _HF_TOP.items()}
    out: StateDict = {}
    for key, value in unwrap_state_dict(model.state_dict()).items():
        value = value.detach()
        block = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if block and block[2] == "attn.qkv":
            for name, part in zip(qkv_names, value.chunk(3, dim=0)):  # (3D, D) -> 3 × (D, D)
                out[f"{block_prefix}.{block[1]}.{name}.{block[3]}"] = part.contiguous()
        elif block:
            out[f"{block_prefix}.{block[1]}.{block_names[block[2]]}.{block[3]}"] = value
        elif key.startswith("head.") and not classification:
            continue
        else:
            ours = next(p for p in top_names if key.startswith(p))
            out[top_names[ours] + key[len(ours):]] = value
    if classification:
        out = {(k if k.startswith("classifier.") else f"vit.{k}"): v for k, v in out.items()}
    return out


def to_hf_config(config: ViTConfig) -> dict:
    """Keyword arguments for `transformers.ViTConfig` describing the same network (exact erf GELU, our eps)."""
    return dict(
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=int(config.embed_dim * config.mlp_ratio),
        image_size=config.img_size,
        patch_size=config.patch_size,
        num_channels=config.in_chans,
        qkv_bias=config.qkv_bias,
        layer_norm_eps=config.norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
