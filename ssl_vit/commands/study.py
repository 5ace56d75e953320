"""`ssl-vit study`: a grid of pretraining runs (targets × corruption rates × seeds), each against its own random init.

    ssl-vit study --workdir runs/study                         # the digits, the full grid (~2 hours on 2 cores)
    ssl-vit study --workdir runs/s train.total_steps=150 --targets pixels mean_color --rates 0.5 --seeds 0 1 2
    ssl-vit study --train /data/x:train --test /data/x:test --workdir runs/mine      # your own shards

Writes WORKDIR/study.md (tables, few-shot curves, the selected configuration), WORKDIR/study.json (every figure,
per seed) and one folder per arm under WORKDIR/arms/, named by the arm and the key of its settings (resolved
recipes, the data by content, the code's version: `ssl_vit/analysis/settings.py`). The logic is in
`ssl_vit/analysis/study.py`. Rerunning the command resumes: arms finished with the same settings are read back
(and said so), an interrupted one continues from its last checkpoint; a rerun with another length, target, rate,
seed, data or code computes its arms afresh in their own folders, and the report holds this command's arms only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..files import make_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..analysis.study import RATES, SELECT_ON, SHOTS, TARGETS

    parser.add_argument("--workdir", default="runs/study", help="where shards, arms and the report go")
    parser.add_argument("--train", default=None, metavar="SPEC", help="your own labelled training shards; default: the digits")
    parser.add_argument("--test", default=None, metavar="SPEC", help="your own labelled test shards")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS), help="MPP targets")
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES), help="corruption rates")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="pretraining seeds (train.seed)")
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS), help="few-shot shot counts")
    parser.add_argument("--draws", type=int, default=5, help="few-shot draws per shot count")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="fraction of the training split held out to select on (few-shot, never test)")
    parser.add_argument("--select-on", default=SELECT_ON, help="the selection metric (a *_train_holdout few-shot key)")
    # shipped names, not checkout paths: an installed wheel has no recipes/ beside the package
    parser.add_argument("--recipe", default="demo/digits",
                        help="the pretraining recipe of every arm (a file or a shipped name)")
    parser.add_argument("--eval-recipe", default="demo/eval",
                        help="the evaluation recipe, its fewshot options (a file or a shipped name)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="pretraining overrides for every arm, e.g. train.total_steps=150 (put them before "
                             "--targets, --rates and --seeds, which take every value after them)")


def run(args: argparse.Namespace) -> int:
    from ..analysis import study
    from ..analysis.settings import check_overrides
    from ..recipe_files import resolve_recipe
    from .demo import call_command, digit_shards

    if (args.train is None) != (args.test is None):
        raise ConfigError("give both --train and --test (your own shards), or neither (the digits)")
    if args.draws < 1 or not 0 < args.holdout < 1:
        raise ConfigError(f"--draws must be ≥ 1 and --holdout in (0, 1), got {args.draws} and {args.holdout}")
    if not args.select_on.endswith("_train_holdout"):
        raise ConfigError(f"--select-on {args.select_on}: select on a *_train_holdout metric, never on test")
    check_overrides(args.overrides, "study")
    args.recipe = str(resolve_recipe(args.recipe, "demo"))  # a shipped name or a file: the file from here on
    args.eval_recipe = str(resolve_recipe(args.eval_recipe, "eval"))
    arms = study.grid(args.targets, args.rates, args.seeds)
    work = Path(args.workdir)
    make_dir(work, "--workdir")
    train, test = (args.train, args.test) if args.train is not None else digit_shards(work)
    eval_overrides = [f"fewshot.shots=[{','.join(map(str, args.shots))}]", f"fewshot.seeds={args.draws}",
                      f"fewshot.train_holdout={args.holdout}"]
    where = dict(train=train, test=test, recipe=args.recipe, eval_recipe=args.eval_recipe, overrides=args.overrides,
                 eval_overrides=eval_overrides)
    plans = [study.plan_arm(arm, work, **where) for arm in arms]  # a bad override fails before anything runs
    unused = study.other_arms(work, plans)
    if unused:
        print(f"{len(unused)} arm folder(s) in {work / 'arms'} hold other settings (length, target, rate, seed, data "
              "or code) and are not used", file=sys.stderr)

    study.progress("reference: the same few-shot protocol on raw pixels")
    reference = study.pixel_reference(train, test, args.eval_recipe, eval_overrides)
    report = _report(work, {}, reference, args, f"**Partial.** 0 of {len(arms)} arms finished.", {})
    results, folders, reused = {}, {}, 0
    for i, plan in enumerate(plans, 1):
        arm, folders[plan.arm] = plan.arm, plan.dir(work)
        what = f"arm {i}/{len(arms)}: {arm.name} (target {arm.target}, {arm.rate:.0%} corrupted, seed {arm.seed})"
        done = study.finished(plan, work)
        if done is not None:
            study.progress(f"{what}: reused, finished earlier with the same settings ({folders[arm]})")
            results[arm], reused = done, reused + 1
        else:
            study.progress(what)
            results[arm] = study.run_arm(plan, work, call=lambda argv: call_command(argv, workdir=work), **where)
        # after every arm: a study stopped early still leaves a report of what it finished
        report = _report(work, results, reference, args,
                         "" if i == len(arms) else f"**Partial.** {i} of {len(arms)} arms finished.", folders, reused)
    if reused:
        print(f"\nreused {reused} of {len(arms)} arms finished earlier with the same settings", file=sys.stderr)
    print(f"\nreport: {report}\nfigures: {work / 'study.json'}")
    return 0


def _report(work: Path, results: dict, reference: dict, args: argparse.Namespace, note: str, folders: dict,
            reused: int = 0) -> Path:
    from ..analysis import study

    notes = [note] if note else []
    if reused:
        notes.append(f"**Reused.** {reused} arm(s) finished by an earlier command with the same settings (recipes, "
                     "data by content, code); every figure here comes from arms of this command's settings.")
    return study.write_study_report(work, results, reference, shots=args.shots, select_on=args.select_on,
                                    note=" ".join(notes), folders=folders)
