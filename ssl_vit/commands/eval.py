"""`ssl-vit eval {fewshot,linear,knn,finetune,all,compare}`: evaluate checkpoints and write results.

    ssl-vit eval all --checkpoint runs/mpp_b16 --train /data/in1k:train --test /data/in1k:validation \
        --config recipes/eval/default.yaml --out runs/eval/mpp_b16 --baseline random
    accelerate launch --multi_gpu --num_processes 8 -m ssl_vit.cli eval knn --checkpoint ... (same flags)
    ssl-vit eval compare runs/eval/a runs/eval/b

One checkpoint writes OUT/results.json and OUT/results.md. Several (`--checkpoint` repeated,
`--random-init MODEL`, or `--baseline random`, which adds the first checkpoint's architecture at random
initialisation) write one such pair per run under OUT/<run>/ and the side-by-side table to OUT/comparison.md.
Features are cached in OUT/cache/ (shared by the runs; keyed by checkpoint, data and preprocessing).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from ssl_vit.errors import ConfigError
from ssl_vit.files import atomic_write, make_dir



HELP = {
    "fewshot": "closed-form few-shot linear classification on frozen features (1/5/10/25 shots)",
    "linear": "logistic-regression linear probe on frozen features (or MAE's LARS probe)",
    "knn": "weighted k-nearest-neighbour classification on frozen features",
    "finetune": "fine-tune the whole backbone with a zero-initialised head (recipes/finetune/*.yaml)",
    "all": "every evaluator the recipe lists (default: fewshot, knn, linear)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per protocol, so `key=value` overrides can follow the options (as in `pretrain`)."""
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name, help_text in HELP.items():
        description, epilog = protocol_help(name)
        p = sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_eval_options(p)
    p = sub.add_parser("compare", help="put several runs' results side by side (Markdown table)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="--out directories of eval runs (or their parent)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the table to FILE")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for user errors")


def protocol_help(protocol: str) -> tuple[str, str]:
    """(what `protocol` does, the recipe keys it reads with their defaults), from the evaluators' own modules and
    constructors (as `eval_protocols.py` holds them: importing the evaluators would import torch) and the eval
    recipe's defaults, for `ssl-vit eval PROTOCOL --help`."""
    from ..config.eval import CHECKPOINT_DEFAULTS, DEFAULT_EVALUATORS, EvalRecipe
    from .eval_protocols import EVALUATORS

    if protocol == "finetune":
        from ..config import FinetuneConfig
        from .schema_help import keys_help

        title = "keys of the fine-tuning recipe it reads (--config finetune/vit_b16_paper, or key=value after the options):"
        return EVALUATORS["finetune"][0], keys_help(FinetuneConfig, title)
    evaluators = list(DEFAULT_EVALUATORS) if protocol == "all" else [protocol]
    if protocol == "all":
        what = f"{HELP['all']}; registered: {', '.join(sorted(EVALUATORS))}."
    else:
        what = EVALUATORS[protocol][0]
    rows = []
    for name in evaluators:
        rows += [(f"{name}.{key}", value) for key, value in EVALUATORS[name][1].items()]
    common = EvalRecipe().to_dict()
    common.pop("evaluators")
    for section, value in common.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, default in items:
            dotted = f"{section}.{key}" if key else section
            if dotted in ("data.train", "data.test"):
                continue  # --train / --test
            rows.append((dotted, "as the checkpoint was trained" if dotted in CHECKPOINT_DEFAULTS else default))
    width = max(len(key) for key, _ in rows)
    lines = [f"  {key:<{width}}  {_shown(value)}" for key, value in rows]
    where = "in --config's recipe (evaluators.NAME.KEY) or as NAME.KEY=value after the options"
    return what, f"keys it reads, with their defaults ({where}):\n" + "\n".join(lines)


