"""`ssl-vit estimate-memory`: the peak memory of one training step per device, before renting the GPU.

    ssl-vit estimate-memory --config vit_l16_mean_color                 # a recipe as it would train
    ssl-vit estimate-memory --config vit_b16_mean_color data.batch_size=256
    ssl-vit estimate-memory --model vit_large_patch16 --batch 128 --grad-checkpointing --budget-gib 78

The flags are shorthands for recipe keys (--model model.name, --batch data.batch_size, --img-size
data.image_size, --precision train.precision, --grad-checkpointing train.grad_checkpointing), applied over the
recipe, by default the paper's ViT-B/16 one (pretrain/vit_b16_mean_color: 128 × 224px, bf16). How the estimate is
made: ssl_vit/train/estimate.py.
"""
from __future__ import annotations

import argparse
import json

DEFAULT_RECIPE = "pretrain/vit_b16_mean_color"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_RECIPE, metavar="RECIPE",
                        help=f"a pretraining recipe, file or name (default: {DEFAULT_RECIPE})")
    parser.add_argument("--model", default=None, help="a registered model, e.g. vit_large_patch16")
    parser.add_argument("--batch", type=int, default=None, help="images per device per micro-batch")
    parser.add_argument("--img-size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="autocast bf16 or fp16 (the same memory), or fp32")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None, help="recompute each block in the backward")
    parser.add_argument("--budget-gib", type=float, default=78.0,
                        help="device memory to compare against (default 78: what an H100 80GB hands to a process)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. objective.kwargs.target=pixels")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..recipe_files import resolve_recipe
    from ..train.estimate import describe, pretrain_step_memory  # torch: here, not for --help

    flags = {"model.name": args.model, "data.batch_size": args.batch, "data.image_size": args.img_size,
             "train.precision": args.precision, "train.grad_checkpointing": args.grad_checkpointing}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + list(args.overrides)
    cfg = load_config(resolve_recipe(args.config, "pretrain"), overrides)
    estimate = pretrain_step_memory(cfg)
    if args.json:
        print(json.dumps({**estimate, "budget_gib": args.budget_gib}, indent=2))
    else:
        print(describe(estimate, args.budget_gib))
    return 0
