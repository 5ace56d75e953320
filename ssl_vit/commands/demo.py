"""`ssl-vit demo`: the whole pipeline end to end, ending in a report people would rather look at than read.

    make demo                                   # Unicode's emoji in colour, ~9 minutes on 2 shared CPU cores
    ssl-vit demo --data digits --workdir runs/demo_digits                        # the grey control
    ssl-vit demo --train /data/x:train --test /data/x:test --workdir runs/mine   # your own shards

Every stage goes through the same entry points users call (`ssl-vit-shards build/verify`, `ssl-vit pretrain`,
`ssl-vit eval`, `ssl-vit analyze`), so the demo proves those, not a shortcut:

1. images: --data (`ssl_vit/demo/datasets.py`: the emoji from two Debian packages, or scikit-learn's digits)
   written as a real `<class>/` image folder (skipped when --train/--test are given);
2. shards: `ssl-vit-shards build` + `verify` for both splits;
3. pretraining: masked patch prediction on the train split, labels unused (`recipes/demo/emoji.yaml`, or
   `digits.yaml`);
4. evaluation: few-shot, linear probe and kNN of the pretrained backbone and of the same architecture at its
   own random initialisation (same seed), on the test split (`recipes/demo/eval.yaml`); and the same few-shot
   protocol on the raw pixels, the reference a backbone has to beat;
5. analysis: Figure 7 and the masked-prediction picture; then `report.md` and `summary.json`.

Each stage is resumable: running the command again reuses finished shards, continues pretraining from its
latest checkpoint and reuses cached features — only with the same settings (`ssl_vit/demo/workdir.py`): a
rerun with another length, target, recipe, data or code is refused in one line naming --workdir and what
changed, or replaces the work with --overwrite. A stage that fails says so in one line (a full disk: the file,
the disk, and that finished stages are kept for the same command to reuse).
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from data_tools.errors import DataToolsError

from ..errors import ConfigError, StorageError, Stopped, UserError
from ..files import atomic_write, make_dir

SHOTS = ("1", "5", "10", "25")
# --quick: seconds, for the test suite; checks every artefact, proves nothing about learning.
QUICK_PRETRAIN = ["train.total_steps=4", "train.global_batch=32", "data.batch_size=32", "data.num_workers=0",
                  "train.log_every=1", "train.checkpoint_every=4", "optim.warmup_steps=1"]
QUICK_EVAL = ["fewshot.seeds=1", "linear.weight_decays=[1.0e-3]", "linear.max_iter=20", "batch_size=128"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="where images, shards, runs and the report go")
    parser.add_argument("--data", default=None, choices=("emoji", "digits"),
                        help="the images the demo builds itself: emoji (colour, the default; from the Debian packages "
                             "fonts-noto-color-emoji and unicode-data) or digits (grey, the control)")
    parser.add_argument("--source-root", default=None, metavar="DIR",
                        help="where the emoji's packages are installed (default /: DIR/usr/share/fonts/truetype/noto/"
                             "NotoColorEmoji.ttf and DIR/usr/share/unicode/emoji/emoji-test.txt)")
    parser.add_argument("--train", default=None, metavar="SPEC",
                        help="your own labelled training shards (e.g. /data/x:train); default: the --data images")
    parser.add_argument("--test", default=None, metavar="SPEC", help="your own labelled test shards")
    parser.add_argument("--recipe", default=None,
                        help="the pretraining recipe (a file or a shipped name); default: the data's, demo/emoji or "
                             "demo/digits")
    parser.add_argument("--eval-recipe", default="demo/eval", help="the evaluation recipe (a file or a shipped name)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (for tests): artefacts, not results")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the work of other settings in --workdir (its pretraining starts afresh) "
                             "instead of refusing")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="pretraining recipe overrides, e.g. train.total_steps=600 objective.kwargs.target=mean_color")


def run(args: argparse.Namespace) -> int:
    from ..analysis.settings import arm_settings, check_overrides
    from ..analysis.study import pixel_reference
    from ..demo.datasets import DATASETS, DEFAULT
    from ..demo.report import write_demo_report
    from ..demo.workdir import claim, started_afresh
    from ..eval.results import read_pair
    from ..recipe_files import resolve_recipe

    data = _data(args)
    recipe = args.recipe or (data or DATASETS[DEFAULT]).recipe
    check_overrides(args.overrides, "demo")
    work = Path(args.workdir)
    with in_workdir(work, "the demo"):
        make_dir(work, "--workdir")
    if data is not None:
        train, test = demo_shards(work, data, Path(args.source_root or "/"))
    else:
        train, test = args.train, args.test
    pretrain_overrides = [*(QUICK_PRETRAIN if args.quick else []), *args.overrides]
    eval_overrides = QUICK_EVAL if args.quick else []
    pretrain_dir = work / "pretrain"
    settings = arm_settings(recipe=recipe, overrides=pretrain_overrides, eval_recipe=args.eval_recipe,
                            eval_overrides=eval_overrides, train=train, test=test, output_dir=str(pretrain_dir))
    with in_workdir(work, "the demo"):
        afresh = claim(work, settings, overwrite=args.overwrite)

    _stage("pretraining (masked patch prediction, labels unused)")
    try:
        call_command(["pretrain", "--config", recipe, *(["--overwrite"] if afresh else ["--resume", "auto"]),
                      f"data.train={train}", *pretrain_overrides, f"output_dir={pretrain_dir}"], workdir=work)
    except Stopped:
        started_afresh(work)  # it stopped after a checkpoint of the new settings: the next run resumes that
        raise
    started_afresh(work)

    eval_dir = work / "eval"
    _stage("evaluation: pretrained vs the same architecture at random initialisation")
    call_command(["eval", "all", "--checkpoint", str(pretrain_dir), "--baseline", "random", "--train", train,
                  "--test", test, "--config", args.eval_recipe, "--out", str(eval_dir), *eval_overrides], workdir=work)
    pretrained, random_init = read_pair(eval_dir)
    _stage("reference: the same few-shot protocol on the raw pixels")
    with in_workdir(work, "the raw-pixel reference"):
        pixels = pixel_reference(train, test, str(resolve_recipe(args.eval_recipe, "eval")), eval_overrides)

    analysis_dir = work / "analysis"
    _stage("analysis: Figure 7 and the masked-prediction picture")
    call_command(["analyze", str(pretrain_dir), "--images", test, "--out", str(analysis_dir), "--num-images", "32"],
                 workdir=work)

    summary = {"pretrained": _summary(pretrained), "random_init": _summary(random_init),
               "raw_pixels": {"fewshot": _summary(pixels)["fewshot"]},
               "data": {"name": data.name, "licence": data.licence} if data is not None else {"name": train}}
    with in_workdir(work, "the demo's report"):
        atomic_write(work / "summary.json", json.dumps(summary, indent=2) + "\n")
        report = write_demo_report(work, pretrained=pretrained, random_init=random_init, pixels=pixels,
                                   data=data, pretrain_dir=pretrain_dir, analysis_dir=analysis_dir, quick=args.quick)
    print(f"\nreport: {report}\nsummary: {work / 'summary.json'}")
    return 0


def _data(args: argparse.Namespace):
    """The image set the demo builds itself (a `DemoData`), or None when the user brings --train and --test."""
    from ..demo.datasets import DATASETS, DEFAULT

    if (args.train is None) != (args.test is None):
        raise ConfigError("give both --train and --test (your own shards), or neither (the demo builds its own "
                          "images: --data emoji or digits)")
    if args.train is not None:
        if args.data is not None or args.source_root is not None:
            raise ConfigError("--data and --source-root choose the images the demo builds itself; with --train and "
                              "--test it uses your shards: give one or the other")
        return None
    data = DATASETS[args.data or DEFAULT]
    if args.source_root is not None and data.name != "emoji":
        raise ConfigError(f"--source-root is where the emoji's Debian packages are; --data {data.name} does not read "
                          "it (scikit-learn ships the digits)")
    return data


def _stage(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr, flush=True)


def call_command(argv: list[str], workdir: Path | None = None) -> None:
    """Run one `ssl-vit` subcommand in this process, as one stage of a composed command (the demo, the study).

    The stage's error is the command's one line: the subcommand does not print it (it is raised here, not through
    `cli.main`), and a full disk is worded for the composed command (`in_workdir`). A pretraining stopped by a
    signal also exits 0, after its checkpoint: then this stops too (`Stopped`, exit 0), instead of going on to
    evaluate a run that did not finish."""
    from ..cli import COMMANDS, build_parser
    from ..train.signals import stops_received

    command = argv[0]
    before = len(stops_received())
    with in_workdir(workdir, f"`ssl-vit {command}`"):
        code = importlib.import_module(COMMANDS[command][0]).run(build_parser(command).parse_args(argv))
    if code:
        raise UserError(f"stopped: `ssl-vit {' '.join(argv[:2])} …` exited with {code} (see above)")
    stops = stops_received()[before:]
    if stops:
        raise Stopped(f"{stops[-1]} during `ssl-vit {command}`, which saved a checkpoint; run the same command again "
                      "to continue (finished stages are reused, the interrupted one resumes)")


# "no space left on /mnt while writing F", "… No space left on device", "disk quota exceeded on …"
_FULL = re.compile(r"no space left|disk quota exceeded", re.IGNORECASE)


@contextmanager
def in_workdir(workdir: Path | None, stage: str):
    """A stage's failure as the composed command's one line: a full disk (or quota) names the file, the disk and
    `--workdir`, and says that the same command continues (finished stages are kept and reused); the stage's
    own remedy ("another output directory", "resume") is the subcommand's, not the user's, and is left out.
    Other errors pass unchanged (a shard build's as a `UserError`)."""
    try:
        yield
    except (UserError, DataToolsError) as err:
        if isinstance(err, Stopped):
            raise
        text = " ".join(str(err).split())
        if workdir is not None and _FULL.search(text):
            what = re.split(r"; | — |\. ", text, maxsplit=1)[0]
            raise StorageError(f"{what} (during {stage}); free space there, or choose another --workdir, and run the "
                               f"same command again: the finished stages in --workdir {workdir} are kept and "
                               "reused") from err
        if isinstance(err, DataToolsError):
            raise UserError(text) from err
        raise


def digit_shards(work: Path) -> tuple[str, str]:
    """The digits as verified shards under `work` (the study's default data)."""
    from ..demo.datasets import DATASETS

    return demo_shards(work, DATASETS["digits"], Path("/"))


def demo_shards(work: Path, data, source_root: Path) -> tuple[str, str]:
    """A demo data set (`ssl_vit/demo/datasets.py`) as an image folder, then as verified shards
    (`ssl-vit-shards build` + `verify`)."""
    from data_tools.cli import run as shards_run

    images, shards = data.folders(work)
    _stage(f"images: {data.title}, as a <class>/ folder of 32×32 PNGs")
    with in_workdir(work, f"the {data.name} images"):
        counts = data.write(images, source_root)
    skipped = f" ({counts['skipped']} not drawn as one picture, skipped)" if counts["skipped"] else ""
    print(f"train {counts['train']} images, test {counts['test']} images of {counts['classes']} classes under "
          f"{images}{skipped}\nlicence: {data.licence}", file=sys.stderr)
    _stage("shards: ssl-vit-shards build + verify")
    for split in ("train", "test"):
        argv = ["build", str(images / split), str(shards), "--split", split, "--max-count", "500"]
        with in_workdir(work, "`ssl-vit-shards build`"):
            shards_run(argv)
    with in_workdir(work, "`ssl-vit-shards verify`"):
        if shards_run(["verify", str(shards)]) != 0:
            raise UserError(f"{shards}: the demo's shards failed verification (see above)")
    return f"{shards}:train", f"{shards}:test"


def _summary(metrics: dict) -> dict:
    """The headline figures in percent: few-shot per shot count, linear top-1, kNN (k=20) top-1."""
    return {
        "fewshot": {s: metrics.get(f"fewshot/{s}shot") for s in SHOTS},
        "linear": metrics.get("linear/top1"),
        "knn": metrics.get("knn/k20_top1"),
    }
