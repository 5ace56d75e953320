"""`ssl-vit study`: its statistics checked by hand, and a tiny grid end to end (every arm paired with its own init)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ssl_vit.analysis.study import (Arm, compared_intervals, comparisons, grid, l2_at_grid_top, multiplicity,
                                    paired_interval, select, summarise)
from ssl_vit.errors import ConfigError


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 dof) = 4.302653, half-width 4.302653 / sqrt(3)
    mean, lo, hi = paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), abs=1e-9)


def test_grid_checks_its_axes():
    names = [a.name for a in grid(["pixels", "mean_color"], [0.5, 0.15], [0, 1])]
    assert names[:4] == ["pixels_r50_s0", "pixels_r50_s1", "mean_color_r50_s0", "mean_color_r50_s1"] and len(names) == 8
    with pytest.raises(ConfigError, match="unknown target"):
        grid(["pixel"], [0.5], [0, 1])
    with pytest.raises(ConfigError, match="at least 2 distinct seeds"):
        grid(["pixels"], [0.5], [0, 0])


def test_each_arm_sets_its_whole_target_over_the_recipes():
    """The demo recipe normalises pixels; a mean-colour or raw-pixels arm built on it must not inherit that."""
    from ssl_vit.config import load_config

    for target, normalise in (("mean_color", None), ("pixels", None), ("pixels_norm", True)):
        cfg = load_config("recipes/demo/digits.yaml", Arm(target, 0.15, 4).overrides())
        kwargs = cfg.objective.kwargs
        assert kwargs["target"] == target.removesuffix("_norm") and kwargs["corruption_rate"] == 0.15
        assert (kwargs["target_kwargs"] or {}).get("normalize") == normalise and cfg.train.seed == 4


def test_summary_selection_and_comparisons_from_known_figures():
    """Selection reads the train-holdout figure only: the configuration best on test is not the one chosen."""
    results = {}
    for seed in (0, 1, 2):
        rnd = {"fewshot/10shot": 50.0 + seed}
        results[Arm("pixels", 0.5, seed)] = ({"fewshot/10shot": 70.0 + seed, "fewshot/10shot_train_holdout": 60.0}, rnd)
        results[Arm("mean_color", 0.5, seed)] = ({"fewshot/10shot": 60.0 + 2 * seed, "fewshot/10shot_train_holdout": 65.0}, rnd)
    summary = summarise(results, shots=[10])
    pixels = summary["pixels @ 50%"]["shots"]["10"]
    assert pixels["pretrained"] == pytest.approx((71.0, 1.0)) and pixels["random_init"] == pytest.approx((51.0, 1.0))
    assert pixels["gain"] == pytest.approx((20.0, 20.0, 20.0))  # the same gain for every seed: no spread
    assert select(summary, "fewshot/10shot_train_holdout") == "mean_color @ 50%"  # although pixels wins on test
    (row,) = comparisons(results, [10])
    assert row["comparison"] == "pixels @ 50% − mean_color @ 50%" and row["10-shot"].startswith("+9.0 [")


def test_multiplicity_counts_every_interval_and_those_that_exclude_zero():
    """2 configurations × 2 shot counts of gains, 1 comparison × 2 shot counts: 6 intervals. By construction the
    pixels gain +20 at every seed (excludes zero), the mean colour gains 0, +1, −1 (includes zero), and pixels −
    mean colour is +20, +19, +21 (excludes zero): 2 gains and 2 comparisons exclude zero."""
    results = {}
    for seed, wobble in zip((0, 1, 2), (0.0, 1.0, -1.0)):
        rnd = {"fewshot/1shot": 10.0, "fewshot/5shot": 30.0}
        results[Arm("pixels", 0.5, seed)] = ({"fewshot/1shot": 30.0, "fewshot/5shot": 50.0}, rnd)
        results[Arm("mean_color", 0.5, seed)] = ({"fewshot/1shot": 10.0 + wobble, "fewshot/5shot": 30.0 + wobble}, rnd)
    summary = summarise(results, shots=[1, 5])
    compared = compared_intervals(results, [1, 5])
    assert [r["comparison"] for r in compared] == ["pixels @ 50% − mean_color @ 50%"]
    assert compared[0]["intervals"][5][0] == pytest.approx(20.0)
    assert multiplicity(summary, compared) == {"computed": 6, "gains": 4, "comparisons": 2, "exclude_zero": 4}


def test_l2_at_grid_top_only_where_every_draw_of_every_arm_and_init_chose_it():
    pre = {"fewshot/1shot_log2_l2": 10.0, "fewshot/5shot_log2_l2": 10.0, "fewshot/10shot_log2_l2": 7.4}
    init = {"fewshot/1shot_log2_l2": 10.0, "fewshot/5shot_log2_l2": 9.8, "fewshot/10shot_log2_l2": 10.0}
    results = {Arm("pixels", 0.5, 0): (pre, dict(pre)), Arm("pixels", 0.5, 1): (dict(pre), init)}
    assert l2_at_grid_top(results, [1, 5, 10, 25]) == [1]  # 5: one init's draws averaged 9.8; 25: not recorded


@pytest.mark.timeout(600)
def test_tiny_study_end_to_end(tmp_path, capsys):
    from ssl_vit.cli import main
    from ssl_vit.eval.backbones import resolve_backbone

    from eval_fixtures import write_dataset

    data = write_dataset(tmp_path / "shards", train_per_class=16)  # labelled train and validation splits of tiny images
    work = tmp_path / "study"
    argv = ["study", "--workdir", str(work), "--train", f"{data}:train", "--test", f"{data}:validation",
            "--targets", "pixels", "mean_color", "--rates", "0.5", "--seeds", "0", "1", "--shots", "1", "2",
            "--draws", "2", "--holdout", "0.3", "--select-on", "fewshot/2shot_train_holdout",
            "--recipe", "pretrain/smoke", "--eval-recipe", "eval/smoke",  # shipped names, as a wheel user writes
            "train.total_steps=2", "train.global_batch=8", "data.batch_size=8", "optim.warmup_steps=1",
            "train.checkpoint_every=2", "train.log_every=1"]
    assert main(argv) == 0
    record = json.loads((work / "study.json").read_text())
    assert set(record["arms"]) == {"pixels_r50_s0", "pixels_r50_s1", "mean_color_r50_s0", "mean_color_r50_s1"}
    assert record["selected"] in ("pixels @ 50%", "mean_color @ 50%")
    assert record["summary"]["pixels @ 50%"]["seeds"] == [0, 1]
    assert "gain" in record["summary"]["pixels @ 50%"]["shots"]["2"]
    assert {"fewshot/1shot", "fewshot/2shot"} <= set(record["reference_raw_pixels"])
    # each arm's baseline is its own initial weights: seed 1's differs from seed 0's, and is the same for both targets
    for arm in ("pixels_r50_s1", "mean_color_r50_s1"):
        source = resolve_backbone(str(Path(record["arms"][arm]["folder"]) / "pretrain"))
        assert source.train_seed == 1
    assert record["arms"]["pixels_r50_s1"]["random_init"] == record["arms"]["mean_color_r50_s1"]["random_init"]
    assert record["arms"]["pixels_r50_s0"]["random_init"] != record["arms"]["pixels_r50_s1"]["random_init"]
    assert len(list((work / "cache").glob("*"))) == 2 * (4 + 2)  # train + test features of 4 arms and 2 inits
    report = (work / "study.md").read_text()
    assert "reference: raw pixels + least squares" in report and "random init (paired baseline)" in report
    counted = record["intervals"]  # 2 configurations × 2 shot counts of gains, 1 comparison × 2 shot counts
    assert counted["computed"] == 6 and counted["gains"] == 4 and counted["comparisons"] == 2
    assert f"**Multiplicity.** 6 95% intervals above (4 gains over the random init, 2 comparisons); " \
           f"{counted['exclude_zero']} exclude zero." in report
    top = record["l2_at_grid_top"]  # whichever shot counts it holds, the report says exactly those
    assert (f"**L2 at {', '.join(map(str, top))} shot(s).**" in report) if top else ("**L2 at" not in report)
    assert (work / "study_fewshot.png").is_file()
    # a rerun reads the finished arms back instead of training again
    capsys.readouterr()
    assert main(argv) == 0
    rerun = capsys.readouterr()
    assert "arm 4/4" in rerun.err and "training steps" not in rerun.out + rerun.err
    assert rerun.err.count("reused, finished earlier with the same settings") == 4


@pytest.mark.timeout(600)
def test_a_signal_during_an_arm_stops_the_study_instead_of_evaluating_the_unfinished_run(tmp_path, capsys, monkeypatch):
    """SIGTERM in the middle of an arm's pretraining: the pretraining checkpoints and returns 0, and the study must
    stop there (exit 0, one line) — not evaluate the half-trained run as if it were the arm's result. Run again, the
    arm resumes from that checkpoint and finishes."""
    from ssl_vit.cli import main

    from eval_fixtures import write_dataset
    from trainer_fixtures import sigterm_at_step

    data = write_dataset(tmp_path / "shards", train_per_class=16)
    work = tmp_path / "study"
    argv = ["study", "--workdir", str(work), "--train", f"{data}:train", "--test", f"{data}:validation",
            "--targets", "pixels", "--rates", "0.5", "--seeds", "0", "1", "--shots", "1", "--draws", "1",
            "--select-on", "fewshot/1shot_train_holdout", "--recipe", "recipes/pretrain/smoke.yaml",
            "--eval-recipe", "recipes/eval/smoke.yaml", "train.total_steps=4", "train.global_batch=8",
            "data.batch_size=8", "optim.warmup_steps=1", "train.checkpoint_every=4", "train.log_every=1"]
    sigterm_at_step(monkeypatch, 2)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "stopped: SIGTERM during `ssl-vit pretrain`, which saved a checkpoint; run the same command again" in err
    (arm,) = (work / "arms").glob("pixels_r50_s0-*")  # the arm's folder, named by its settings' key
    assert not (arm / "metrics.json").exists() and not (arm / "eval").exists()  # nothing was evaluated
    assert (arm / "pretrain" / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert not list((work / "arms").glob("pixels_r50_s1-*"))

    monkeypatch.undo()
    assert main(argv) == 0
    out = capsys.readouterr()
    assert f"resumed from {arm / 'pretrain' / 'checkpoints' / 'step_0000002'} at step 2" in out.out + out.err
    record = json.loads((arm / "metrics.json").read_text())
    assert set(json.loads((work / "study.json").read_text())["arms"]) == {"pixels_r50_s0", "pixels_r50_s1"}
    assert "fewshot/1shot" in record["pretrained"]
