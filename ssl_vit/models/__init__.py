"""Backbones: a timm-layout ViT, its registry of named sizes, and weight loading/saving."""
from .hf import to_hf_config, to_hf_state_dict
from .registry import create_model, list_models, model_config
from .vit import ViTConfig, VisionTransformer
from .weights import (
    filter_hf,
    filter_timm,
    infer_config,
    load_backbone,
    save_backbone,
    suggest_model_name,
    unwrap_state_dict,
)

__all__ = [
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "filter_hf",
    "filter_timm",
    "infer_config",
    "list_models",
    "load_backbone",
    "model_config",
    "save_backbone",
    "suggest_model_name",
    "to_hf_config",
    "to_hf_state_dict",
    "unwrap_state_dict",
]
