"""A study, not a single run: which MPP target and corruption rate beat their own random init, and by how much.

One arm is one (target, corruption rate, seed): `ssl-vit pretrain` with the study's recipe and those three
overrides, then `ssl-vit eval fewshot --baseline random`, which evaluates the pretrained backbone and the very
weights it started from (its `train.seed`) with the same protocol and the same few-shot draws. The seed pairs
them: the paired difference (pretrained − its random init) removes the init's share of the spread, which on
small data is as large as the differences between targets. Over seeds the report gives, per configuration
(target × rate) and shot count:

- mean ± std (sample std over seeds) of the pretrained and of the random-init accuracy;
- the paired difference, mean and its 95% confidence interval (Student t over seeds);
- the few-shot curve of every configuration next to the random init (one figure);
- a reference row: the same few-shot protocol on the raw pixels (least squares on the images themselves),
  so "beats random init" is not mistaken for "learned something a linear model on pixels cannot";
- comparisons between configurations, paired by seed (same init, same draws): the paper's questions.

The configuration is *selected* on `fewshot/{k}shot_train_holdout`: few-shot accuracy on a held-out part of the
training split (`fewshot.train_holdout`), never on test. Every stage resumes: a rerun reuses the arms it finished
with the same settings — recipe, data by content, code (`settings.py`) — and nothing else; the report shows this
command's arms only.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import ConfigError, UserError
from ..files import atomic_write

# target name in the study → the pretraining overrides that select it
# (target_kwargs always set: a recipe's own, e.g. the demo's `normalize: true`, must not leak into other arms)
TARGETS: dict[str, list[str]] = {
    "mean_color": ["objective.kwargs.target=mean_color", "objective.kwargs.target_kwargs={}"],
    "downsampled_color": ["objective.kwargs.target=downsampled_color", "objective.kwargs.target_kwargs={}"],
    "pixels": ["objective.kwargs.target=pixels", "objective.kwargs.target_kwargs={}"],
    "pixels_norm": ["objective.kwargs.target=pixels", "objective.kwargs.target_kwargs={normalize: true}"],
}
RATES = (0.5, 0.15)
SHOTS = (1, 5, 10, 25)
SELECT_ON = "fewshot/10shot_train_holdout"


@dataclass(frozen=True)
class Arm:
    """One pretraining run of the grid."""

    target: str
    rate: float
    seed: int

    @property
    def config(self) -> str:
        """The configuration it belongs to (target × rate), shared by its seeds."""
        return f"{self.target} @ {round(self.rate * 100)}%"

    @property
    def name(self) -> str:
        return f"{self.target}_r{round(self.rate * 100)}_s{self.seed}"

    def overrides(self) -> list[str]:
        return [*TARGETS[self.target], f"objective.kwargs.corruption_rate={self.rate}", f"train.seed={self.seed}"]


def grid(targets: Sequence[str], rates: Sequence[float], seeds: Sequence[int]) -> list[Arm]:
    """Every (target, rate, seed), checked. Rates outermost, seeds innermost: a study stopped early has compared
    every target at the first rate, each over all its seeds."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"study: unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if any(not 0 < r < 1 for r in rates):
        raise ConfigError(f"study: corruption rates must be in (0, 1), got {list(rates)}")
    if len(set(seeds)) < 2:
        raise ConfigError("study: at least 2 distinct seeds are needed for a spread and an interval (3 or more advised)")
    return [Arm(t, r, s) for r in rates for t in targets for s in seeds]


# ----------------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a − b over pairs and its two-sided Student-t confidence interval: (mean, low, high)."""
    try:
        from scipy.stats import t as student_t  # declared in the `demo` extra, which `ssl-vit study` needs
    except ImportError as err:
        raise UserError("the study's confidence intervals need scipy, in the optional extra that runs it: "
                        "pip install 'ssl_vit[demo]'") from err

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_interval needs two equal-length samples of at least 2, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean, sd = mean_std(diffs)
    half = student_t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class ArmPlan:
    """An arm of this command, with the settings it computes under (`settings.arm_settings`) and their key.

    The arm's folder is named by the key (`arms/pixels_r50_s0-3f9a1c2b7d`): a rerun with another length, target,
    rate, seed, data or code computes into another folder and never reads a result of other settings; the same
    settings find their finished (or interrupted) arm again."""

    arm: Arm
    key: str
    settings: dict

    def dir(self, work: Path) -> Path:
        return work / "arms" / f"{self.arm.name}-{self.key[:KEY_IN_NAME]}"


