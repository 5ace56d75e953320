"""Position embeddings: 2D sin-cos tables and 2D resampling of learned tables.

Resampling lives here (not in the weight loaders) because the backbone also uses it on the fly when it
sees an input whose patch grid differs from the one it was built for.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_2d(embed_dim: int, grid_size: tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos table (MAE/big_vision style), shape (gh*gw, embed_dim), row-major over the grid."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim // 4))
    y = y.flatten()[:, None] * omega[None, :]  # (N, D/4)
    x = x.flatten()[:, None] * omega[None, :]  # (N, D/4)
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, D)
    return table.float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resample a (1, prefix + gh*gw, D) table to a new patch grid in 2D; prefix tokens are kept as they are.

    The old grid is taken as square when not given (the usual case for checkpoints).
    """
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n_old = grid_tokens.shape[1]
    if old_grid is None:
        side = int(math.isqrt(n_old))
        if side * side != n_old:
            raise ValueError(
                f"pos_embed has {n_old} grid tokens, which is not a square grid; pass old_grid=(h, w) explicitly"
            )
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    dtype = pos_embed.dtype
    grid = grid_tokens.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)  # (1, gh'*gw', D)
    return torch.cat([prefix, grid.to(dtype)], dim=1)
