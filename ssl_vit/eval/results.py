"""results.json and results.md: what an evaluation run leaves behind, and side-by-side comparison of runs.

results.json holds the flat metrics (accuracies in percent) with what produced them (checkpoint, model,
data, recipe), so `ssl-vit eval compare RUN...` can put any runs next to each other later. results.md is
the same as a Markdown table; a metric `X` with a companion `X_std` shows as "X ± std". Test classes that no
training sample carries (`test_only_class/NAME`, `unseen_classes.py`) are named at the top of both.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable, Sequence

from ssl_vit.errors import UserError
from ssl_vit.files import atomic_write, make_dir

from .unseen_classes import PREFIX as TEST_ONLY

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def format_value(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name.startswith(TEST_ONLY):  # a count of test images
        return f"{value:.0f}"
    if name.endswith(("weight_decay", "log2_l2", "_lr", "selected_step", "train_loss")):  # not percentages
        return f"{value:.3g}"
    return f"{value:.2f}"


def metrics_table(columns: Sequence[tuple[str, dict[str, float]]]) -> str:
    """A Markdown table: one row per metric (union, in first-seen order), one column per run."""
    names: list[str] = []
    for _, metrics in columns:
        names.extend(n for n in metrics if n not in names)
    shown = [n for n in names if not (n.endswith("_std") and n[: -len("_std")] in names)]
    lines = ["| metric | " + " | ".join(label for label, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in shown:
        cells = []
        for _, metrics in columns:
            cell = format_value(name, metrics.get(name))
            std = metrics.get(f"{name}_std")
            cells.append(f"{cell} ± {format_value(name, std)}" if std is not None and name in metrics else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, label: str, metrics: dict[str, float], meta: dict) -> Path:
    """Write results.json and results.md into `out_dir`; returns the JSON path."""
    make_dir(out_dir, "output directory")
    protocols = fewshot_protocols(metrics)
    record = {"label": label, "metrics": metrics, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
    unseen = {name[len(TEST_ONLY):]: int(value) for name, value in metrics.items() if name.startswith(TEST_ONLY)}
    if unseen:
        record["test_classes_without_training_samples"] = unseen
    if protocols:
        record["fewshot_protocols"] = protocols
    path = out_dir / RESULTS_JSON
    atomic_write(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    header = [f"# Evaluation: {label}", ""]
    for key in ("checkpoint", "model", "train", "test", "pool"):
        if meta.get(key) is not None:
            header.append(f"- {key}: `{meta[key]}`")
    if unseen:
        listed = ", ".join(f"`{name}` ({count} images)" for name, count in unseen.items())
        header.append(f"- test classes that no training sample carries: {listed}; no classifier can predict them, "
                      "so every accuracy below counts those images as wrong")
    header += ["", "Accuracies in percent; few-shot figures are mean ± std over draws (see ssl_vit/eval/*.py)."]
    header += [f"- `{pattern}`: {text}" for pattern, text in protocols.items()]
    atomic_write(out_dir / RESULTS_MD, "\n".join(header) + "\n\n" + metrics_table([(label, metrics)]))
    return path


def fewshot_protocols(metrics: dict[str, float]) -> dict[str, str]:
    """The few-shot protocols (pattern → description) whose metrics appear in `metrics`."""
    from .fewshot import PROTOCOLS

    shown = {}
    for name in metrics:
        if not name.startswith("fewshot/") or name.endswith(("_std", "_log2_l2")):
            continue
        if name.endswith("_train_holdout"):
            shown["fewshot/{k}shot_train_holdout"] = PROTOCOLS["fewshot/{k}shot_train_holdout"]
        elif "_plus" in name:
            shown["fewshot/{k}shot_plus{v}_labels"] = PROTOCOLS["fewshot/{k}shot_plus{v}_labels"]
        elif name.endswith("_fixed_l2"):
            shown["fewshot/{k}shot_fixed_l2"] = PROTOCOLS["fewshot/{k}shot_fixed_l2"]
        else:
            shown["fewshot/{k}shot"] = PROTOCOLS["fewshot/{k}shot"]
    return {k: shown[k] for k in PROTOCOLS if k in shown}


def read_pair(eval_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The (pretrained, random-init) metrics of an `ssl-vit eval … --baseline random` run in `eval_dir`."""
    found = {}
    for path in sorted(Path(eval_dir).glob(f"*/{RESULTS_JSON}")):
        record = json.loads(path.read_text())
        found["random" if str(record.get("checkpoint", "")).startswith("random:") else "pretrained"] = record["metrics"]
    if set(found) != {"pretrained", "random"}:
        raise UserError(f"{eval_dir}: expected results of the pretrained and random-init runs, found {sorted(found)}")
    return found["pretrained"], found["random"]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """results.json files named directly, in the given directories, or one level below them (multi-run outputs)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS_JSON).is_file():
            found.append(p / RESULTS_JSON)
        elif p.is_dir() and sorted(p.glob(f"*/{RESULTS_JSON}")):
            found.extend(sorted(p.glob(f"*/{RESULTS_JSON}")))
        else:
            raise UserError(f"{p}: no {RESULTS_JSON} there; pass the --out directory of an `ssl-vit eval` run")
    return found


def load_run(path: Path) -> tuple[str, dict[str, float]]:
    try:
        record = json.loads(Path(path).read_text())
        return str(record.get("label") or Path(path).parent.name), dict(record["metrics"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not an ssl-vit results.json ({exc}); re-run the evaluation to write it") from exc


def compare_runs(paths: Iterable[str | Path]) -> str:
    """The Markdown table of several runs' results side by side; duplicate labels get their folder name."""
    files = find_runs(paths)
    runs = [load_run(f) for f in files]
    labels = [label for label, _ in runs]
    return metrics_table(
        [(f"{label} ({f.parent.name})" if labels.count(label) > 1 else label, metrics) for (label, metrics), f in zip(runs, files)]
    )