def _shown(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return "null" if value is None else str(value)


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                        help="a run directory, trainer checkpoint, exported .safetensors, timm state dict, Hugging "
                             "Face / timm folder, Hub id hf-hub:ORG/NAME, or random:MODEL[:SEED]; repeat to evaluate "
                             "several side by side")
    parser.add_argument("--random-init", action="append", default=[], metavar="MODEL",
                        help="also evaluate MODEL at random initialisation (same as --checkpoint random:MODEL)")
    parser.add_argument("--baseline", choices=["random"], default=None,
                        help="add the first checkpoint's own initial weights (its recorded train.seed) as a baseline")
    parser.add_argument("--model", default=None, help="the architecture of a bare state dict, e.g. vit_base_patch16")
    parser.add_argument("--train", default=None, help="labelled training data spec (shard directory or URL list)")
    parser.add_argument("--test", default=None, help="labelled test data spec")
    parser.add_argument("--train-split", default=None, help="split name inside --train (default: train)")
    parser.add_argument("--test-split", default=None, help="split name inside --test (default: validation)")
    parser.add_argument("--config", default=None, metavar="RECIPE",
                        help="a file or a shipped recipe's name: eval/default (for `finetune`: finetune/vit_b16_paper)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/eval)")
    parser.add_argument("--seed", type=int, default=None, help="few-shot draws and holdout splits; the random init of random:MODEL and of "
                             "checkpoints that record no train.seed")
    parser.add_argument("--no-cache", action="store_true", help="extract features again even when cached")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="the feature cache (default: OUT/cache); evaluations that share one reuse each other's "
                             "features (keyed by checkpoint, data and preprocessing)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for user errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides after the options, e.g. fewshot.shots=[1,5] batch_size=64")


def run(args: argparse.Namespace) -> int:
    if args.protocol == "compare":
        return _compare(args)
    from ssl_vit.config import TrainConfig, check_output_dir
    from ssl_vit.train.trainer import make_accelerator

    from ..eval.backbones import resolve_backbone
    from ..eval.threads import configure_threads

    recipe, evaluators = _recipe(args)
    configure_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    checkpoints = list(args.checkpoint) + [f"random:{m}" for m in args.random_init]
    init_from = evaluators["finetune"].cfg.init_from if args.protocol == "finetune" else None
    if init_from and checkpoints:
        raise ConfigError(f"the fine-tuning recipe's model.init_from ({init_from}) and --checkpoint both name the "
                          "weights to start from; keep one")
    checkpoints = checkpoints or ([init_from] if init_from else [])
    if not checkpoints:
        raise ConfigError("no backbone given: pass --checkpoint PATH (or random:MODEL, or --random-init MODEL)")
    sources = [resolve_backbone(c, args.model, recipe.seed) for c in checkpoints]
    if args.baseline == "random":
        if sources[0].train_seed is None:
            print(f"--baseline random: {sources[0].spec} records no training seed; the baseline is seed {recipe.seed}'s "
                  "initialisation, not necessarily the checkpoint's own", file=sys.stderr)
        sources.append(sources[0].random_baseline(recipe.seed))
    finetune = evaluators.get("finetune")
    out = Path(args.out or "runs/eval")
    check_output_dir(str(out), "--out", "command line")
    # Fine-tuning alone trains as its recipe says (precision, trackers); otherwise the eval recipe's precision.
    train_cfg = finetune.cfg.train if args.protocol == "finetune" else TrainConfig(precision=recipe.precision)
    accelerator = make_accelerator(train_cfg, out)
    run_dirs = _run_dirs(out, [s.label for s in sources])
    labels = [s.label for s in sources]
    tables = []
    for source, run_dir in zip(sources, run_dirs):
        column = run_dir.name if labels.count(source.label) > 1 else source.label  # two runs, one label: use folders
        tables.append((column, _evaluate(source, run_dir, Path(args.cache_dir) if args.cache_dir else out / "cache", recipe, evaluators,
                                          accelerator)))
    if accelerator.is_main_process:
        from ..eval.results import metrics_table

        table = metrics_table(tables)
        if len(sources) > 1:
            atomic_write(out / "comparison.md", table)
        print(table, end="")
        print(f"results: {out / 'comparison.md' if len(sources) > 1 else out / 'results.json'}", file=sys.stderr)
    # On success only: a rank that failed has already left, and waiting for it would hang the others.
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group so every rank exits cleanly
    return 0


