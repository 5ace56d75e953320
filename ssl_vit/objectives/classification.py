"""Supervised image classification: the objective that fine-tunes a backbone (and trains one from scratch).

The paper fine-tunes with a single zero-initialised linear layer in place of the pre-training head, so the
backbone's head is reset to one; at the start every class gets the same logit. Mixup/cutmix apply in training
mode only; label smoothing applies to the loss in both modes. `acc` is top-1 against the unmixed labels.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..data.normalize import DEFAULT_MEAN, DEFAULT_STD, normalize_uint8
from ..errors import ConfigError
from .mixing import mix_batch, soft_targets


class ImageClassification(nn.Module):
    """`loss, metrics = objective(images_uint8, labels)`; `predict(images_uint8)` gives logits."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mean: tuple[float, ...] = DEFAULT_MEAN,
        std: tuple[float, ...] = DEFAULT_STD,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0.0 <= mix_prob <= 1.0:
            raise ConfigError(
                f"mixup_alpha ({mixup_alpha!r}) and cutmix_alpha ({cutmix_alpha!r}) must be ≥ 0 (0 disables), "
                f"mix_prob ({mix_prob!r}) in [0, 1]"
            )
        backbone.reset_classifier(num_classes)
        self.backbone = backbone
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.mix_prob = float(mix_prob)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def mix(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels → (images to train on, (B, C) soft targets summing to 1)."""
        targets = soft_targets(labels, self.num_classes, self.label_smoothing)
        if self.training and (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0:
            images, targets = mix_batch(images, targets, self.mixup_alpha, self.cutmix_alpha, self.mix_prob, generator)
        return images, targets

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, H, W) uint8 and (B,) int64 labels in [0, num_classes) → (scalar loss, {loss, acc})."""
        if labels is None:
            raise TypeError("ImageClassification needs labels; the data must be labelled (cls ≥ 0)")
        x, targets = self.mix(normalize_uint8(images, self.mean, self.std), labels, generator)
        logits = self.backbone(x).float()  # (B, C); loss in fp32 under autocast
        loss = -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
        acc = (logits.detach().argmax(dim=-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 → (B, num_classes) logits (call `.eval()` first)."""
        return self.backbone(normalize_uint8(images, self.mean, self.std))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return self.backbone.state_dict()

    def no_weight_decay_keys(self) -> set[str]:
        names = {name for name, _ in self.named_parameters()}
        return {f"backbone.{key}" for key in self.backbone.no_weight_decay_keys()} & names

    def flops_per_image(self, img_size: int | None = None) -> float:
        """3 × the backbone's forward FLOPs (its classifier included): forward + backward."""
        return 3.0 * self.backbone.forward_flops(img_size)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, label_smoothing={self.label_smoothing}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, mix_prob={self.mix_prob}"
        )
