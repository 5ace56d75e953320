"""A Vision Transformer whose state_dict keys follow timm's layout, with an explicit interface for objectives.

The model knows nothing of data, optimizers or configs. Objectives and evaluators use only the interface:

    patches = vit.embed_patches(images)          # (B, N, D): patch projection, nothing added yet
    tokens = vit.add_position_embedding(patches)  # (B, prefix + N, D): [class] token prepended, positions added
    feats = vit.encode(tokens)                    # (B, prefix + N, D): blocks, then the final norm
    feats = vit.encode(tokens, positions)         # (B, K, D): only the outputs at positions (B, K), for less work
    vit.forward_features(images)                  # the three above in one call
    vit.forward_intermediates(images, layers, return_attention=True)   # for analysis

Masked patch prediction corrupts `patches` between the first two calls (after the projection, before the
position embeddings), which is why the split exists.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .pos_embed import resample_pos_embed, sincos_2d


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens, (B, K) positions -> (B, K, D) the tokens at those positions, per image."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class ViTConfig:
    """Everything that determines the architecture; saved next to exported weights as JSON."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: Literal["token", "avg"] = "token"
    pos_embed: Literal["learn", "sincos"] = "learn"
    num_classes: int = 0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {self.pos_embed!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Non-overlapping P×P patches projected to D channels by a strided convolution (timm: `patch_embed.proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (B, D, H/P, W/P)
        return rearrange(x, "b d gh gw -> b (gh gw) d")  # (B, N, D), row-major over the grid


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; SDPA (flash / memory-efficient kernels) by default."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with `query_index` (B, K), only the outputs at those positions (B, K, D)."""
        if query_index is not None:
            return self._forward_queries(x, query_index)
        q, k, v = self._qkv(x)
        return self._project(F.scaled_dot_product_attention(q, k, v))  # (B, T, D)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> ((B, T, D), attention weights (B, H, T, T)): the explicit path, for analysis only (SDPA
        does not hand back its weights)."""
        q, k, v = self._qkv(x)
        attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, T, T)
        return self._project(attn @ v), attn

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v, each (B, H, T, hd)."""
        b, t, _ = x.shape
        # Unbind along the "three" axis of the projection's own layout, then transpose the views: the backward
        # pass then stacks q/k/v gradients straight into (B, T, 3, H, hd) with no permuted copy.
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, hd)
        q, k, v = (u.transpose(1, 2) for u in qkv.unbind(2))  # each (B, H, T, hd)
        return q, k, v

    def _project(self, out: torch.Tensor) -> torch.Tensor:
        """(B, H, T, hd) per-head outputs -> (B, T, D)."""
        return self.proj(rearrange(out, "b h t hd -> b t (h hd)"))

    def _forward_queries(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Queries from the tokens at `index` (B, K) alone, keys and values from all: the full pass's outputs at
        those positions, while the query projection, attention and output projection do K/T of their work."""
        b, t, d = x.shape
        w_q, w_kv = self.qkv.weight.split([d, 2 * d])  # rows of the fused (3D, D) weight: q, then k and v
        b_q, b_kv = self.qkv.bias.split([d, 2 * d]) if self.qkv.bias is not None else (None, None)
        kv = F.linear(x, w_kv, b_kv).view(b, t, 2, self.num_heads, self.head_dim)  # (B, T, 2, H, hd)
        k, v = (u.transpose(1, 2) for u in kv.unbind(2))  # each (B, H, T, hd)
        q = F.linear(gather_tokens(x, index), w_q, b_q)  # (B, K, D)
        q = q.view(b, index.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, K, hd)
        return self.proj(rearrange(out, "b h k hd -> b k (h hd)"))  # (B, K, D)


class Mlp(nn.Module):
    """(…, D) → (…, out_dim or D): Linear → GELU → Linear; a block's MLP, and the MPP pre-training head."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)  # (B, 1, 1)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, query_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with `query_index` (B, K), only the outputs at those positions (B, K, D):
        the residual stream and the MLP then run on K tokens, the attention reads all T."""
        if query_index is not None:
            x = gather_tokens(x, query_index) + self.drop_path(self.attn(self.norm1(x), query_index=query_index))
            return x + self.drop_path(self.mlp(self.norm2(x)))  # (B, K, D)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> ((B, T, D), the attention weights (B, H, T, T)), through the explicit attention path."""
        out, attn = self.attn.forward_with_attention(self.norm1(x))
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), attn


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) with timm-compatible parameter names.

    Inputs are float images already normalised (the objectives and evaluators own preprocessing).
    With `global_pool="avg"` the final `norm` is applied before averaging (timm's `fc_norm=False`).
    """

    def __init__(self, config: ViTConfig | None = None, **overrides):
        super().__init__()
        cfg = ViTConfig(**{**(config.to_dict() if config else {}), **overrides})
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.global_pool = cfg.global_pool
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        # Learned 1D table by default (the paper's choice); sin-cos is a frozen parameter so the key stays.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.embed_dim), requires_grad=cfg.pos_embed == "learn")
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, dpr[i], cfg.norm_eps) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """JAX-ViT style init: xavier-uniform linears, lecun-normal patch projection, zero head (the paper's)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        fan_in = self.patch_embed.proj.in_channels * self.patch_embed.patch_size**2
        nn.init.trunc_normal_(self.patch_embed.proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        with torch.no_grad():
            if self.config.pos_embed == "sincos":
                self.pos_embed.zero_()
                self.pos_embed[0, self.num_prefix_tokens :] = sincos_2d(self.embed_dim, self.patch_embed.grid_size)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a zero-initialised linear layer (the paper's fine-tuning head)."""
        like = self.norm.weight  # the new head lives where the model already is (device and dtype)
        self.head = nn.Identity()
        if num_classes > 0:
            self.head = nn.Linear(self.embed_dim, num_classes, device=like.device, dtype=like.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.config = ViTConfig(**{**self.config.to_dict(), "num_classes": num_classes})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass: activations O(depth) smaller, ~30% more compute."""
        self.grad_checkpointing = enable

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def no_weight_decay_keys(self) -> set[str]:
        """Parameters that optimizers should not decay besides norms and biases (timm's `no_weight_decay`)."""
        return {"pos_embed", "cls_token"}

    # ------------------------------------------------------------------------------------ interface
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised float images -> (B, N, D) patch embeddings, before position embeddings."""
        return self.patch_embed(images)

    def add_position_embedding(self, patches: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, D) patch embeddings -> (B, prefix + N, D): [class] token prepended, position embeddings added.

        An input whose patch grid differs from the built one gets the table resampled in 2D on the fly.
        """
        pos_embed = self.pos_embed
        n = patches.shape[1]
        if grid_size is None:
            side = math.isqrt(n)
            if n != self.patch_embed.num_patches and side * side != n:
                raise ValueError(f"{n} patches do not form a square grid; pass grid_size=(rows, cols)")
            grid_size = self.grid_size if n == self.patch_embed.num_patches else (side, side)
        if tuple(grid_size) != tuple(self.grid_size):  # e.g. 4×16 has as many patches as 8×8, but other positions
            pos_embed = resample_pos_embed(pos_embed, grid_size, self.num_prefix_tokens, old_grid=self.grid_size)
        if self.cls_token is not None:
            cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, D)
            patches = torch.cat([cls, patches], dim=1)  # (B, 1 + N, D)
        return patches + pos_embed

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): all blocks, then the final norm.

        With `positions` (B, K) token indices, only those outputs come back, (B, K, D), equal to
        `encode(tokens)` gathered there. Nothing after the last block reads the other tokens, so the last block
        computes queries, attention output and MLP at the K positions alone (keys and values still from all T):
        a masked-prediction objective, which scores only its corrupted patches (K ≈ T/2), saves ~40% of that
        block's work, 3.5% of a 12-block forward.
        """
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            index = positions if i == last else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False, query_index=index)
            else:
                tokens = block(tokens, query_index=index)
        return self.norm(tokens)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, prefix + N, D) normalised tokens."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return self.encode(self.add_position_embedding(self.embed_patches(images), grid))

    def forward_intermediates(
        self, images: torch.Tensor, layers: Sequence[int] | None = None, return_attention: bool = False, norm: bool = False
    ) -> dict[str, list[torch.Tensor]]:
        """Per-block outputs (B, T, D) for the listed block indices (negative counts from the end; all when None),
        and, when asked, every block's attention weights (B, heads, T, T). `norm` applies the final norm to each."""
        depth = len(self.blocks)
        wanted = set(range(depth)) if layers is None else {i % depth for i in layers}
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = self.add_position_embedding(self.embed_patches(images), grid)
        outputs, attentions = [], []
        for i, block in enumerate(self.blocks):
            if return_attention:
                x, attn = block.forward_with_attention(x)
                attentions.append(attn)
            else:
                x = block(x)
            if i in wanted:
                outputs.append(self.norm(x) if norm else x)
        return {"layers": outputs, "attentions": attentions}

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): the [class] token, or the mean of the patch tokens."""
        if self.global_pool == "avg" or self.cls_token is None:
            return features[:, self.num_prefix_tokens :].mean(dim=1)
        return features[:, 0]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(features)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # ----------------------------------------------------------------------------------- accounting
    def forward_flops(self, img_size: int | None = None, num_outputs: int | None = None) -> float:
        """Analytic forward FLOPs per image (2 × multiply-adds of the matmuls; norms and softmax ignored).

        ViT-B/16 at 224px gives ~35 GFLOPs, the paper's figure; a training step is about 3× that.
        `num_outputs`: the K tokens asked of `encode(tokens, positions)`, whose last block does less work.
        """
        cfg = self.config
        side = (img_size or cfg.img_size) // cfg.patch_size
        n = side * side
        t = n + self.num_prefix_tokens
        q = t if num_outputs is None else num_outputs  # tokens the last block computes outputs for
        d = cfg.embed_dim
        hidden = int(d * cfg.mlp_ratio)

        def block(queries: int) -> int:  # k and v from all t tokens; q, attention, proj and MLP at `queries`
            return t * d * 2 * d + queries * d * d + 2 * queries * t * d + queries * d * d + 2 * queries * d * hidden

        patch = n * d * cfg.in_chans * cfg.patch_size**2
        head = d * cfg.num_classes
        return 2.0 * (patch + (cfg.depth - 1) * block(t) + block(q) + head)
