"""The ViT paper's Figure 7: what the patch embedding, the position embeddings and the attention heads learned.

* left: the first principal components of the patch-embedding filters (`patch_embed.proj.weight`, D filters
  of 3·P·P weights) — trained models show smooth colour and frequency bases, like early CNN filters;
* centre: the cosine similarity of each position embedding to all others — a trained 1D table rediscovers
  the 2D layout (each map lights up around its own row and column);
* right: the mean attention distance of every head against depth — the analogue of a receptive field:
  some heads look globally from the first layer, and all heads look further as depth grows.

The numbers come from functions on plain tensors (tested on hand-built cases); `draw_*` put them on an axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..data.normalize import normalize_uint8
from ..models.vit import VisionTransformer
from . import _mpl
from .mosaic import minmax, tile


# ------------------------------------------------------------------------------------- patch embedding
def pca(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the rows of `x` (M samples, F features).

    Returns `(components (k, F), explained_variance_ratio (k,))`, k = min(n, M, F), sorted by variance,
    rows orthonormal. Signs are fixed (largest-magnitude entry positive) so figures are reproducible.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # s descending, vt (min(M, F), F)
    k = min(n, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])  # (k,)
    comps = comps * signs[:, None]
    total = float((s**2).sum())
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return comps, ratio


def patch_embedding_pca(model: VisionTransformer, n: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` principal components of the D patch-embedding filters as (n, P, P, 3) RGB filters, and
    the share of the filters' variance each explains (n,)."""
    weight = model.patch_embed.proj.weight.detach().float().cpu()  # (D, C, P, P)
    flat = rearrange(weight, "d c p q -> d (p q c)").numpy()  # (D, P*P*C): one filter per row
    comps, ratio = pca(flat, n)
    p = model.patch_size
    return rearrange(comps, "k (p q c) -> k p q c", p=p, q=p), ratio  # (k, P, P, C)


def patch_embedding_components(model: VisionTransformer, n: int = 28) -> np.ndarray:
    """The first `n` principal components of the D patch-embedding filters, as (n, P, P, 3) RGB filters."""
    return patch_embedding_pca(model, n)[0]


def draw_patch_components(ax, components: np.ndarray, cols: int = 7) -> None:
    """The components as small RGB images, each min-max scaled on its own (their signs are arbitrary)."""
    scaled = np.stack([minmax(c) for c in components])  # (k, P, P, 3) in [0, 1]
    ax.imshow(tile(scaled, cols=min(cols, len(scaled)), gap=1, fill=1.0), interpolation="nearest")
    ax.set_title(f"RGB embedding filters\n(first {len(components)} principal components)")
    ax.set_axis_off()


# ------------------------------------------------------------------------------------ position embedding
def position_similarity(model: VisionTransformer) -> np.ndarray:
    """Cosine similarity between the position embeddings of every pair of patches: (gh, gw, gh, gw).

    `sim[i, j]` is the map of position (i, j) against all positions; the class token's entry is skipped.
    """
    table = model.pos_embed.detach().float().cpu()[0, model.num_prefix_tokens :]  # (N, D)
    unit = F.normalize(table, dim=-1)
    sim = unit @ unit.T  # (N, N)
    gh, gw = model.grid_size
    return sim.reshape(gh, gw, gh, gw).numpy()  # (gh*gw, gh*gw) -> (gh, gw, gh, gw)


