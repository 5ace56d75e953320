"""Figures and reports: the ViT paper's Figure 7, masked-prediction pictures, training and few-shot curves.

The numbers (`patch_embedding_components`, `position_similarity`, `mean_attention_distance`,
`masked_prediction_panels`, `fewshot_curve`) are plain functions of tensors and models; the `plot_*` functions
write PNGs with matplotlib (the optional `analysis` extra), and `write_report` ties them into Markdown.
"""
from .figure7 import (
    mean_attention_distance,
    patch_embedding_components,
    patch_embedding_pca,
    plot_attention_distance,
    plot_figure7,
    plot_patch_components,
    plot_position_similarity,
    position_similarity,
)
from .masked import MaskedPanels, masked_prediction_panels, plot_masked_prediction
from .plots import fewshot_curve, plot_fewshot, plot_training_curves, read_metrics
from .report import markdown_table, write_report

__all__ = [
    "MaskedPanels",
    "fewshot_curve",
    "markdown_table",
    "masked_prediction_panels",
    "mean_attention_distance",
    "patch_embedding_components",
    "patch_embedding_pca",
    "plot_attention_distance",
    "plot_fewshot",
    "plot_figure7",
    "plot_masked_prediction",
    "plot_patch_components",
    "plot_position_similarity",
    "plot_training_curves",
    "position_similarity",
    "read_metrics",
    "write_report",
]