KEY_IN_NAME = 10


def plan_arm(arm: Arm, work: Path, *, train: str, test: str, recipe: str, eval_recipe: str,
             overrides: Sequence[str] = (), eval_overrides: Sequence[str] = ()) -> ArmPlan:
    """The arm's settings and key; a bad recipe or override fails here, in one line, before anything runs."""
    from ..data.identity import content_key
    from .settings import arm_settings

    settings = arm_settings(recipe=recipe, overrides=[*overrides, *arm.overrides()], eval_recipe=eval_recipe,
                            eval_overrides=eval_overrides, train=train, test=test, output_dir=str(work))
    return ArmPlan(arm, content_key(settings), settings)


def finished(plan: ArmPlan, work: Path) -> tuple[dict, dict] | None:
    """The arm's (pretrained, random-init) metrics when an earlier command finished it with these very settings;
    None when it is not finished. A record of other settings in its folder (copied or edited by hand) refuses."""
    from .settings import changed

    done = plan.dir(work) / "metrics.json"
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
        same = record["key"] == plan.key and record["settings"] == plan.settings
        metrics = record["pretrained"], record["random_init"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{done} is not a finished arm's record; delete {done.parent} to run the arm again") from None
    if not same:
        raise UserError(f"{done} records other settings than its folder's name says "
                        f"({changed(record.get('settings') or {}, plan.settings)}); delete "
                        f"{done.parent} to run the arm again")
    return metrics


def run_arm(plan: ArmPlan, work: Path, *, train: str, test: str, recipe: str, eval_recipe: str,
            overrides: Sequence[str] = (), eval_overrides: Sequence[str] = (),
            call: Callable[[list[str]], None]) -> tuple[dict, dict]:
    """Pretrain and evaluate one arm in its keyed folder (resuming either stage); returns (pretrained, random-init)
    metrics and records them with the settings they were computed under."""
    arm_dir = plan.dir(work)
    pretrain_dir, eval_dir = arm_dir / "pretrain", arm_dir / "eval"
    call(["pretrain", "--config", recipe, "--resume", "auto", f"data.train={train}", *overrides,
          *plan.arm.overrides(), f"output_dir={pretrain_dir}"])
    call(["eval", "fewshot", "--checkpoint", str(pretrain_dir), "--baseline", "random", "--train", train,
          "--test", test, "--config", eval_recipe, "--out", str(eval_dir), "--cache-dir", str(work / "cache"),
          *eval_overrides])  # one cache, keyed by content: an init's features are extracted once for all its arms
    from ..eval.results import read_pair

    pretrained, random_init = read_pair(eval_dir)
    atomic_write(arm_dir / "metrics.json", json.dumps({"arm": plan.arm.__dict__, "key": plan.key, "settings": plan.settings,
                                                       "pretrained": pretrained, "random_init": random_init}, indent=1))
    return pretrained, random_init


def other_arms(work: Path, plans: Sequence[ArmPlan]) -> list[Path]:
    """Arm folders under `work/arms` that are not this command's (other settings, data or code): never read."""
    ours = {plan.dir(work).name for plan in plans}
    root = work / "arms"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ours) if root.is_dir() else []