def draw_position_similarity(ax, sim: np.ndarray) -> None:
    """A gh × gw grid of gh × gw similarity maps (one per position), tiled into one image, with a colourbar."""
    gh, gw = sim.shape[:2]
    maps = sim.reshape(gh * gw, gh, gw)  # (gh, gw, gh, gw) -> (N, gh, gw), row-major over the positions
    cmap = _mpl.colormap("viridis", bad="white")
    gap = max(1, gh // 8)
    image = ax.imshow(tile(maps, cols=gw, gap=gap), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    step_y, step_x = gh + gap, gw + gap
    ax.set_xticks([c * step_x + (gw - 1) / 2 for c in range(gw)], [str(c + 1) for c in range(gw)], fontsize=6)
    ax.set_yticks([r * step_y + (gh - 1) / 2 for r in range(gh)], [str(r + 1) for r in range(gh)], fontsize=6)
    ax.tick_params(length=0)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title("Position embedding similarity")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")


# ------------------------------------------------------------------------------------ attention distance
def patch_distances(grid_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the centres of the patches of a row-major grid."""
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([y.flatten(), x.flatten()], dim=1).double() * patch_size  # (N, 2)
    return torch.cdist(centres, centres)


def attention_distance(attn: torch.Tensor, distances: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """(B, H, T, T) attention weights -> (B, H): the attention-weighted mean pixel distance per head.

    Prefix (class) tokens have no position: their rows and columns are dropped, and each query's weights
    are renormalised over the patch keys, so a head that mostly reads the class token is judged by where
    its remaining attention goes rather than counted as local. The result is averaged over query patches.
    """
    a = attn[:, :, num_prefix_tokens:, num_prefix_tokens:].double()  # (B, H, N, N)
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_query = torch.einsum("bhqk,qk->bhq", a, distances.to(a.device))  # (B, H, N)
    return per_query.mean(dim=-1)


@torch.no_grad()
def mean_attention_distance(
    model: VisionTransformer, images: torch.Tensor, batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """(depth, heads) mean attention distance in pixels, averaged over query patches and images.

    `images` is a uint8 batch (normalised here) or an already-normalised float batch. Images go through in
    chunks of `batch_size`, so memory stays at one chunk's depth × (B, H, T, T) weights (ViT-B/16, 16 images:
    ~360 MB) whatever the number of images. `progress` shows a progress bar over the chunks.
    """
    from data_tools.progress_bar import progress_bar

    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (B, 3, H, W) image batch, got shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    distances = patch_distances(grid, model.patch_size).to(device)  # (N, N)
    was_training = model.training
    model.eval()
    total = torch.zeros(len(model.blocks), model.config.num_heads, dtype=torch.float64, device=device)  # (depth, heads)
    try:
        for chunk in progress_bar(images.split(batch_size), desc="attention distance", unit="batch", disable=not progress):
            chunk = chunk.to(device)
            x = normalize_uint8(chunk) if chunk.dtype == torch.uint8 else chunk.float()
            attentions = model.forward_intermediates(x, layers=[], return_attention=True)["attentions"]
            for layer, attn in enumerate(attentions):
                total[layer] += attention_distance(attn, distances, model.num_prefix_tokens).sum(dim=0)
    finally:
        model.train(was_training)
    return (total / images.shape[0]).cpu().numpy()


def draw_attention_distance(ax, distance: np.ndarray, image_size: int | None = None) -> None:
    """One dot per head: x = layer (1-based), y = mean attention distance in pixels; colour = head index."""
    depth, heads = distance.shape
    cmap = _mpl.colormap("tab20" if heads > 10 else "tab10")
    for h in range(heads):
        ax.scatter(np.arange(1, depth + 1), distance[:, h], s=14, color=cmap(h % cmap.N), label=f"Head {h + 1}")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_xticks(range(1, depth + 1))
    top = max(float(image_size or 0), float(distance.max()) * 1.1, 1.0)  # the image size, as in the paper's axis
    ax.set_ylim(0, top)
    ax.set_title("Mean attention distance")
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right", frameon=False)


# ------------------------------------------------------------------------------------------ PNG writers
def plot_patch_components(components: np.ndarray, path: str | Path) -> Path:
    fig = _mpl.new_figure(5, 3.5)
    draw_patch_components(fig.add_subplot(), components)
    return _mpl.save(fig, path)


def plot_position_similarity(sim: np.ndarray, path: str | Path) -> Path:
    fig = _mpl.new_figure(5.5, 5)
    draw_position_similarity(fig.add_subplot(), sim)
    return _mpl.save(fig, path)


def plot_attention_distance(distance: np.ndarray, path: str | Path, image_size: int | None = None) -> Path:
    fig = _mpl.new_figure(4.5, 4)
    draw_attention_distance(fig.add_subplot(), distance, image_size)
    return _mpl.save(fig, path)


def plot_figure7(
    components: np.ndarray, sim: np.ndarray, distance: np.ndarray, path: str | Path, image_size: int | None = None
) -> Path:
    """The three panels side by side, as in the paper."""
    fig = _mpl.new_figure(16, 5)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 1.0]})
    draw_patch_components(axes[0], components)
    draw_position_similarity(axes[1], sim)
    draw_attention_distance(axes[2], distance, image_size)
    return _mpl.save(fig, path)
