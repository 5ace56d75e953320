"""Model wrappers, undone: DDP / Accelerate add `module.`, torch.compile adds `_orig_mod.`.

The one place that knows about wrappers: saving a wrapped model and loading a checkpoint written from one both
go through here, so no other code strips prefixes.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Strip the key prefixes that torch.compile (`_orig_mod.`) and DDP / Accelerate (`module.`) add.

    The one place that knows about wrappers: saving a wrapped model and loading a checkpoint written from one
    both go through here, so no other code strips prefixes.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        name = key.replace("._orig_mod.", ".")  # a compiled submodule, e.g. `backbone._orig_mod.blocks.0...`
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise CheckpointError(f"state dict holds both '{key}' and another key that unwraps to '{name}'")
        out[name] = value
    return out


def unwrap_module(model: nn.Module) -> nn.Module:
    """The model inside DDP / Accelerate (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = [getattr(model, a) for a in ("module", "_orig_mod") if isinstance(getattr(model, a, None), nn.Module)]
        if not inner:
            return model
        model = inner[0]
