"""`ssl-vit analyze CHECKPOINT --images SPEC --out DIR`: Figure 7 and the masked-prediction picture of a model.

Writes into DIR: `figure7.png` (the three panels side by side) and each panel alone (`embedding_filters.png`,
`position_similarity.png`, `attention_distance.png`), `masked_prediction.png` when the checkpoint holds the
MPP head, `training_curves.png` when the run's `metrics.jsonl` is beside the checkpoint, the numbers in
`analysis.json`, and `analysis.md` linking them all with a note on how to read each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..files import atomic_write

if TYPE_CHECKING:  # numpy, torch and the analysis (matplotlib) are imported by `run`, not by `--help`
    import numpy as np
    import torch

MASKED_ROWS = 4  # images in the masked-prediction picture; the attention distances use all --num-images

HOW_TO_READ = {
    "filters": "**Embedding filters** (Figure 7, left): the first principal components of the patch-embedding "
    "filters, each scaled to its own range (signs are arbitrary). A trained model shows smooth, low-frequency "
    "colour and edge bases, like the first layer of a CNN; a random one shows noise.",
    "positions": "**Position embedding similarity** (Figure 7, centre): tile (row i, column j) is the cosine "
    "similarity of position (i, j)'s embedding to every other position's. Learned 1D embeddings that found the "
    "2D layout light up around their own position, and along their own row and column.",
    "distance": "**Mean attention distance** (Figure 7, right): for each head (a dot per head per layer), the "
    "attention-weighted mean distance in pixels between a query patch and the patches it attends to, averaged "
    "over patches and images; the analogue of a CNN's receptive field. The paper sees some heads attend "
    "globally already in the lowest layers while others stay local, and all heads attending further with depth. "
    "Attention to the [class] token is left out (it has no position).",
    "masked": "**Masked prediction**: per image, the original; the corrupted input the model saw ([MASK]ed patches "
    "grey and hatched, patches replaced by another patch's embedding outlined cyan and shown with that patch's "
    "pixels, kept patches outlined yellow); the target of each corrupted patch; and the model's prediction, "
    "painted over the corrupted patches with the rest of the image faded. Compare the last two panels.",
    "curves": "**Training curves**: loss and accuracy on the corrupted patches against the step, raw (faint) and "
    "smoothed.",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a run directory (its latest checkpoint), a checkpoint directory, or backbone weights "
                             "(.safetensors from `ssl-vit export`, a timm/Hugging Face state dict)")
    parser.add_argument("--images", required=True, metavar="SPEC",
                        help="images to analyse: a shard directory (with _info.json) or a brace-expanded URL list")
    parser.add_argument("--split", default=None, help="split of a shard directory (default: its only split)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the PNGs and analysis.md")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="registered architecture of weights saved without a config (e.g. vit_base_patch16)")
    parser.add_argument("--num-images", type=int, default=16, metavar="N",
                        help=f"images averaged in the attention distances (default 16); the first {MASKED_ROWS} "
                             "go into the masked-prediction picture")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruption drawn for the masked picture")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda when available)")


def read_images(spec: str, split: str | None, count: int, image_size: int) -> torch.Tensor:
    """The first `count` images of `spec` as a (B, 3, S, S) uint8 batch, centre-cropped as for evaluation."""
    import torch

    from ..data import build_eval_stream

    stream = build_eval_stream(spec, batch_size=min(count, 64), image_size=image_size, num_workers=0, split=split)
    batches, have = [], 0
    try:
        for batch in stream:
            batches.append(batch["image"])
            have += batch["image"].shape[0]
            if have >= count:
                break
    finally:
        stream.close()
    if not batches:
        raise DataError(f"{spec}: no images to analyse (the split is empty)")
    return torch.cat(batches)[:count]


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..analysis import figure7, masked, plots
    from ..analysis.loading import load_for_analysis
    from ..analysis.report import write_report

    if args.num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {args.num_images}")
    out = Path(args.out)
    loaded = load_for_analysis(args.checkpoint, args.model)
    device = _device(args.device)
    backbone = loaded.backbone.to(device).eval()
    size = backbone.config.img_size
    images = read_images(args.images, args.split, args.num_images, size)

    components, variance = figure7.patch_embedding_pca(backbone)
    similarity = figure7.position_similarity(backbone)
    distance = figure7.mean_attention_distance(backbone, images, batch_size=16, progress=True)
    figures = {
        "Figure 7": figure7.plot_figure7(components, similarity, distance, out / "figure7.png", image_size=size),
        "Embedding filters": figure7.plot_patch_components(components, out / "embedding_filters.png"),
        "Position embedding similarity": figure7.plot_position_similarity(similarity, out / "position_similarity.png"),
        "Mean attention distance": figure7.plot_attention_distance(distance, out / "attention_distance.png", size),
    }
    notes = [HOW_TO_READ["filters"], HOW_TO_READ["positions"], HOW_TO_READ["distance"]]
    numbers = {
        "explained_variance_ratio": variance.tolist(),
        "mean_attention_distance_px": distance.tolist(),
        "num_images": int(images.shape[0]),
        **loaded.info,
    }
    tables = [_distance_table(distance)]

    if loaded.objective is not None:
        generator = torch.Generator().manual_seed(args.seed)
        panels = masked.masked_prediction_panels(
            loaded.objective.to(device), images[:MASKED_ROWS].to(device), generator
        )
        figures["Masked prediction"] = masked.plot_masked_prediction(
            panels, out / "masked_prediction.png", title=f"target: {loaded.info.get('target', '?')}"
        )
        notes.append(HOW_TO_READ["masked"])
        numbers["masked_prediction_metrics"] = panels.metrics
        tables.append({"title": f"Masked prediction on these {len(panels.original)} images",
                       "rows": [{"metric": k, "value": v} for k, v in panels.metrics.items()]})
    else:
        what = f"a '{loaded.info['objective']}' checkpoint" if "objective" in loaded.info else "a backbone only"
        notes.append(f"**Masked prediction**: skipped — this is {what}, without the [MASK] embedding and the "
                     "prediction head of masked patch prediction. Analyse the pretraining run directory (or one of "
                     "its checkpoints) to draw it.")

    metrics_file = loaded.run_dir / "metrics.jsonl" if loaded.run_dir else None
    if metrics_file is not None and metrics_file.is_file():
        records = plots.read_metrics(metrics_file)
        if any(isinstance(r.get("loss"), (int, float)) for r in records):
            figures["Training curves"] = plots.plot_training_curves(records, out / "training_curves.png")
            notes.append(HOW_TO_READ["curves"])

    atomic_write(out / "analysis.json", json.dumps(numbers, indent=2) + "\n")
    summary = {**loaded.info, "images": f"{images.shape[0]} from {args.images} at {size}px",
               f"filter variance in the first {len(variance)} components": float(np.sum(variance))}
    report = write_report(out, title=f"Analysis of {loaded.source.name}", summary=summary, figures=figures,
                          tables=tables, notes=notes, filename="analysis.md")
    print(f"wrote {report} and {len(figures)} figures")
    return 0


def _distance_table(distance: np.ndarray) -> dict:
    """Per layer: the smallest, mean and largest mean attention distance over the heads, in pixels."""
    rows = [
        {"layer": i + 1, "min (px)": float(d.min()), "mean (px)": float(d.mean()), "max (px)": float(d.max())}
        for i, d in enumerate(distance)
    ]
    return {"title": "Mean attention distance over heads", "rows": rows}
