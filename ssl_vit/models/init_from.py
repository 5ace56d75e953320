"""`model.init_from`: start pretraining or fine-tuning from existing ViT weights instead of a random init.

    line = init_from("runs/mae/checkpoint-799.pth", objective.backbone, objective)
    # init_from …/checkpoint-799.pth: loaded 150 tensors; new 5 (head.* ×4, mask_token);
    #   dropped 104 (decoder_blocks.* ×96, decoder_embed.* ×2, decoder_norm.* ×2, decoder_pos_embed, decoder_pred.* ×2, mask_token)

Any source `load_backbone` reads: an ssl_vit export (file or hf / timm folder), a timm file (.safetensors,
.pth, a training checkpoint holding `state_dict`), a Hugging Face ViT folder, an MAE `checkpoint-*.pth`, a
trainer checkpoint's `state.pt`. The command resolves the rest first (`commands/pretrain.py: init_source`), as
`eval --checkpoint` does: a run directory or checkpoint directory to that `state.pt` (models/ does not know the
trainer's layout), a Hugging Face Hub id (`hf-hub:ORG/NAME`, or `ORG/NAME` when no such local path exists) to the
snapshot folder `hub_weights.fetch` brings into huggingface_hub's cache. The recipe decides the architecture; the
weights must fit it: `pos_embed` is resampled when the patch grid differs, and a different width, depth or patch
size fails with one line naming the key and the model that fits.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch.nn as nn

from .vit import VisionTransformer
from .weights import LoadReport, load_backbone_with_report


def init_from(source: str | Path, backbone: VisionTransformer, owner: nn.Module | None = None, *,
              name: str | None = None) -> str:
    """Load `source`'s backbone weights into `backbone` in place; returns the one-line report.

    `owner` is the module that holds the backbone as `owner.backbone` (an objective): its other tensors
    ([MASK], the prediction or classification head) are reported as new, in the owner's names. `name` is how the
    report names the source when its path is not what the user wrote (a Hub id's snapshot: `hub_weights.fetched_name`).
    """
    _, report = load_backbone_with_report(source, backbone, strict=True)
    new = [f"backbone.{k}" if owner is not None else k for k in report.missing]
    if owner is not None:
        new = [k for k in owner.state_dict() if not k.startswith("backbone.")] + new
    return report_line(report, new, name)


def report_line(report: LoadReport, new: list[str], name: str | None = None) -> str:
    """One line for the log: counts, and the new and dropped keys grouped by module (`head.* ×4`)."""
    return (f"init_from {name or report.source}: loaded {len(report.loaded)} tensors; new {_grouped(new)}; "
            f"dropped {_grouped(report.dropped)}")


def _grouped(keys: list[str]) -> str:
    """'5 (mask_token, head.* ×4)': keys grouped by their first name (two for `backbone.`), in sorted order."""
    if not keys:
        return "0"

    def module(key: str) -> str:
        parts = key.split(".")
        depth = 2 if parts[0] == "backbone" and len(parts) > 2 else 1
        return ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")

    counts = Counter(module(k) for k in keys)
    groups = ", ".join(name if n == 1 and not name.endswith("*") else f"{name} ×{n}" for name, n in sorted(counts.items()))
    return f"{len(keys)} ({groups})"
