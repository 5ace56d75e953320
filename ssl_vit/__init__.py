"""ssl_vit: masked patch prediction (ViT paper, appendix B.1.2) for Vision Transformers.

The public API: build a backbone, wrap it in an objective, train, evaluate.
"""
from .models import ViTConfig, VisionTransformer, create_model, list_models
from .objectives import ImageClassification, MaskedPatchPrediction

__version__ = "0.1.0"
__all__ = [
    "ImageClassification",
    "MaskedPatchPrediction",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "list_models",
]
