"""Masked patch prediction: the ViT paper's self-supervised objective (section 4.6, appendix B.1.2).

    images (uint8) ──normalise──> backbone.embed_patches ──corrupt──> add_position_embedding ──> encode
                   └──target(raw pixels)──> targets of every patch          head(tokens at corrupted slots) ──> loss

Half of the patch embeddings are corrupted (80% → [MASK], 10% → another patch, 10% kept; see corruption.py),
and a head predicts each corrupted patch's target from the encoder's output token at that position. Only the
corrupted positions enter the loss: cross-entropy averaged over the corrupted patches and their G
sub-predictions (colour targets), or MSE averaged over corrupted patches and values (pixels).

Metrics (detached scalar tensors): `loss`; colour targets `acc` (share of right sub-predictions over all
corrupted patches) and `acc_masked`, `acc_replaced`, `acc_kept`; pixels `mse_masked`, `mse_replaced`,
`mse_kept`. A kind with no slots in the batch (e.g. `random_prob=0`) is left out rather than reported as nan;
the counts are fixed by the rates and the batch shape, so every batch of one shape has the same keys.

The [MASK] embedding and the head live beside the backbone: the state_dict holds `backbone.*`, `mask_token`
and `head.*`, and `backbone_state_dict()` gives the clean timm-layout ViT weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.normalize import DEFAULT_MEAN, DEFAULT_STD, normalize_uint8
from ..errors import ConfigError
from . import targets as target_registry
from .corruption import KIND_NAMES, Corruption, apply_corruption, corruption_counts, sample_corruption
from .heads import build_head, head_flops, init_head


class MaskedPatchPrediction(nn.Module):
    """`loss, metrics = objective(images_uint8)`: corrupt patch embeddings, predict the corrupted patches' targets.

    Args:
        backbone: a `VisionTransformer` (only its interface is used).
        target: "mean_color" | "downsampled_color" | "pixels", with options in `target_kwargs`.
        corruption_rate: share of patches corrupted per image (exactly round(rate · N) each).
        mask_prob / random_prob: shares of the corrupted slots that get [MASK] / another patch's embedding;
            the rest are kept.
        head: "mlp" (the paper's Linear → GELU → Linear, hidden width `head_hidden_dim` or the embedding width)
            or "linear".
        mean / std: input normalisation (uint8 → float happens here, on the batch's device).
        seed: seeds the initialisation of `mask_token` and the head (None: the global RNG), so building the
            objective does not depend on what else drew random numbers before.
    """

    def __init__(
        self,
        backbone: nn.Module,
        target: str = "mean_color",
        corruption_rate: float = 0.5,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        head: str = "mlp",
        head_hidden_dim: int | None = None,
        target_kwargs: dict | None = None,
        mean: tuple[float, ...] = DEFAULT_MEAN,
        std: tuple[float, ...] = DEFAULT_STD,
        seed: int | None = None,
    ):
        super().__init__()
        if not 0.0 < corruption_rate <= 1.0:
            raise ConfigError(f"corruption_rate must be in (0, 1], got {corruption_rate!r} (the paper uses 0.5)")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0 + 1e-9:
            raise ConfigError(
                f"mask_prob ({mask_prob!r}) and random_prob ({random_prob!r}) must be ≥ 0 and sum to at most 1; "
                "the rest of the corrupted patches is kept (the paper: 0.8 / 0.1)"
            )
        num_patches = backbone.grid_size[0] * backbone.grid_size[1]
        if corruption_counts(1, num_patches, corruption_rate, mask_prob, random_prob)[0] < 1:
            raise ConfigError(
                f"corruption_rate {corruption_rate} corrupts no patch of a {num_patches}-patch image; raise it"
            )
        self.backbone = backbone
        self.corruption_rate = float(corruption_rate)
        self.mask_prob = float(mask_prob)
        self.random_prob = float(random_prob)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.target = target_registry.build(target, backbone.patch_size, **(target_kwargs or {}))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.head = build_head(head, backbone.embed_dim, self.target.out_features, head_hidden_dim)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            nn.init.normal_(self.mask_token, std=0.02, generator=generator)
        init_head(self.head, generator)

    # ------------------------------------------------------------------------------------ corruption
    def corrupt(self, patches: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Corruption]:
        """(B, N, D) patch embeddings → (corrupted (B, N, D), the `Corruption` drawn)."""
        b, n, _ = patches.shape
        corruption = sample_corruption(
            b, n, self.corruption_rate, self.mask_prob, self.random_prob, patches.device, generator
        )
        return apply_corruption(patches, corruption, self.mask_token), corruption

    # --------------------------------------------------------------------------------------- forward
    def _encode(self, images: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, Corruption]:
        """uint8 images → (encoder outputs at the corrupted patches (B, K, D), targets of all patches, corruption).

        Only the corrupted positions are scored, so the encoder is asked for those outputs alone (its last
        block then skips the rest; see `VisionTransformer.encode`).
        """
        targets = self.target(images)  # (B, N, G) int64 or (B, N, P·P·3) float; checks dtype and size
        p = self.backbone.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        patches = self.backbone.embed_patches(normalize_uint8(images, self.mean, self.std))  # (B, N, D)
        corrupted, corruption = self.corrupt(patches, generator)
        positions = corruption.index + self.backbone.num_prefix_tokens  # (B, K) token positions, past [class]
        tokens = self.backbone.encode(self.backbone.add_position_embedding(corrupted, grid), positions)  # (B, K, D)
        return tokens, targets, corruption

    def _score(
        self, tokens: torch.Tensor, targets: torch.Tensor, corruption: Corruption
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Head at the corrupted tokens (B, K, D), loss and metrics → (loss, metrics, outputs, targets there)."""
        b, k = corruption.index.shape
        out = self.head(tokens).float()  # (B, K, out_features); loss in fp32 under autocast
        picked = targets.gather(1, corruption.index.unsqueeze(-1).expand(b, k, targets.shape[-1]))  # (B, K, G | V)
        if self.target.kind == "classification":
            g, c = self.target.num_outputs, self.target.num_classes
            out = out.view(b, k, g, c)  # (B, K, G, C) logits
            loss = F.cross_entropy(out.reshape(-1, c), picked.reshape(-1))  # mean over B·K·G
            per_patch = (out.argmax(-1) == picked).float().mean(-1)  # (B, K): share of right sub-predictions
            prefix = "acc"
        else:
            per_patch = (out - picked).pow(2).mean(-1)  # (B, K)
            loss = per_patch.mean()
            prefix = "mse"
        metrics = {"loss": loss.detach()}
        per_patch = per_patch.detach()
        if prefix == "acc":
            metrics["acc"] = per_patch.mean()
        for kind, count in enumerate(corruption.counts):
            if count:  # a Python int: the same keys for every batch of this shape
                metrics[f"{prefix}_{KIND_NAMES[kind]}"] = (per_patch * (corruption.kind == kind)).sum() / count
        return loss, metrics, out, picked

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, H, W) uint8 → (scalar loss, metrics). Labels are ignored (self-supervised)."""
        loss, metrics, _, _ = self._score(*self._encode(images, generator))
        return loss, metrics

    @torch.no_grad()
    def predict(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Everything the masked-prediction pictures need, without gradients (call `.eval()` first for no drop-path).

        Returns `corruption` (Corruption), `targets` (B, N, G | V) for every patch, `corrupted_targets`
        (B, K, G | V), `outputs` (B, K, G, C) logits or (B, K, V) values, `predictions` (B, K, G) classes or
        (B, K, V) values, and `metrics`. `self.target.render(predictions)` paints them as (B, K, P, P, 3) uint8.
        """
        tokens, targets, corruption = self._encode(images, generator)
        _, metrics, out, picked = self._score(tokens, targets, corruption)
        predictions = out.argmax(-1) if self.target.kind == "classification" else out
        return {
            "corruption": corruption,
            "targets": targets,
            "corrupted_targets": picked,
            "outputs": out,
            "predictions": predictions,
            "metrics": metrics,
        }

    # -------------------------------------------------------------------------------- for the trainer
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The clean timm-layout backbone weights (no `backbone.` prefix, no [MASK], no MPP head)."""
        return self.backbone.state_dict()

    def no_weight_decay_keys(self) -> set[str]:
        """Full parameter names to exclude from weight decay besides norms and biases."""
        names = {name for name, _ in self.named_parameters()}
        wanted = {f"backbone.{key}" for key in self.backbone.no_weight_decay_keys()} | {"mask_token"}
        return wanted & names

    def flops_per_image(self, img_size: int | None = None) -> float:
        """Training FLOPs per image for MFU: 3 × (backbone forward, asked for K outputs, + head on those K).

        The factor 3 is forward + backward (≈ 2× forward); corruption, targets, norms and softmax are ignored.
        """
        side = (img_size or self.backbone.config.img_size) // self.backbone.patch_size
        k, _ = corruption_counts(1, side * side, self.corruption_rate, self.mask_prob, self.random_prob)
        return 3.0 * (self.backbone.forward_flops(img_size, num_outputs=k) + k * head_flops(self.head))

    def extra_repr(self) -> str:
        return (
            f"corruption_rate={self.corruption_rate}, mask_prob={self.mask_prob}, random_prob={self.random_prob}, "
            f"mean={self.mean}, std={self.std}"
        )