def _recipe(args: argparse.Namespace):
    """The eval recipe with the command-line data flags applied, and the evaluators to build (checked now)."""
    from ..config.eval import load_eval_recipe
    from ..eval.registry import build, get
    from ..recipe_files import resolve_recipe

    overrides = list(args.overrides)
    if args.protocol == "finetune":
        # --config is the fine-tuning recipe (trainer format); the overrides are for it.
        recipe = load_eval_recipe(None)
        options = {"finetune": {"recipe": args.config, "overrides": overrides}}
    else:
        recipe = load_eval_recipe(resolve_recipe(args.config, "eval") if args.config else None, overrides)
        for name in recipe.evaluators:
            get(name)  # every evaluator the recipe lists must exist, even when only one runs now
        options = recipe.evaluators if args.protocol == "all" else {args.protocol: recipe.evaluators.get(args.protocol, {})}
    for flag, key in (("train", "train"), ("test", "test"), ("train_split", "train_split"), ("test_split", "test_split")):
        if getattr(args, flag) is not None:
            setattr(recipe.data, key, getattr(args, flag))
    if args.seed is not None:
        recipe.seed = args.seed
    if args.no_cache:
        recipe.cache = False
    if not options:
        raise ConfigError(f"{args.config or 'the recipe'} lists no evaluators; add some under `evaluators:`")
    return recipe, {name: build(name, **opts) for name, opts in options.items()}


def _run_dirs(out: Path, labels: list[str]) -> list[Path]:
    if len(labels) == 1:
        return [out]
    dirs: list[Path] = []
    for label in labels:
        slug = re.sub(r"[^A-Za-z0-9_.@-]+", "-", label).strip("-") or "run"
        candidate, n = slug, 1
        while out / candidate in dirs:
            n += 1
            candidate = f"{slug}-{n}"
        dirs.append(out / candidate)
    return dirs


def _as_trained(source, recipe, accelerator):
    """(data settings, pool) for `source`: the recipe's where it set them, else as the checkpoint was trained."""
    import dataclasses

    defaults = source.eval_defaults()
    given = {key.split(".")[1] for key in recipe.explicit}
    data = dataclasses.replace(recipe.data, **{k: defaults[k] for k in ("image_size", "crop_pct")
                                                if k not in given and defaults[k] is not None})
    pool = recipe.pool if "pool" in given else defaults["pool"]
    if data.image_size != defaults["image_size"] and accelerator.is_main_process:
        print(f"[{source.label}] evaluating at {data.image_size} px; it was built for {defaults['image_size']} px "
              "(position embeddings resampled)", file=sys.stderr)
    return data, pool


def _evaluate(source, run_dir: Path, cache_dir: Path, recipe, evaluators: dict, accelerator) -> dict[str, float]:
    from ..eval.context import EvalContext
    from ..eval.results import write_results

    data, pool = _as_trained(source, recipe, accelerator)
    image_size = data.image_size

    def factory(**overrides):
        return source.build(**{"img_size": image_size, **overrides})

    ctx = EvalContext(
        backbone_factory=factory, data=data, fingerprint=source.fingerprint, pool=pool,
        layers=recipe.layers, out_dir=run_dir, cache_dir=cache_dir if recipe.cache else None,
        accelerator=accelerator, seed=recipe.seed, backbone_name=f"--checkpoint {source.spec}",
    )
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        if accelerator.is_main_process:
            print(f"[{source.label}] {name} ...", file=sys.stderr)
        start = time.perf_counter()
        metrics.update(evaluator.run(ctx))
        seconds[name] = round(time.perf_counter() - start, 2)
    if accelerator.is_main_process:
        write_results(run_dir, source.label, metrics, {
            "checkpoint": source.spec, "model": source.model_name, "architecture": source.config.to_dict(),
            "train": f"{data.train}:{data.train_split}", "test": f"{data.test}:{data.test_split}",
            "image_size": data.image_size, "crop_pct": data.crop_pct, "pool": pool, "layers": recipe.layers, "recipe": recipe.to_dict(), "protocols": list(evaluators),
            "seconds": seconds, "processes": accelerator.num_processes,
        })
    return metrics


def _compare(args: argparse.Namespace) -> int:
    from ..eval.results import compare_runs

    table = compare_runs(args.runs)
    if args.out:
        make_dir(Path(args.out).parent)
        atomic_write(args.out, table)
    print(table, end="")
    return 0
