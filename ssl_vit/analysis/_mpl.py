"""Matplotlib access for the analysis figures: the Agg backend, no pyplot, and a clear message when missing.

Figures are built as `matplotlib.figure.Figure` objects bound to an Agg canvas rather than through pyplot:
that is the Agg backend chosen explicitly, without touching pyplot's global backend or figure registry, so
drawing works on headless machines, never opens a window, and leaks no figures in long-running processes.
matplotlib is an optional extra (`ssl_vit[analysis]`), hence the import inside the function.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..files import atomic_write, make_dir

DPI = 120


def new_figure(width: float, height: float):
    """A blank Agg-backed figure of `width` × `height` inches."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise UserError(
            "drawing figures needs matplotlib, an optional extra: pip install 'ssl_vit[analysis]'"
        ) from err
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str, bad: str | None = None):
    """A registered colormap by name (viridis, tab10, ...); `bad` colours NaN cells (the gaps of a mosaic)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return cmap.with_extremes(bad=bad) if bad else cmap


def save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG, creating the folder; returns the path."""
    path = Path(path)
    make_dir(path.parent)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", facecolor="white"))
