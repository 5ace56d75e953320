"""What `ssl-vit analyze` can open: a pretraining run or checkpoint (objective and all), or a bare backbone.

A trainer checkpoint (`RUN/checkpoints/step_NNNNNNN/state.pt`) holds the whole objective — `backbone.*`,
the [MASK] embedding `mask_token` and the prediction head `head.*` — and the recipe that built it, so the
masked-prediction picture can use the trained head. An exported backbone (`.safetensors` + `.json`), a
timm or Hugging Face state dict has no head: only the Figure 7 analysis applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from ..errors import CheckpointError
from ..models.vit import VisionTransformer


@dataclass
class Loaded:
    """The backbone to analyse; the objective when the checkpoint holds one; facts for the report."""

    backbone: VisionTransformer
    objective: nn.Module | None
    source: Path
    run_dir: Path | None = None  # the run directory (holds metrics.jsonl) when the source is inside one
    info: dict = field(default_factory=dict)


def load_for_analysis(source: str | Path, model: str | None = None) -> Loaded:
    """Open `source`: a run directory (its latest checkpoint), a checkpoint directory, its `state.pt`, or a
    weights file. `model` names the registered architecture for weights that carry no config."""
    from ..train.checkpoint import CHECKPOINTS, STATE_FILE
    from ..train.restore import locate_checkpoint

    path = Path(source)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; give a run directory, a checkpoint directory "
            "(…/checkpoints/step_0001000) or exported weights (.safetensors)"
        )
    found = locate_checkpoint(path, "analyze")
    if found is not None:
        return _from_checkpoint(found, model)
    if path.is_file():
        return _from_weights(path, model)
    raise CheckpointError(
        f"{path}: no checkpoint there (expected a directory with {STATE_FILE}, a run directory, or its "
        f"{CHECKPOINTS}/ with a `latest` file); for exported weights pass the .safetensors file itself"
    )


def _from_checkpoint(path: Path, model: str | None) -> Loaded:
    """Rebuild the objective from the checkpoint's own recipe and load it strictly (`restore_objective`: the recipe
    read as `ssl-vit export` and `eval` read it)."""
    from ..train.restore import restore_objective

    objective, cfg, state = restore_objective(path)
    if model is not None and model != cfg.model.name:
        raise CheckpointError(
            f"{path} was trained as {cfg.model.name}, not {model}; drop --model (checkpoints know their model)"
        )
    backbone = objective.backbone
    has_mpp_head = hasattr(objective, "predict") and hasattr(objective, "mask_token")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    info = {
        "checkpoint": str(path),
        "step": int(state.get("step", 0)),
        "model": cfg.model.name,
        "objective": cfg.objective.name,
    }
    if has_mpp_head:
        info["target"] = objective.target.name
    return Loaded(backbone, objective if has_mpp_head else None, path, run_dir, info)


def _from_weights(path: Path, model: str | None) -> Loaded:
    """Backbone weights alone (our export, timm, Hugging Face): no [MASK] embedding, no prediction head."""
    from ..models.weights import load_backbone

    backbone = load_backbone(path, model)
    info = {"weights": str(path), "model": model or _describe(backbone)}
    return Loaded(backbone, None, path, None, info)


def _describe(backbone: VisionTransformer) -> str:
    c = backbone.config
    return f"ViT (width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads, patch {c.patch_size}, {c.img_size}px)"