def pixel_reference(train: str, test: str, eval_recipe: str, eval_overrides: Sequence[str] = ()) -> dict[str, float]:
    """The study's few-shot protocol on raw pixels (each image flattened, as the eval recipe crops it)."""
    import torch

    from ..eval.context import EvalContext, features_context
    from ..eval.features import Features
    from ..config import load_eval_recipe
    from ..eval.registry import build

    recipe = load_eval_recipe(eval_recipe, list(eval_overrides))
    recipe.data.train, recipe.data.test = train, test
    ctx = EvalContext(backbone_factory=lambda: None, data=recipe.data, seed=recipe.seed)

    def pixels(split: str) -> Features:
        xs, labels, keys = [], [], []
        with ctx.eval_batches(split) as stream:
            for batch in stream:
                xs.append(batch["image"].flatten(1).float())  # (B, 3·S·S) uint8 values as float
                labels.append(batch["label"])
                keys.extend(batch["key"])
        order = sorted(range(len(keys)), key=keys.__getitem__)  # key-sorted, as extracted features are
        x, y = torch.cat(xs)[order], torch.cat(labels)[order]
        return Features(x, y.long(), [keys[i] for i in order])

    ctx.num_classes()  # class lists that disagree fail here, as in `ssl-vit eval`
    options = recipe.evaluators.get("fewshot", {})
    return build("fewshot", **options).run(features_context(pixels("train"), pixels("test"), seed=recipe.seed))


# ----------------------------------------------------------------------------------------------- summary
def summarise(results: Mapping[Arm, tuple[dict, dict]], shots: Sequence[int] = SHOTS) -> dict:
    """Per configuration: seeds, and per shot count the pretrained / random-init mean ± std and paired CI."""
    configs: dict[str, list[Arm]] = {}
    for arm in results:
        configs.setdefault(arm.config, []).append(arm)
    out = {}
    for config, arms in configs.items():
        arms = sorted(arms, key=lambda a: a.seed)
        entry = {"target": arms[0].target, "rate": arms[0].rate, "seeds": [a.seed for a in arms], "shots": {}}
        for k in shots:
            key = f"fewshot/{k}shot"
            if not all(key in results[a][0] and key in results[a][1] for a in arms):
                continue
            pre = [results[a][0][key] for a in arms]
            rnd = [results[a][1][key] for a in arms]
            row = {"pretrained": mean_std(pre), "random_init": mean_std(rnd), "per_seed": list(zip(pre, rnd))}
            if len(arms) >= 2:
                row["gain"] = paired_interval(pre, rnd)
            holdout = [results[a][0].get(f"{key}_train_holdout") for a in arms]
            if all(h is not None for h in holdout):
                row["train_holdout"] = mean_std(holdout)
            entry["shots"][str(k)] = row
        out[config] = entry
    return out


def select(summary: Mapping[str, dict], select_on: str = SELECT_ON) -> str | None:
    """The configuration with the best mean `fewshot/{k}shot_train_holdout` (training-split holdout, not test)."""
    k = select_on.removeprefix("fewshot/").split("shot")[0]
    scored = {c: e["shots"][k]["train_holdout"][0] for c, e in summary.items()
              if k in e["shots"] and "train_holdout" in e["shots"][k]}
    return max(scored, key=scored.get) if scored else None


def compared_intervals(results: Mapping[Arm, tuple[dict, dict]], shots: Sequence[int]) -> list[dict]:
    """The paper's questions, paired by seed: mean colour vs 4×4 vs pixels (at each rate), 50% vs 15% (each target).
    Per pair: its label, the number of common seeds, and per shot count (mean, low, high) of the difference."""
    by = {(a.target, a.rate, a.seed): m[0] for a, m in results.items()}
    targets = list(dict.fromkeys(a.target for a in results))
    rates = list(dict.fromkeys(a.rate for a in results))
    seeds = sorted({a.seed for a in results})
    pairs = [((t1, r), (t2, r)) for r in rates for i, t1 in enumerate(targets) for t2 in targets[i + 1:]]
    pairs += [((t, r1), (t, r2)) for t in targets for i, r1 in enumerate(rates) for r2 in rates[i + 1:]]
    rows = []
    for (ta, ra), (tb, rb) in pairs:
        common = [s for s in seeds if (ta, ra, s) in by and (tb, rb, s) in by]
        if len(common) < 2:
            continue
        row = {"comparison": f"{ta} @ {round(ra * 100)}% − {tb} @ {round(rb * 100)}%", "seeds": len(common),
               "intervals": {}}
        for k in shots:
            key = f"fewshot/{k}shot"
            if all(key in by[(ta, ra, s)] and key in by[(tb, rb, s)] for s in common):
                row["intervals"][k] = paired_interval([by[(ta, ra, s)][key] for s in common],
                                                      [by[(tb, rb, s)][key] for s in common])
        rows.append(row)
    return rows


