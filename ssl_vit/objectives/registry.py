"""One registry of objectives: `build("mpp" | "classification", backbone, **options)`.

Recipes name the objective and its options as data; unknown names and options fail here with the close
matches, before any training starts.
"""
from __future__ import annotations


import torch.nn as nn

from ..lookup import check_options, lookup
from .classification import ImageClassification
from .mpp import MaskedPatchPrediction

OBJECTIVES: dict[str, type[nn.Module]] = {
    "mpp": MaskedPatchPrediction,
    "classification": ImageClassification,
}


def list_objectives() -> list[str]:
    return list(OBJECTIVES)


def build(name: str, backbone: nn.Module, **kwargs) -> nn.Module:
    """Wrap `backbone` in the named objective, e.g. `build("mpp", vit, target="mean_color", corruption_rate=0.5)`."""
    cls = lookup("objective", name, OBJECTIVES)
    check_options(f"objective '{name}'", cls, kwargs, skip=("backbone",))
    return cls(backbone, **kwargs)
