"""`ssl-vit export RUN_OR_CHECKPOINT OUT.safetensors`: the backbone alone, in timm's layout, plus its config.

The checkpoint holds the whole objective ([MASK] embedding and prediction head included) and the recipe that
built it; export rebuilds the objective from that recipe, loads the weights strictly, and writes only the
backbone through `models.weights.save_backbone` (OUT.safetensors + OUT.json). The result loads strictly
into `ssl_vit.create_model(name, **overrides)` and into timm's `vit_*_patch*` models of the same size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                        help="a run directory (its latest checkpoint) or one checkpoint directory (…/checkpoints/step_0001000)")
    parser.add_argument("output", metavar="OUT.safetensors", help="where to write the backbone (a .json with its config goes beside it)")


def run(args: argparse.Namespace) -> int:
    from ..models.weights import save_backbone
    from ..train.checkpoint import resolve_resume
    from ..train.restore import restore_objective

    if not Path(args.source).exists():
        raise CheckpointError(f"{args.source}: no such run or checkpoint directory")
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise CheckpointError(f"{output}: the export is a .safetensors file; use {output.with_suffix('.safetensors')}")
    path = resolve_resume(args.source, Path(args.source) / "checkpoints")
    objective, cfg, state = restore_objective(path)
    save_backbone(objective.backbone, output, metadata={
        "source_checkpoint": str(path), "step": int(state["step"]), "objective": cfg.objective.name,
        "objective_kwargs": cfg.objective.kwargs, "registered_name": cfg.model.name,
        "train_seed": cfg.train.seed,  # rebuilds the initial weights: `ssl-vit eval --baseline random`
    })
    params = sum(p.numel() for p in objective.backbone.parameters())
    print(f"wrote {output} and {output.with_suffix('.json')}: {cfg.model.name} ({params / 1e6:.2f}M parameters) "
          f"from {path} (step {state['step']})")
    return 0
