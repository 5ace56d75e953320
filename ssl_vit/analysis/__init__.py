"""Figures and reports: the ViT paper's Figure 7, masked-prediction pictures, training and few-shot curves.

The numbers (`patch_embedding_components`, `position_similarity`, `mean_attention_distance`,
`masked_prediction_panels`, `fewshot_curve`) are plain functions of tensors and models; the `plot_*` functions
write PNGs with matplotlib (the optional `analysis` extra), and `write_report` ties them into Markdown.

The names are imported when first used (PEP 562, as in `ssl_vit/__init__.py`): `ssl-vit study --help` reads
its defaults from `analysis/study.py` and must not import torch and matplotlib through this package.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "mean_attention_distance": "ssl_vit.analysis.figure7",
    "patch_embedding_components": "ssl_vit.analysis.figure7",
    "patch_embedding_pca": "ssl_vit.analysis.figure7",
    "plot_attention_distance": "ssl_vit.analysis.figure7",
    "plot_figure7": "ssl_vit.analysis.figure7",
    "plot_patch_components": "ssl_vit.analysis.figure7",
    "plot_position_similarity": "ssl_vit.analysis.figure7",
    "position_similarity": "ssl_vit.analysis.figure7",
    "MaskedPanels": "ssl_vit.analysis.masked",
    "masked_prediction_panels": "ssl_vit.analysis.masked",
    "plot_masked_prediction": "ssl_vit.analysis.masked",
    "fewshot_curve": "ssl_vit.analysis.plots",
    "plot_fewshot": "ssl_vit.analysis.plots",
    "plot_training_curves": "ssl_vit.analysis.plots",
    "read_metrics": "ssl_vit.analysis.plots",
    "markdown_table": "ssl_vit.analysis.report",
    "write_report": "ssl_vit.analysis.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ssl_vit.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
