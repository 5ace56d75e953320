"""The demo pipeline at a reduced size: every artefact of the report exists and the figures are valid PNGs."""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from background import Background, selected
from PIL import Image

from ssl_vit.cli import main

OWN_SHARDS_TEST = "test_demo_runs_on_the_users_own_shards"


@pytest.fixture(scope="module", autouse=True)
def demo_on_own_shards(request, tmp_path_factory) -> Iterator[tuple[Path, Background] | None]:
    """`ssl-vit demo` on the user's own shards, as a command started with the module: it runs on the other core
    while the quick demo runs in this process (one thread); its test collects it. Yields (workdir, the run)."""
    if not selected(request, OWN_SHARDS_TEST):
        yield None
        return
    from eval_fixtures import write_dataset

    tmp = tmp_path_factory.mktemp("own_shards")
    data = write_dataset(tmp / "shards", train_per_class=30, test_per_class=6)
    work = tmp / "demo"
    command = [sys.executable, "-m", "ssl_vit", "demo", "--workdir", str(work), "--train", f"{data}:train",
               "--test", f"{data}:validation", "--quick", "model.name=vit_nano_patch4"]
    background = Background(command, tmp / "demo_command")
    yield work, background
    background.kill()


@pytest.mark.timeout(240)
def test_quick_demo_writes_every_artefact(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--quick", "--data", "digits"]) == 0
    assert str(work / "report.md") in capsys.readouterr().out

    summary = json.loads((work / "summary.json").read_text())
    for run in ("pretrained", "random_init"):
        assert set(summary[run]) == {"fewshot", "linear", "knn"}
        assert set(summary[run]["fewshot"]) == {"1", "5", "10", "25"}
        values = list(summary[run]["fewshot"].values()) + [summary[run]["linear"], summary[run]["knn"]]
        assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in values), values
    assert all(isinstance(v, float) for v in summary["raw_pixels"]["fewshot"].values())  # the reference to beat

    report = (work / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    # few-shot curve, training curves, Figure 7, masked prediction, position similarity
    assert len(links) == 5, links
    for link in links:
        with Image.open(work / link) as img:
            img.verify()
        with Image.open(work / link) as img:
            assert img.format == "PNG" and min(img.size) >= 100
    for figure in ("figure7.png", "masked_prediction.png", "training_curves.png", "attention_distance.png"):
        assert (work / "analysis" / figure).is_file()
    # The report states the figures it measured, for both goals.
    assert re.search(r"10-shot: pretrained \d+\.\d% vs random init \d+\.\d%", report)
    assert re.search(r"5-shot: pretrained \d+\.\d% vs random init \d+\.\d%", report)
    assert "QUICK run" in report

    assert report.startswith("# ssl_vit demo: masked patch prediction on scikit-learn's handwritten digits")
    assert "CC BY 4.0" in report and summary["data"]["name"] == "digits"

    # Running it again resumes every stage instead of starting over.
    assert main(["demo", "--workdir", str(work), "--quick", "--data", "digits"]) == 0


def test_demo_needs_both_train_and_test(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--train", "x"]) == 2
    assert "give both --train and --test" in capsys.readouterr().err


@pytest.mark.timeout(240)
def test_demo_runs_on_the_users_own_shards(demo_on_own_shards):
    work, background = demo_on_own_shards
    done = background.finish(timeout=230)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary) == {"pretrained", "random_init", "raw_pixels", "data"}
    assert not (work / "images").exists() and not (work / "images_emoji").exists()  # none of ours with the user's
    assert (work / "report.md").is_file() and (work / "analysis" / "figure7.png").is_file()


def test_the_knn_verdict_claims_a_gain_only_where_there_is_one():
    from ssl_vit.demo.report import _verdicts

    better = _verdicts({"knn/k20_top1": 74.0}, {"knn/k20_top1": 54.4})[-1]
    worse = _verdicts({"knn/k20_top1": 49.2}, {"knn/k20_top1": 54.4})[-1]
    assert better == ("- kNN (k=20): 74.0% vs 54.4% (+19.6): the pretrained features are better for cosine nearest "
                      "neighbours too.")
    assert worse.startswith("- kNN (k=20): 49.2% vs 54.4% (-5.2): the pretrained features are not better")