def comparisons(results: Mapping[Arm, tuple[dict, dict]], shots: Sequence[int]) -> list[dict]:
    """`compared_intervals` as table rows: `mean [low, high]` per shot count."""
    return comparison_rows(compared_intervals(results, shots))


def comparison_rows(compared: Sequence[dict]) -> list[dict]:
    """Rows of `compared_intervals`, formatted for the report's table."""
    return [{"comparison": row["comparison"], "seeds": row["seeds"],
             **{f"{k}-shot": _format_interval(v) for k, v in row["intervals"].items()}} for row in compared]


def multiplicity(summary: Mapping[str, dict], compared: Sequence[dict]) -> dict[str, int]:
    """How many 95% intervals the report prints (gains over the init, comparisons) and how many exclude zero: with
    many intervals, some exclude zero by chance alone (about 1 in 20 where nothing differs), which the reader of a
    single exclusion needs to know."""
    gains = [cell["gain"] for e in summary.values() for cell in e["shots"].values() if "gain" in cell]
    compares = [v for row in compared for v in row["intervals"].values()]
    both = gains + compares
    return {"computed": len(both), "gains": len(gains), "comparisons": len(compares),
            "exclude_zero": sum(1 for _, lo, hi in both if lo > 0 or hi < 0)}


def l2_at_grid_top(results: Mapping[Arm, tuple[dict, dict]], shots: Sequence[int]) -> list[int]:
    """The shot counts at which every draw of every arm and init chose the L2 grid's top (the recorded
    `fewshot/{k}shot_log2_l2` is the mean over draws, so it equals the top only if every draw chose it): there
    the selected-L2 figure is the fixed-L2 protocol's (big_vision's 2^10), and a reader should know that."""
    from ..eval.fewshot import FIXED_L2, L2_GRID

    if max(L2_GRID) != FIXED_L2:
        return []
    top = math.log2(FIXED_L2)
    found = []
    for k in shots:
        chosen = [m.get(f"fewshot/{k}shot_log2_l2") for pair in results.values() for m in pair]
        if chosen and all(c is not None and c == top for c in chosen):
            found.append(k)
    return found


def _format_interval(interval: tuple[float, float, float]) -> str:
    mean, lo, hi = interval
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.1f} ± {pair[1]:.1f}"


def table_rows(summary: Mapping[str, dict], reference: Mapping[str, float] | None, shots: Sequence[int]) -> list[dict]:
    """One row per configuration: pretrained mean ± std and paired gain [95% CI] per shot count."""
    rows = []
    for config, entry in summary.items():
        row = {"configuration": config, "seeds": ", ".join(map(str, entry["seeds"]))}
        for k in shots:
            cell = entry["shots"].get(str(k))
            if cell is None:
                continue
            row[f"{k}-shot"] = _pm(cell["pretrained"])
            row[f"{k}-shot gain [95% CI]"] = _format_interval(cell["gain"]) if "gain" in cell else "–"
        rows.append(row)
    first = next(iter(summary.values()), None)
    if first is not None:  # the random init: per seed the same weights in every configuration
        row = {"configuration": "random init (paired baseline)", "seeds": ", ".join(map(str, first["seeds"]))}
        for k in shots:
            if str(k) in first["shots"]:
                row[f"{k}-shot"], row[f"{k}-shot gain [95% CI]"] = _pm(first["shots"][str(k)]["random_init"]), ""
        rows.append(row)
    if reference:
        row = {"configuration": "reference: raw pixels + least squares", "seeds": "–"}
        for k in shots:
            if f"fewshot/{k}shot" in reference:
                row[f"{k}-shot"] = _pm((reference[f"fewshot/{k}shot"], reference.get(f"fewshot/{k}shot_std", 0.0)))
                row[f"{k}-shot gain [95% CI]"] = ""
        rows.append(row)
    return rows


