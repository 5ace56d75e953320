"""A pretraining checkpoint back as the objective that wrote it: the one way `export` and `analyze` open runs.

A checkpoint's `state.pt` holds the objective's whole state (`backbone.*`, `mask_token`, `head.*`) and the
recipe that built it, so the objective is rebuilt from that recipe and loaded strictly: a checkpoint that
does not fit its own recipe is damaged, and says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..config import PretrainConfig, build_objective, config_from_mapping
from ..errors import CheckpointError
from .checkpoint import read_state


def restore_objective(path: Path) -> tuple[nn.Module, PretrainConfig, dict[str, Any]]:
    """(objective with the checkpoint's weights, its recipe, the raw state) of checkpoint directory `path`."""
    state = read_state(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: the checkpoint holds no recipe (`config`); was it written by ssl-vit pretrain?")
    cfg = config_from_mapping(state["config"], where=f"{path}/state.pt config")
    objective = build_objective(cfg)
    try:
        objective.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit its own recipe ({' '.join(str(err).split())[:300]})") from None
    return objective, cfg, state
