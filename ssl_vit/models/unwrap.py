"""State dicts of wrapped models, undone: DDP / Accelerate add `module.`, torch.compile adds `_orig_mod.`.

A wrapped module itself is unwrapped by Accelerate's `extract_model_from_parallel`; what no library does is
strip those prefixes from a state dict read from disk (a checkpoint saved from a DDP or compiled model), or
from a compiled submodule's keys. Saving and loading both go through here, so no other code strips prefixes.
"""
from __future__ import annotations

from typing import Mapping

import torch

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
