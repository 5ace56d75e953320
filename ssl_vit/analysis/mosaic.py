"""Many small images as one array, so a figure draws one `imshow` instead of hundreds of subplots.

A 24×24 grid of position-similarity maps would be 576 matplotlib axes (minutes to render); tiled into one
array it is a single image, whatever the grid.
"""
from __future__ import annotations

import numpy as np


def tile(tiles: np.ndarray, cols: int, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """(n, h, w[, c]) tiles -> (rows*(h+gap)-gap, cols*(w+gap)-gap[, c]) array, row-major, gaps set to `fill`.

    `fill=nan` shows as the colormap's "bad" colour for scalar maps; use 1.0 for white between RGB tiles.
    """
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap) + tiles.shape[3:], fill, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i]
    return out


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant array becomes 0.5), the usual way to show a filter as an image."""
    lo, hi = float(x.min()), float(x.max())
    return np.full_like(x, 0.5, dtype=np.float64) if hi - lo < 1e-12 else (x - lo) / (hi - lo)
