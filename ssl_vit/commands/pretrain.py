"""`ssl-vit pretrain --config RECIPE [key=value ...] [--resume auto|PATH] [--print-config]`.

Wires a recipe to the trainer: data spec → train stream factory, model + objective, periodic evaluation.
Launch several processes with `accelerate launch [--config_file recipes/accelerate/X.yaml] -m ssl_vit
pretrain ...`; the global batch stays `train.global_batch` whatever the process count (accumulation fills in).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import PretrainConfig, accumulation_steps, build_objective, load_config
from ..errors import ConfigError, UserError, one_line, report_now
from ..recipe_files import resolve_recipe

if TYPE_CHECKING:  # torch is imported by `run`, not by `--help`
    import torch

    from ..train import Validation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .schema_help import keys_help

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = keys_help(PretrainConfig, "recipe keys (in the recipe, or key=value after the options): "
                                              "key  type = default, and what it means")
    parser.add_argument("--config", required=True, metavar="RECIPE",
                        help="a recipe file or a shipped recipe's name (pretrain/smoke, vit_b16_mean_color; see `ssl-vit recipes`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-3 data.train=/data/in1k")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="auto: continue from output_dir's latest checkpoint (fresh start if it has none); PATH: from "
                             "that checkpoint or run. The recipe may change only in optimizer, schedule, length, logging "
                             "and evaluation keys (README: Resuming)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let a fresh start delete the run in output_dir, or --resume PATH replace that run's later "
                             "checkpoints (without it, both are refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (data, batch arithmetic, length, resume, memory per device) and exit without training")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="with --dry-run: plan for N processes (default: this launch's, 1 outside accelerate launch)")


def periodic_eval(cfg: PretrainConfig, objective: torch.nn.Module, accelerator) -> Validation | None:
    """`eval.evaluators` on the backbone every `eval.every` steps, or None when `eval.every` is 0."""
    if not cfg.eval.every:
        return None
    try:
        from ..eval.periodic import check_periodic, evaluate_during_pretraining
    except ModuleNotFoundError:
        raise ConfigError("eval.every is set, but ssl_vit.eval.periodic is not installed; set eval.every=0") from None
    from ..train import Validation

    check_periodic(cfg)  # unknown evaluators or unreadable data fail now, not after the first eval.every steps
    return Validation(cfg.eval.every, lambda step: evaluate_during_pretraining(objective.backbone, cfg, accelerator, step))


def init_source(init_from: str) -> tuple[Path, str | None]:
    """(the weights `model.init_from` names, how the log names them when not by that path). A Hugging Face Hub id
    (`hf-hub:ORG/NAME`, or `ORG/NAME` when no such local path exists: `models/hub_weights.py`) is fetched into
    huggingface_hub's cache now, before any work, and stands for that snapshot folder. A run directory, its
    `checkpoints/` or one checkpoint stands for that checkpoint's `state.pt` (a run's latest, as `eval --checkpoint`
    and `export` read it: `locate_checkpoint`); anything else is read as weights by `models.init_from`, which cannot
    know the trainer's layout."""
    from ..models.hub_weights import fetch, fetched_name, hub_id
    from ..train.checkpoint import STATE_FILE
    from ..train.restore import locate_checkpoint

    hub = hub_id(init_from, "model.init_from")
    if hub is not None:
        folder = fetch(hub, "model.init_from")
        return folder, fetched_name(hub, folder)
    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"model.init_from {init_from}: no such file or directory; give a run directory or checkpoint, "
                          "an ssl-vit export, a timm file, a Hugging Face ViT folder, an MAE checkpoint-*.pth or a "
                          "Hugging Face Hub id hf-hub:ORG/NAME")
    found = locate_checkpoint(path, "model.init_from")
    return (found / STATE_FILE if found is not None else path), None


def run(args: argparse.Namespace) -> int:
    args.config = resolve_recipe(args.config, "pretrain")
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if not cfg.data.train:
        raise ConfigError(f"{args.config}: data.train is not set; pass data.train=/path/to/shards (a directory with "
                          "_info.json) or a URL list such as data.train='/data/train-{000000..000099}.tar'")
    init_weights, init_name = init_source(cfg.model.init_from) if cfg.model.init_from else (None, None)
    import torch
    import torch.distributed as dist

    from ..data import resolve_spec
    from ..train import DataFeed, RunFiles, Trainer, make_accelerator
    from ..train.checkpoint import latest_checkpoint
    from ..train.wiring import total_steps, train_stream_factory

    shards = resolve_spec(cfg.data.train, cfg.data.split, num_samples=cfg.data.num_samples,
                          follow_symlinks=cfg.data.follow_symlinks)
    steps = total_steps(cfg.train, shards.num_samples, cfg.data.train)
    if args.dry_run:
        return _dry_run(args, cfg, shards, steps)
    accelerator = make_accelerator(cfg.train, cfg.output_dir)
    try:
        # Before any model is built: the batch arithmetic depends on the process count, known only now.
        accumulation_steps(cfg.train.global_batch, cfg.data.batch_size, accelerator.num_processes, where=args.config)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        objective = build_objective(cfg)
        resuming = args.resume is not None and (
            args.resume != "auto" or latest_checkpoint(Path(cfg.output_dir) / "checkpoints") is not None)
        if init_weights is not None and not resuming:
            from ..models.init_from import init_from  # a resumed run has its own weights: nothing to initialise

            accelerator.print(init_from(init_weights, objective.backbone, objective, name=init_name))
        flops = objective.flops_per_image(cfg.data.image_size) if hasattr(objective, "flops_per_image") else None
        make_stream = train_stream_factory(shards, cfg.data, seed=cfg.train.seed, rank=accelerator.process_index,
                                           world_size=accelerator.num_processes,
                                           global_batch=cfg.train.global_batch, pin_memory=accelerator.device.type == "cuda")
        trainer = Trainer(
            objective, DataFeed(make_stream, batch_size=cfg.data.batch_size, samples_per_epoch=shards.num_samples),
            accelerator=accelerator, train=cfg.train, optim=cfg.optim, total_steps=steps,
            run=RunFiles(Path(cfg.output_dir), cfg.to_dict(), cfg.to_yaml()),
            validation=periodic_eval(cfg, objective, accelerator), flops_per_image=flops,
        )
        result = trainer.fit(args.resume, overwrite=args.overwrite)
        if result.status == "finished":
            accelerator.print(f"done: step {result.step}, checkpoint {result.checkpoint}; "
                              f"export the backbone with: ssl-vit export {cfg.output_dir} backbone.safetensors")
    except UserError as err:
        if accelerator.num_processes > 1:  # the first rank to exit gets the others killed: each says why first
            from ..train.supervisor import report_user_error

            report_user_error(one_line(err))  # under `ssl-vit launch`, which then prints the line once
            report_now(err)  # before the clean-up below, which can take seconds while loader workers shut down
        raise  # one process: the caller prints it (the CLI), or words it as its own stage (`ssl-vit demo`)
    finally:
        accelerator.end_training()  # destroys the process group: every rank exits cleanly
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _dry_run(args: argparse.Namespace, cfg: PretrainConfig, shards, steps: int) -> int:
    """The plan, printed once (by the first process under `accelerate launch`); nothing is built or trained."""
    from .dry_run import format_plan, plan, planned_processes

    if args.processes is not None and args.processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {args.processes}")
    rows = plan(cfg, args.config, list(args.overrides), shards, steps, planned_processes(args.processes), args.resume,
                args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"dry run: nothing is trained\n{format_plan(rows)}", end="")
    return 0
