"""The settings of one pretrain → evaluate computation, as a record whose key says when its result may be reused.

`ssl-vit study` reuses a finished arm and `ssl-vit demo` a finished (or interrupted) pipeline only when the
arm's settings are the same as the command's: the resolved pretraining recipe (every key that changes a number:
length, target, rate, seed, batch, schedule…), the resolved evaluation recipe (shots, draws, holdout…), the
data by content (`ssl_vit.data.identity`: rebuilt shards under the same names differ, one folder spelled two
ways does not) and the code's version. Resolved, not spelled: `train.total_steps=4` on the command line and
`total_steps: 4` in the recipe are one setting, and a recipe file edited since is another.

Keys that change no number are left out, so changing them reuses: where files go (`output_dir`), logging and
trackers, how many checkpoints are kept, timeouts, whether features are cached, how many loader processes
evaluation uses (it reads every sample once, in key order, whatever the count).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..config import load_config, load_eval_recipe
from ..data import resolve_spec
from ..data.identity import canonical, code_version, data_identity, differences
from ..errors import ConfigError
from ..recipe_files import resolve_recipe

NO_NUMBER_PRETRAIN = ("output_dir", "train.log_every", "train.log_with", "train.project", "train.run_name",
                      "train.keep_last", "train.collective_timeout_s")
NO_NUMBER_EVAL = ("cache", "data.num_workers")
OWNED = {"data.train": "--train (with --test)", "output_dir": "--workdir"}


def arm_settings(*, recipe: str, overrides: Sequence[str], eval_recipe: str, eval_overrides: Sequence[str],
                 train: str, test: str, output_dir: str) -> dict[str, Any]:
    """The record of one arm: `ssl-vit pretrain --config recipe data.train=train *overrides output_dir=…`, then
    `ssl-vit eval --train train --test test --config eval_recipe *eval_overrides` on its checkpoint (see the module
    doc). Loading the recipes here also fails a bad override in one line before anything runs; `output_dir` (a
    folder the command owns) only stands in for the place the arm's run will have."""
    cfg = load_config(resolve_recipe(recipe, "pretrain"), [f"data.train={train}", *overrides, f"output_dir={output_dir}"])
    pretrain = cfg.to_dict()
    pretrain["data"]["train"] = data_identity(resolve_spec(cfg.data.train, cfg.data.split,
                                                           num_samples=cfg.data.num_samples,
                                                           follow_symlinks=cfg.data.follow_symlinks))
    del pretrain["data"]["split"], pretrain["data"]["num_samples"]  # both are in the data's identity now
    evaluation = load_eval_recipe(resolve_recipe(eval_recipe, "eval"), list(eval_overrides))
    evaluation.data.train, evaluation.data.test = train, test
    data = {split: data_identity(resolve_spec(*evaluation.data.spec(split),
                                              follow_symlinks=evaluation.data.follow_symlinks))
            for split in ("train", "test")}
    eval_record = evaluation.to_dict()
    for key in ("train", "test", "train_split", "test_split"):
        del eval_record["data"][key]
    eval_record["data"].update(data)
    return canonical({"pretrain": _without(pretrain, NO_NUMBER_PRETRAIN), "eval": _without(eval_record, NO_NUMBER_EVAL),
                      "code": code_version()})


def changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two records, in the words a user types: `train.total_steps: 4 → 8`, `evaluation
    fewshot.seeds: 5 → 1`, `data.train.shards[0]: train-000000.tar sha256:… → …`, `code.ssl_vit: 0.1.0 → 0.2.0`."""
    words = [d.removeprefix("pretrain.").replace("eval.evaluators.", "evaluation ", 1).replace("eval.", "evaluation ", 1)
             for d in differences(old, new)]
    return "; ".join(words) or "none"


def check_overrides(overrides: Sequence[str], command: str) -> None:
    """The keys a study or the demo sets itself are not overrides: data.train would pretrain on other data than
    the command evaluates on, output_dir would move every arm's run into one folder."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in OWNED:
            raise ConfigError(f"{command}: {key} is set by the command; use {OWNED[key]} instead of {item}")


def _without(record: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = record
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return record
