"""`ssl-vit export RUN_OR_CHECKPOINT OUT [--format safetensors|hf|timm] [--push-to-hub REPO_ID]`.

The checkpoint holds the whole objective ([MASK] embedding and prediction head included) and the recipe that
built it; export rebuilds the objective from that recipe, loads the weights strictly, and writes only the
backbone:
  - `safetensors` (default): OUT.safetensors in timm's keys + OUT.json (our config), `models.weights.save_backbone`;
  - `hf`: the folder `transformers.ViTModel.from_pretrained(OUT)` loads (config.json, model.safetensors,
    preprocessor_config.json);
  - `timm`: the folder `timm.create_model("local-dir:OUT", pretrained=True)` loads (config.json, model.safetensors).
Every export writes a model card (OUT/README.md; OUT.md beside a single file) with the recipe, the data, the
training length and the `ssl-vit eval` results found for this checkpoint (under the run directory, or `--eval
DIR`). `--push-to-hub REPO_ID` then uploads the folder with huggingface_hub. Neither the card nor config.json
names a local folder: the checkpoint is `RUN/checkpoints/step_…` by its run's name, other paths their last
component (`model_card.local_names`), so an export can be published as it is.

An export never replaces what it did not write (`models/formats/ownership.py`): a destination that holds files
is refused, naming them, unless `--overwrite`, which replaces only a previous export's files (each export
records what it wrote, with sizes and sha256) and keeps, and names, anything else. A folder holding files that are
not the export's is not pushed: they would be uploaded with it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, UserError
from ..files import atomic_write

FORMATS = ("safetensors", "hf", "timm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                        help="a run directory (its latest checkpoint) or one checkpoint directory (…/checkpoints/step_0001000)")
    parser.add_argument("output", metavar="OUT",
                        help="OUT.safetensors for --format safetensors (a .json and a .md card go beside it); a folder for hf and timm")
    parser.add_argument("--format", choices=FORMATS, default="safetensors",
                        help="safetensors: one timm-layout file + our JSON; hf: transformers' save_pretrained folder; "
                             "timm: timm's Hub folder (default: safetensors)")
    parser.add_argument("--eval", action="append", default=[], metavar="DIR",
                        help="`ssl-vit eval` output for this checkpoint to put in the model card (repeatable; results "
                             "under the run directory are found without it)")
    parser.add_argument("--license", default="apache-2.0", help="the license named in the model card (default: apache-2.0)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="upload the exported folder to this Hugging Face Hub model repo (needs ssl_vit[hub] and a token)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous export at OUT (only the files an export wrote; anything else is kept)")


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import resolve_checkpoint
    from ..train.restore import locate_checkpoint, restore_objective

    if not Path(args.source).exists():
        raise CheckpointError(f"{args.source}: no such run or checkpoint directory")
    output = Path(args.output)
    if args.format == "safetensors" and output.suffix != ".safetensors":
        raise CheckpointError(f"{output}: the export is a .safetensors file; use {output.with_suffix('.safetensors')} "
                              "(or --format hf / timm for a folder)")
    if args.format != "safetensors" and output.suffix == ".safetensors":
        raise CheckpointError(f"{output}: --format {args.format} writes a folder; pass a directory path")
    if args.push_to_hub and args.format == "safetensors":
        raise UserError("--push-to-hub uploads a folder: add --format hf or --format timm")
    from ..models.formats.ownership import plan_export

    plan = plan_export(output, args.format, args.overwrite)  # reads only: a refusal leaves OUT as it was
    if args.push_to_hub and plan.removal is not None and plan.removal.kept:
        raise UserError(f"--push-to-hub would upload {output} with files that are not this export's "
                        f"({', '.join(p.name for p in plan.removal.kept)}): move them away, or export into an empty folder")
    path = locate_checkpoint(args.source, "export") or resolve_checkpoint(args.source, "export")  # the latter: why none
    objective, cfg, state = restore_objective(path)  # the recipe and weights as `eval` and `analyze` read them
    step = int(state["step"])
    backbone = objective.backbone
    facts = _card_facts(args, cfg, path, step, backbone)
    metadata = {
        "source_checkpoint": shown_checkpoint(path), "step": step, "objective": cfg.objective.name,
        "objective_kwargs": cfg.objective.kwargs, "registered_name": cfg.model.name,
        "train_seed": cfg.train.seed,  # rebuilds the initial weights: `ssl-vit eval --baseline random`
        "crop_pct": facts.preprocessing.crop_pct,  # the crop `ssl-vit eval` uses for it by default
    }
    from ..models.model_card import render_model_card

    card = render_model_card(facts)
    if plan.note():
        print(plan.note())
    if plan.removal is not None:
        plan.removal.run()
    written = _write(backbone, output, args.format, facts.preprocessing, metadata, card)
    params = sum(p.numel() for p in backbone.parameters())
    print(f"wrote {', '.join(str(p) for p in written)}: {cfg.model.name} ({params / 1e6:.2f}M parameters) "
          f"from {path} (step {step}); evaluation tables in the card: {len(facts.eval_tables)}")
    if args.push_to_hub:
        from ..models.hub import push_folder

        url = push_folder(output, args.push_to_hub, private=args.private,
                          commit_message=f"{cfg.model.name} at step {step}, exported by ssl_vit")
        print(f"pushed {output} to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0


def _write(backbone, output: Path, fmt: str, preprocessing, metadata: dict, card: str) -> list[Path]:
    """The export and its card; the files it wrote are recorded in its own config (`formats/ownership.py`)."""
    if fmt == "safetensors":
        from ..models.weights import save_backbone
        from ..ownership import text_record

        card_path = output.with_suffix(".md")
        metadata = {**metadata, "files": {card_path.name: text_record(card)}}  # the card, written after the JSON
        return [save_backbone(backbone, output, metadata=metadata), output.with_suffix(".json"),
                atomic_write(card_path, card)]
    from ..models.formats import write_folder
    from ..models.formats.ownership import CARD_FILE

    return write_folder(backbone, output, fmt, preprocessing, metadata, extra={CARD_FILE: card})


def shown_checkpoint(checkpoint: Path) -> str:
    """The checkpoint as the export names it: `RUN/checkpoints/step_…` (its run's name, not the folder it is in)."""
    if checkpoint.parent.name == "checkpoints":
        return f"{checkpoint.parent.parent.name}/checkpoints/{checkpoint.name}"
    return checkpoint.name


def _card_facts(args: argparse.Namespace, cfg, checkpoint: Path, step: int, backbone):
    """Everything the model card states, gathered from the checkpoint's recipe, its data and its evaluations."""
    from ..data.normalize import DEFAULT_MEAN, DEFAULT_STD
    from ..config import EvalData
    from ..models.formats import Preprocessing
    from ..models.model_card import CardFacts
    from ..models.weights import suggest_model_name
    from ..models.model_card import local_names
    from .export_evals import evaluation_scores, evaluation_tables

    samples, classes = _data_facts(cfg)
    output = Path(args.output)
    return CardFacts(
        title=f"{cfg.model.name} pretrained by masked patch prediction ({cfg.objective.kwargs.get('target', cfg.objective.name)})",
        fmt=args.format, config=backbone.config, model_name=suggest_model_name(backbone.config),
        preprocessing=Preprocessing(crop_pct=cfg.eval.crop_pct or EvalData().crop_pct, mean=DEFAULT_MEAN, std=DEFAULT_STD),
        objective=cfg.objective.name, objective_kwargs=dict(cfg.objective.kwargs), recipe_yaml=cfg.to_yaml(),
        step=step, global_batch=cfg.train.global_batch, checkpoint=shown_checkpoint(checkpoint),
        data_spec=cfg.data.train, data_split=cfg.data.split, data_samples=samples, class_names=classes,
        eval_tables=evaluation_tables(checkpoint, step, [Path(d) for d in args.eval]),
        eval_scores=evaluation_scores(checkpoint, [Path(d) for d in args.eval]),
        init_from=local_names(cfg.model.init_from) if cfg.model.init_from else None,
        license=args.license, weights_path=local_names(str(output)), repo_id=args.push_to_hub,
    )


def _data_facts(cfg) -> tuple[int | None, list[str] | None]:
    """(sample count, class names) of the pretraining split, or Nones when the data is not readable here."""
    from ..data import resolve_spec

    try:
        shards = resolve_spec(cfg.data.train, cfg.data.split, num_samples=cfg.data.num_samples,
                              follow_symlinks=cfg.data.follow_symlinks)
    except (UserError, OSError):
        return None, None
    return shards.num_samples, list(shards.class_names) if shards.class_names else None
