"""The evaluation results a model card shows: `ssl-vit eval` runs of exactly the exported checkpoint.

Found in two places: `results.json` files under the run directory and under each `--eval DIR`, kept when their
`checkpoint` is the exported one (a comparison directory's random-init baseline joins as a second column), and
the run's `eval.jsonl` line at the exported step (evaluators that ran during pretraining). A `--eval DIR` with no
result for this checkpoint is an error: the card would silently lack what the user asked for.

Each test accuracy of this checkpoint also becomes an `EvalScore` for the card's `model-index`, its protocol
named in words (`protocol_name`) and its test data cut to a name (`local_names`).
"""
from __future__ import annotations

import json
from pathlib import Path

import re

from ..errors import UserError
from ..eval.results import RESULTS_JSON, fewshot_protocols, metrics_table
from ..models.formats.common import read_json
from ..models.model_card import EvalScore, local_names

# Metrics that are no test accuracy (spreads, chosen hyperparameters); `holdout` ones score training data.
_NOT_TEST_ACCURACY = ("_std", "weight_decay", "log2_l2", "_lr", "selected_step", "train_loss")


def protocol_name(metric: str) -> str:
    """The evaluation protocol a metric name stands for, in words (the `model-index` task name)."""
    family = metric.split("/", 1)[0]
    if (knn := re.fullmatch(r"knn/k(\d+)_top\d+", metric)):
        return f"k-NN classifier (k={knn.group(1)}) on frozen features"
    if family == "linear":
        return "linear probe on frozen features"
    if (shots := re.fullmatch(r"fewshot/(\d+)shot.*", metric)):
        described = "; ".join(fewshot_protocols({metric: 0.0}).values())  # the variant, as results.md says it
        return f"{shots.group(1)}-shot linear regression on frozen features: {described}"
    if family == "finetune":
        return "fine-tuning the whole network"
    return family


def evaluation_scores(checkpoint: Path, eval_dirs: list[Path]) -> list[EvalScore]:
    """This checkpoint's test accuracies in the `results.json` files `evaluation_tables` shows (baselines apart)."""
    scores: list[EvalScore] = []
    for record in _own_records(checkpoint, eval_dirs):
        test = local_names(str(record.get("test") or "test data"))
        parts = test.split(":") if "://" not in test else [test]  # `spec:split` (the split may be repeated)
        dataset, split = parts[0], parts[-1] if len(parts) > 1 else ""
        for metric, value in record.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not metric.endswith(_NOT_TEST_ACCURACY) and "holdout" not in metric:
                scores.append(EvalScore(protocol_name(metric), metric, float(value), dataset, split or None))
    return scores


def _own_records(checkpoint: Path, eval_dirs: list[Path]) -> list[dict]:
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    seen: dict[Path, dict] = {}
    for root in [run_dir, *eval_dirs]:
        for results in sorted(root.rglob(RESULTS_JSON)) if root.is_dir() else []:
            record = read_json(results)
            if _is_checkpoint(record.get("checkpoint"), checkpoint):
                seen.setdefault(results.resolve(), record)
    return list(seen.values())


def evaluation_tables(checkpoint: Path, step: int, eval_dirs: list[Path]) -> list[tuple[str, str]]:
    """[(heading, Markdown table)] for the card, in a stable order (run directory first, then each --eval DIR)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    tables: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for root, required in [(run_dir, False)] + [(d, True) for d in eval_dirs]:
        if required and not root.is_dir():
            raise UserError(f"--eval {root}: no such directory; pass the OUT of an `ssl-vit eval` run")
        found = 0
        for results in sorted(root.rglob(RESULTS_JSON)):
            record = read_json(results)
            if not _is_checkpoint(record.get("checkpoint"), checkpoint):
                continue
            found += 1
            if results.resolve() in seen:  # under the run directory and named by --eval too: one table
                continue
            seen.add(results.resolve())
            columns = [(record.get("label", "this checkpoint"), record.get("metrics", {}))]
            columns += _baselines(results, seen)
            tables.append((_heading(record), metrics_table(columns)))
        if required and not found:
            raise UserError(f"--eval {root}: no {RESULTS_JSON} there evaluated {checkpoint}; check the directory, or "
                            f"run `ssl-vit eval all --checkpoint {checkpoint} … --out {root}`")
    during = _during_pretraining(run_dir / "eval.jsonl", step)
    if during:
        tables.append((f"During pretraining (step {step}, `eval.every`)", metrics_table([(f"step {step}", during)])))
    return tables


def _is_checkpoint(spec: object, checkpoint: Path) -> bool:
    """Whether an evaluation's `checkpoint` names the exported checkpoint directory (or its state.pt)."""
    if not isinstance(spec, str) or spec.startswith("random:"):
        return False
    path = Path(spec)
    path = path.parent if path.name == "state.pt" else path
    return path.exists() and path.resolve() == checkpoint.resolve()


def _baselines(results: Path, seen: set[Path]) -> list[tuple[str, dict]]:
    """Random-init columns evaluated in the same comparison (sibling OUT/<run>/results.json of `random:` specs)."""
    columns = []
    for sibling in sorted(results.parent.parent.glob(f"*/{RESULTS_JSON}")):
        record = read_json(sibling)
        if str(record.get("checkpoint", "")).startswith("random:") and sibling.resolve() not in seen:
            seen.add(sibling.resolve())
            columns.append((record.get("label", "random init"), record.get("metrics", {})))
    return columns


def _heading(record: dict) -> str:
    parts = [f"train `{record['train']}`" if record.get("train") else "",
             f"test `{record['test']}`" if record.get("test") else "",
             f"features: {record['pool']}" if record.get("pool") else ""]
    return "`ssl-vit eval`: " + ", ".join(p for p in parts if p)


def _during_pretraining(path: Path, step: int) -> dict[str, float]:
    """The last `eval.jsonl` line at `step` (the trainer appends one per evaluation), without its step."""
    if not path.is_file():
        return {}
    found: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the others stand
        if isinstance(record, dict) and record.get("step") == step:
            found = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
    return found
