"""ssl_vit: masked patch prediction (ViT paper, appendix B.1.2) for Vision Transformers.

The public API: build a backbone, wrap it in an objective, train, evaluate. Its names are imported when first
used (PEP 562), so `import ssl_vit` (which `ssl-vit --version` and `--help` do) does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_PUBLIC = {
    "ImageClassification": "ssl_vit.objectives",
    "MaskedPatchPrediction": "ssl_vit.objectives",
    "ViTConfig": "ssl_vit.models",
    "VisionTransformer": "ssl_vit.models",
    "create_model": "ssl_vit.models",
    "list_models": "ssl_vit.models",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ssl_vit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
