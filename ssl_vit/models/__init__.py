"""Backbones: a timm-layout ViT, its registry of named sizes, and weight loading/saving."""
from .registry import create_model, list_models, model_config
from .vit import ViTConfig, VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer", "create_model", "list_models", "model_config"]
