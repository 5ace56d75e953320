"""What masked patch prediction asks the model to predict for each patch: one registry of the paper's three targets.

The ViT paper (appendix B.1.2) tried three targets for a corrupted patch; all "worked quite well, though L2 was
slightly worse", and the mean colour was kept for its few-shot results:

    mean_color(bits=3)               one class per patch: the patch's mean colour, `bits` per channel (512 classes)
    downsampled_color(grid=4, bits=3) grid² classes per patch: each cell of the patch pooled to grid×grid, quantised
    pixels(normalize=False)           P·P·3 regression values per patch, L2 loss

Every target is a parameter-free `nn.Module` that maps the raw uint8 batch `(B, 3, H, W)` (the same augmented
pixels the model sees, before normalisation) to targets for *every* patch, in the backbone's row-major patch
order; the objective gathers the corrupted ones. Attributes: `kind` ("classification" | "regression"),
`num_outputs` (G sub-predictions per patch, or values per patch), `num_classes` (per sub-prediction; None for
regression), `out_features` (the head's width), and `render(predictions)` that draws predictions as P×P RGB
patches for the analysis pictures.

Colour quantisation (both classification targets): for a cell of c×c pixels with channel sum S,
`q = floor(S / c² / 256 · 2^bits)`, computed in exact integer arithmetic (no float rounding at bin edges),
and the class is `(q_R · 2^bits + q_G) · 2^bits + q_B`: red is the most significant digit.
Example: (255, 0, 128) at 3 bits → (7, 0, 4) → 7·64 + 0·8 + 4 = 452.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from einops import rearrange

from ..errors import ConfigError
from ..lookup import check_options, lookup


def _check_images(images: torch.Tensor, patch_size: int) -> None:
    """Targets read raw pixels: a uint8 RGB batch whose sides are whole numbers of patches."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"targets take a uint8 (B, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ConfigError(
            f"image size {h}x{w} is not a multiple of the patch size {patch_size}; "
            f"set the data image_size to a multiple of {patch_size}"
        )


def decode_class(indices: torch.Tensor, bits: int = 3) -> torch.Tensor:
    """Colour class indices (...) → (..., 3) uint8 RGB at the centre of each bin (R is the most significant digit).

    The inverse of the quantisation up to the bin width, used to paint predicted colours.
    """
    levels = 2**bits
    indices = indices.long()
    digits = torch.stack([indices // (levels * levels), (indices // levels) % levels, indices % levels], dim=-1)  # (..., 3)
    return ((digits.float() + 0.5) * (256 / levels)).floor().clamp(0, 255).to(torch.uint8)


class ColorCellsTarget(nn.Module):
    """Each patch average-pooled to grid×grid cells, each cell's colour quantised to `bits` per channel.

    `grid=1` is the paper's mean-colour target; `grid=4` on 16px patches its "4×4 downsized patch" target.
    Output: (B, N, grid²) int64 class indices, cells in row-major order within the patch.
    """

    kind = "classification"

    def __init__(self, patch_size: int, grid: int = 1, bits: int = 3, name: str = "downsampled_color"):
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"target '{name}': bits must be an integer in 1..8 (per channel), got {bits!r}")
        if not isinstance(grid, int) or grid < 1 or patch_size % grid:
            raise ConfigError(
                f"target '{name}': grid={grid!r} must be a positive divisor of the patch size {patch_size} "
                f"(each cell is patch_size/grid pixels wide); pick e.g. grid=4 for 16px patches"
            )
        self.name = name
        self.patch_size = patch_size
        self.grid = grid
        self.bits = bits
        self.num_outputs = grid * grid
        self.num_classes = 2 ** (3 * bits)
        self.out_features = self.num_outputs * self.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.patch_size)
        cell = self.patch_size // self.grid
        cells = rearrange(
            images,
            "b ch (gh g1 c1) (gw g2 c2) -> b (gh gw) (g1 g2) ch (c1 c2)",
            g1=self.grid, g2=self.grid, c1=cell, c2=cell,
        )  # (B, N, G, 3, cell²): pixels of each cell, patches and cells row-major
        sums = cells.sum(dim=-1, dtype=torch.int64)  # (B, N, G, 3); ≤ 255·P², exact
        q = torch.div(sums * 2**self.bits, 256 * cell * cell, rounding_mode="floor").clamp_(0, 2**self.bits - 1)
        r, g, b = q.unbind(-1)  # each (B, N, G)
        return (r * 2**self.bits + g) * 2**self.bits + b

    def decode_class(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) class indices → (..., 3) uint8 bin-centre colours."""
        return decode_class(indices, self.bits)

    def render(self, classes: torch.Tensor) -> torch.Tensor:
        """(..., G) predicted classes → (..., P, P, 3) uint8 patches, each cell painted its bin-centre colour."""
        rgb = self.decode_class(classes)  # (..., G, 3)
        cells = rgb.unflatten(-2, (self.grid, self.grid))  # (..., grid, grid, 3)
        scale = self.patch_size // self.grid
        return cells.repeat_interleave(scale, dim=-3).repeat_interleave(scale, dim=-2)  # (..., P, P, 3)

    def extra_repr(self) -> str:
        return f"name={self.name}, patch_size={self.patch_size}, grid={self.grid}, bits={self.bits}"


class PixelsTarget(nn.Module):
    """The whole patch as P·P·3 regression values, flattened in `(p1 p2 c)` order (row, column, channel).

    Values are the raw pixels scaled to [0, 1] (x / 255): a function of the uint8 pixels alone, independent of
    the model's input normalisation. `normalize=True` standardises each patch over its P·P·3 values,
    (x - mean) / sqrt(var + 1e-6) with the unbiased variance — MAE's `norm_pix_loss`.
    Output: (B, N, P·P·3) float32.
    """

    kind = "regression"
    num_classes = None

    def __init__(self, patch_size: int, normalize: bool = False):
        super().__init__()
        self.name = "pixels"
        self.patch_size = patch_size
        self.normalize = bool(normalize)
        self.num_outputs = patch_size * patch_size * 3
        self.out_features = self.num_outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.patch_size)
        p = self.patch_size
        x = rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p).float() / 255.0  # (B, N, P·P·3)
        if self.normalize:
            mean = x.mean(dim=-1, keepdim=True)  # (B, N, 1)
            var = x.var(dim=-1, keepdim=True)  # (B, N, 1)
            x = (x - mean) / (var + 1e-6) ** 0.5
        return x

    def render(self, values: torch.Tensor) -> torch.Tensor:
        """(..., P·P·3) predicted values → (..., P, P, 3) uint8 patches.

        Raw targets map back by ×255; normalised ones have lost their patch statistics, so each patch is
        stretched to its own min..max (shape and contrast are what the picture can show).
        """
        p = self.patch_size
        v = values.detach().float()
        if self.normalize:
            lo = v.amin(dim=-1, keepdim=True)
            hi = v.amax(dim=-1, keepdim=True)
            v = (v - lo) / (hi - lo).clamp_min(1e-6)
        rgb = (v * 255.0).round().clamp(0, 255).to(torch.uint8)
        return rearrange(rgb, "... (p1 p2 c) -> ... p1 p2 c", p1=p, p2=p)  # (..., P, P, 3)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, normalize={self.normalize}"


def _mean_color(patch_size: int, bits: int = 3) -> ColorCellsTarget:
    return ColorCellsTarget(patch_size, grid=1, bits=bits, name="mean_color")


def _downsampled_color(patch_size: int, grid: int = 4, bits: int = 3) -> ColorCellsTarget:
    return ColorCellsTarget(patch_size, grid=grid, bits=bits, name="downsampled_color")


def _pixels(patch_size: int, normalize: bool = False) -> PixelsTarget:
    return PixelsTarget(patch_size, normalize=normalize)


TARGETS: dict[str, Callable[..., nn.Module]] = {
    "mean_color": _mean_color,
    "downsampled_color": _downsampled_color,
    "pixels": _pixels,
}


def list_targets() -> list[str]:
    return list(TARGETS)


def build(name: str, patch_size: int, **kwargs) -> nn.Module:
    """A registered target for `patch_size`-pixel patches, e.g. `build("downsampled_color", 16, grid=4, bits=3)`."""
    factory = lookup("MPP target", name, TARGETS)
    check_options(f"target '{name}'", factory, kwargs, skip=("patch_size",))
    return factory(patch_size, **kwargs)
