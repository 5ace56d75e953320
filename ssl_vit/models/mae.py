"""MAE (facebookresearch/mae) pretraining checkpoints → encoder weights in timm's layout.

MAE's `checkpoint-*.pth` is `{"model": state_dict, "optimizer": …, "epoch": …, "scaler": …, "args": Namespace}`,
and its `MaskedAutoencoderViT` names the encoder exactly as timm does (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.{i}`, `norm`), next to the decoder: `decoder_embed`, `mask_token` (decoder width), `decoder_pos_embed`,
`decoder_blocks.{i}`, `decoder_norm` and `decoder_pred`. The encoder keys are kept as they are; the decoder is
dropped. The released `mae_pretrain_vit_*.pth` files hold the encoder alone and pass through unchanged.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .unwrap import StateDict

DECODER_PREFIX = "decoder_"
MASK_TOKEN = "mask_token"  # MAE's [MASK] lives in the decoder (decoder width), not in the encoder


def is_mae(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for an MAE pretraining state dict: one that carries MAE's decoder next to a timm-layout encoder."""
    return any(key.startswith(DECODER_PREFIX) for key in state_dict)


def split_mae(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """(the encoder's tensors, the decoder keys dropped) of an MAE state dict."""
    dropped = {k for k in state_dict if k.startswith(DECODER_PREFIX) or k == MASK_TOKEN}
    return {k: v for k, v in state_dict.items() if k not in dropped}, sorted(dropped)