def write_study_report(work: Path, results: Mapping[Arm, tuple[dict, dict]], reference: Mapping[str, float] | None,
                       *, shots: Sequence[int] = SHOTS, select_on: str = SELECT_ON, note: str = "",
                       folders: Mapping[Arm, Path] | None = None) -> Path:
    """study.json (every figure, per seed) and study.md (tables, the few-shot curves, the selection), from `results`
    alone: the caller passes this command's arms, so no figure of another command's settings reaches them.
    `folders` names each arm's folder in study.json."""
    from .plots import plot_fewshot
    from .report import write_report

    summary = summarise(results, shots)
    chosen = select(summary, select_on)
    compared = compared_intervals(results, shots)
    counted, at_top = multiplicity(summary, compared), l2_at_grid_top(results, shots)
    record = {"summary": summary, "selected": chosen, "select_on": select_on, "reference_raw_pixels": reference,
              "intervals": counted, "l2_at_grid_top": at_top,
              "arms": {a.name: {"pretrained": m[0], "random_init": m[1],
                                **({"folder": str(folders[a])} if folders and a in folders else {})}
                       for a, m in results.items()}}
    atomic_write(work / "study.json", json.dumps(record, indent=1) + "\n")
    curves = {c: {f"fewshot/{k}shot": v["pretrained"][0] for k, v in e["shots"].items()} for c, e in summary.items()}
    first = next(iter(summary.values()), None)
    if first is not None:
        curves["random init"] = {f"fewshot/{k}shot": v["random_init"][0] for k, v in first["shots"].items()}
    if reference:
        curves["raw pixels"] = {k: v for k, v in reference.items() if "_" not in k}  # fewshot/{k}shot only
    figures = {"Few-shot curve per configuration (mean over seeds)":
               plot_fewshot(curves, work / "study_fewshot.png", title="Few-shot accuracy, k labels per class")} if curves else {}
    tables = [{"title": "Pretrained few-shot accuracy (%, mean ± std over seeds) and gain over its own random init "
                        "(points, paired by seed, mean [95% CI])", "rows": table_rows(summary, reference, shots)}]
    if compared:
        tables.append({"title": "Configurations compared, paired by seed (points, mean [95% CI])",
                       "rows": comparison_rows(compared)})
    k = select_on.removeprefix("fewshot/").split("shot")[0]
    held = {c: e["shots"][k]["train_holdout"] for c, e in summary.items() if "train_holdout" in e["shots"].get(k, {})}
    if held:
        tables.append({"title": f"Selection figure: {k}-shot on the held-out part of the training split (%)",
                       "rows": [{"configuration": c, select_on: _pm(v)} for c, v in held.items()]})
    notes = [
        "**Protocol.** Few-shot: `fewshot/{k}shot`, k labels per class, L2 chosen on the k shots alone "
        "(leave-one-out; GCV at 1 shot), test accuracy averaged over draws; the same draws for every arm. Each "
        "pretrained arm is paired with its own initial weights (same `train.seed`). Intervals: Student t over seeds.",
        f"**Selection.** {'`' + chosen + '`' if chosen else 'none (no train-holdout figures)'}, by the best mean "
        f"`{select_on}`: shots from the training split minus a held-out part, scored on that part. Test was not read.",
    ]
    if counted["computed"]:
        notes.append(
            f"**Multiplicity.** {counted['computed']} 95% intervals above ({counted['gains']} gains over the "
            f"random init, {counted['comparisons']} comparisons); {counted['exclude_zero']} exclude zero. Where "
            f"nothing differs, about 1 in 20 excludes zero by chance ({counted['computed'] / 20:.1f} of these): one "
            "exclusion alone is weak evidence, and an interval that includes zero means not shown at this scale, "
            "not no effect.")
    if at_top:
        notes.append(
            f"**L2 at {', '.join(map(str, at_top))} shot(s).** Every draw of every arm and init chose the L2 grid's "
            "top (2^10) there, so the selected-L2 figure equals the fixed-L2 protocol's (big_vision's 2^10).")
    if note:
        notes.append(note)
    return write_report(work, title="ssl_vit study: MPP targets × corruption rates × seeds",
                        summary={"arms": len(results), "configurations": len(summary), "selected": chosen or "–"},
                        figures=figures, tables=tables, notes=notes, filename="study.md")


def progress(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr, flush=True)
