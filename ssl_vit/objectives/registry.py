"""One registry of objectives: `build("mpp" | "classification", backbone, **options)`.

Recipes name the objective and its options as data; unknown names and options fail here with the close
matches, before any training starts.
"""
from __future__ import annotations

import difflib
import inspect

import torch.nn as nn

from ..errors import ConfigError
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
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(str(name), OBJECTIVES, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown objective '{name}'.{hint} Available objectives: {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    options = [p for p in inspect.signature(cls).parameters if p != "backbone"]
    for key in kwargs:
        if key not in options:
            close = difflib.get_close_matches(key, options, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"objective '{name}' has no option '{key}'{hint}; its options: {', '.join(options)}")
    return cls(backbone, **kwargs)
