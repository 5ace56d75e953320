"""Fine-tuning: the pretrained backbone plus a zero-initialised linear head, trained end to end.

It runs on the pretraining trainer (checkpoints, resume, logs, multi-process for free) with the
`ImageClassification` objective and a labelled train stream. The test split is scored once, at the end of the
schedule: `finetune/top1`. Selection, when asked for (`holdout_fraction: 0.02`), never reads test: that part of
the training split (by key hash, `data.split.Holdout`) is left out of training and scored every `val_every` steps
(default: once per epoch); the weights of the best holdout score are kept (OUT/finetune/selected.pt) and their
test top-1 is `finetune/top1_selected`, with `finetune/selected_step` and `finetune/holdout_top1`. A different resolution (the paper fine-tunes
at 384px) builds the backbone at that size; `load_backbone` resamples the position embeddings in 2D.

The optimizer: SGD with momentum (the ViT paper) or AdamW (MAE), both with optional layer-wise learning-rate
decay (`ssl_vit/train/layer_decay.py`).
Every holdout validation is in OUT/finetune/eval.jsonl and finetune_history.json. Re-running the same command
resumes from the run's last checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ssl_vit.data.split import Holdout
from ssl_vit.config.finetune import FinetuneConfig, FinetuneData, load_finetune_config
from ssl_vit.errors import ConfigError, UserError
from ssl_vit.files import atomic_write
from ssl_vit.train.layer_decay import build_finetune_optimizer

from .context import EvalContext
from .registry import register

HISTORY = "finetune_history.json"  # every holdout validation, beside the run's own files in OUT/finetune

def finetune(ctx: EvalContext, cfg: FinetuneConfig, resume: str | None = "auto") -> dict[str, float]:
    """Fine-tune ctx's backbone on the train split; test top-1 at the end (and of the holdout-selected weights)."""
    from ssl_vit.data.stream import steps_per_epoch
    from ssl_vit.objectives import ImageClassification
    from ssl_vit.train import DataFeed, RunFiles, Trainer, Validation
    from ssl_vit.train.wiring import total_steps, train_stream_factory

    accelerator = ctx.accelerator
    if accelerator is None:
        raise ConfigError("fine-tuning needs an Accelerator in the evaluation context")
    run_dir = Path(ctx.out_dir or "runs/eval") / "finetune"
    train_shards = ctx.shards("train")
    num_classes = cfg.data.num_classes or ctx.num_classes()
    if not num_classes:
        raise ConfigError(f"{ctx.data.train}: the shards list no class_names; set data.num_classes in the fine-tuning recipe")
    per_epoch = steps_per_epoch(train_shards.num_samples, cfg.train.global_batch) if train_shards.num_samples else None
    total = total_steps(cfg.train, train_shards.num_samples, ctx.data.train)
    holdout = Holdout(cfg.holdout_fraction, held=True) if cfg.holdout_fraction > 0 else None
    val_every = (cfg.val_every or per_epoch or max(total // 10, 1)) if holdout is not None else 0

    backbone = ctx.backbone_factory(img_size=cfg.data.image_size, **cfg.model_overrides())
    objective = ImageClassification(backbone, num_classes, **cfg.objective)
    d = cfg.data
    make_stream = train_stream_factory(train_shards, d, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
                                       global_batch=cfg.train.global_batch, holdout=None if holdout is None else Holdout(holdout.fraction, held=False))

    scores: dict[int, float] = {}  # step -> holdout top-1
    selected = run_dir / "selected.pt"

    def validate(step: int) -> dict[str, float]:
        scores[step] = evaluate_top1(objective, ctx, d, split="train", holdout=holdout)
        history = {**_logged_scores(run_dir / "eval.jsonl"), **scores}
        if ctx.is_main and step == max(history, key=lambda st: (history[st], -st)):  # ties: the earlier step
            best = {"step": step, "score": scores[step],
                    "model": {k: v.detach().cpu() for k, v in objective.state_dict().items()}}
            atomic_write(selected, lambda f: torch.save(best, f))  # a preempted save never leaves half a file
        return {"finetune/holdout_top1": scores[step]}

    trainer = Trainer(
        objective, DataFeed(make_stream, batch_size=d.batch_size, samples_per_epoch=train_shards.num_samples),
        accelerator=accelerator, train=cfg.train, optim=cfg.optim, total_steps=total,
        run=RunFiles(run_dir, cfg.to_dict(), writes=(selected.name, HISTORY)), validation=Validation(val_every, validate),
        optimizer_factory=lambda model: build_finetune_optimizer(model, cfg.optim),
    )
    result = trainer.fit(resume=resume)
    if result.status == "preempted":
        raise UserError(f"fine-tuning stopped at step {result.step} (checkpoint {result.checkpoint}); "
                        "run the same command again to resume it")
    out = {"finetune/top1": evaluate_top1(objective, ctx, d)}  # the end of the schedule, on test
    if holdout is None:
        return out
    if result.step not in scores and result.step % val_every:  # the final weights are a candidate too
        validate(result.step)
    history = {**_logged_scores(run_dir / "eval.jsonl"), **scores}  # a resumed run: earlier validations too
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()  # the main process has written selected.pt
    choice = torch.load(selected, map_location="cpu", weights_only=True)
    final = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    objective.load_state_dict(choice["model"])
    out.update({"finetune/top1_selected": evaluate_top1(objective, ctx, d), "finetune/selected_step": float(choice["step"]),
                "finetune/holdout_top1": float(choice["score"])})
    objective.load_state_dict(final)
    if ctx.is_main:
        rows = [{"step": st, "epoch": st / per_epoch if per_epoch else None, "holdout_top1": history[st]}
                for st in sorted(history)]
        atomic_write(run_dir / HISTORY, json.dumps(rows, indent=1) + "\n")
    return out


def _logged_scores(path: Path) -> dict[int, float]:
    """step -> holdout top-1 from the trainer's eval.jsonl (main process; absent elsewhere or before the first one)."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["step"]): float(r["finetune/holdout_top1"]) for r in records if "finetune/holdout_top1" in r}


@torch.no_grad()
def evaluate_top1(objective: nn.Module, ctx: EvalContext, data: FinetuneData, split: str = "test",
                  holdout: Holdout | None = None) -> float:
    """Top-1 (percent) on `split` (of its `holdout` part); each rank scores its share, counts summed over ranks."""
    was_training = objective.training
    objective.eval()
    counts = torch.zeros(2, device=ctx.device)  # correct, seen
    with ctx.eval_batches(split, data.image_size, batch_size=data.batch_size, num_workers=data.num_workers,
                          crop_pct=data.crop_pct, holdout=holdout) as stream:
        for batch in stream:
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = batch["label"].to(ctx.device)
            if ctx.accelerator is not None:
                with ctx.accelerator.autocast():
                    logits = objective.predict(images)
            else:
                logits = objective.predict(images)
            counts += torch.stack([(logits.argmax(1) == labels).sum(), torch.tensor(len(labels), device=ctx.device)]).float()
    if ctx.accelerator is not None:
        counts = ctx.accelerator.reduce(counts, reduction="sum")
    objective.train(was_training)
    return 100.0 * counts[0].item() / max(counts[1].item(), 1.0)


@register("finetune")
class Finetune:
    """`recipe`: a recipes/finetune/*.yaml file; `overrides`: its `key=value` overrides; `resume`: auto | path | null."""

    def __init__(self, recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), resume: str | None = "auto"):
        if recipe is None:
            raise ConfigError("fine-tuning needs a recipe: --config recipes/finetune/smoke.yaml (or vit_b16_paper.yaml, "
                              "vit_b16_mae.yaml), or `finetune: {recipe: ...}` in the eval recipe")
        from ..recipe_files import resolve_recipe

        self.cfg = load_finetune_config(resolve_recipe(recipe, "finetune"), list(overrides))  # checked now, before any feature extraction
        self.resume = resume

    def run(self, ctx: EvalContext) -> dict[str, float]:
        return finetune(ctx, self.cfg, self.resume)
