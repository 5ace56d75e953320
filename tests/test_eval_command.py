"""`ssl-vit eval`: one command compares a pretrained and a random-init backbone; results files; compare table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_dataset

from ssl_vit.errors import CheckpointError, ConfigError
import ssl_vit.commands.eval as command
from ssl_vit.config import load_eval_recipe
from ssl_vit.eval.results import compare_runs, write_results
from ssl_vit.models import create_model
from ssl_vit.models.weights import save_backbone

ROOT = Path(__file__).resolve().parents[1]
TINY = ["image_size=32", "batch_size=8", "num_workers=0", "crop_pct=1.0"]


def eval_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An exported backbone whose weights differ from the random init of any seed we use."""
    torch.manual_seed(123)
    model = create_model("vit_nano_patch4")
    with torch.no_grad():
        model.patch_embed.proj.weight.mul_(3.0)
    return save_backbone(model, tmp_path_factory.mktemp("ckpt") / "pretrained.safetensors")


def test_random_init_and_pretrained_side_by_side_in_one_command(data, pretrained, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = eval_cli("knn", "--checkpoint", str(pretrained), "--baseline", "random", "--train", str(data),
                  "--test", str(data), "--out", str(out), "knn.k=[1,3]", *TINY)
    assert rc == 0
    runs = sorted(p.parent.name for p in out.glob("*/results.json"))
    assert runs == ["pretrained", "random-init-vit_nano_patch4-seed-0"]
    table = (out / "comparison.md").read_text()
    assert "| metric | pretrained | random-init vit_nano_patch4 (seed 0) |" in table
    assert "| knn/k3_top1 |" in table
    assert table == capsys.readouterr().out  # printed as well
    pre = json.loads((out / "pretrained" / "results.json").read_text())
    rnd = json.loads((out / "random-init-vit_nano_patch4-seed-0" / "results.json").read_text())
    assert pre["model"] == rnd["model"] == "vit_nano_patch4" and pre["checkpoint"] == str(pretrained)
    assert set(pre["metrics"]) == {"knn/k1_top1", "knn/k3_top1"}
    assert len(list((out / "cache").glob("features-*.pt"))) == 4  # train + test for each backbone


def test_random_init_flag_equals_random_checkpoint(data, tmp_path):
    for name, flag in (("a", ["--random-init", "vit_nano_patch4"]), ("b", ["--checkpoint", "random:vit_nano_patch4:0"])):
        eval_cli("fewshot", *flag, "--train", str(data), "--test", str(data), "--out", str(tmp_path / name),
                 "fewshot.shots=[2]", "fewshot.seeds=2", *TINY)
    a, b = (json.loads((tmp_path / n / "results.json").read_text())["metrics"] for n in "ab")
    assert a == b and set(a) >= {"fewshot/2shot", "fewshot/2shot_std", "fewshot/2shot_fixed_l2"}


def test_all_with_smoke_recipe_writes_results_json_and_markdown(data, tmp_path):
    out = tmp_path / "run"
    eval_cli("all", "--checkpoint", "random:vit_nano_patch4", "--config", str(ROOT / "recipes/eval/smoke.yaml"),
             "--train", str(data), "--test", str(data), "--out", str(out))
    record = json.loads((out / "results.json").read_text())
    assert record["protocols"] == ["fewshot", "knn", "linear"]
    assert {"fewshot/1shot", "knn/k3_top1", "linear/top1"} <= set(record["metrics"])
    assert record["train"] == f"{data}:train" and record["test"] == f"{data}:validation"
    md = (out / "results.md").read_text()
    assert md.startswith("# Evaluation: random-init vit_nano_patch4 (seed 0)")
    assert f"| fewshot/2shot | {record['metrics']['fewshot/2shot']:.2f} ± " in md
    # the smoke recipe asks for all three few-shot protocols; each is named in both files
    assert set(record["fewshot_protocols"]) == {"fewshot/{k}shot", "fewshot/{k}shot_fixed_l2", "fewshot/{k}shot_plus{v}_labels"}
    assert "- `fewshot/{k}shot_fixed_l2`: big_vision's protocol" in md and "fewshot/2shot_plus2_labels" in md


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    write_results(tmp_path / "a", "mpp", {"fewshot/5shot": 61.234, "fewshot/5shot_std": 0.5, "knn/k20_top1": 70.0}, {})
    write_results(tmp_path / "b", "random", {"fewshot/5shot": 12.0, "fewshot/5shot_std": 1.25}, {})
    assert eval_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp.md")) == 0
    expected = (
        "| metric | mpp | random |\n|---|---:|---:|\n"
        "| fewshot/5shot | 61.23 ± 0.50 | 12.00 ± 1.25 |\n"
        "| knn/k20_top1 | 70.00 | – |\n"
    )
    assert capsys.readouterr().out == expected
    assert (tmp_path / "cmp.md").read_text() == expected
    assert compare_runs([tmp_path]) == expected  # a parent directory of runs works too


def test_bare_state_dict_needs_model_and_the_error_says_which(tmp_path, data):
    path = tmp_path / "timm.pth"
    torch.save(create_model("vit_nano_patch4").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"pass --model NAME \(its shapes fit --model vit_nano_patch4\)"):
        eval_cli("knn", "--checkpoint", str(path), "--train", str(data), "--test", str(data), *TINY)
    assert eval_cli("knn", "--checkpoint", str(path), "--model", "vit_nano_patch4", "--train", str(data),
                    "--test", str(data), "--out", str(tmp_path / "o"), "knn.k=[1]", *TINY) == 0


def test_recipe_typos_fail_before_any_work():
    with pytest.raises(ConfigError, match="did you mean 'data.batch_size'"):
        load_eval_recipe(None, ["data.batch_sise=3"])
    with pytest.raises(ConfigError, match=r"evaluator 'knn' has no option 'kk' \(did you mean 'k'\?\)"):
        eval_cli("knn", "--checkpoint", "random:vit_nano_patch4", "knn.kk=[3]")
    with pytest.raises(ConfigError, match="pass --train SPEC"):
        eval_cli("knn", "--checkpoint", "random:vit_nano_patch4", "--out", "/nonexistent/x", *TINY)
    assert load_eval_recipe(ROOT / "recipes/eval/default.yaml").evaluators["fewshot"]["shots"] == [1, 5, 10, 25]
    assert load_eval_recipe(ROOT / "recipes/eval/linear_mae.yaml").evaluators["linear"]["protocol"] == "mae"


def test_through_the_ssl_vit_command_line(data, tmp_path, capsys):
    from ssl_vit.cli import main

    out = tmp_path / "cli"
    assert main(["eval", "knn", "--checkpoint", "random:vit_nano_patch4", "--train", str(data), "--test", str(data),
                 "--out", str(out), "knn.k=[1]", *TINY]) == 0
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    capsys.readouterr()
    assert main(["eval", "compare", str(out)]) == 0
    assert "| knn/k1_top1 |" in capsys.readouterr().out
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "missing.pth"), "--train", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint") and "no such file or directory" in err  # one line, no traceback


def test_trainer_checkpoint_is_read_with_its_recipe(tmp_path):
    from ssl_vit.config import PretrainConfig
    from ssl_vit.eval.backbones import resolve_backbone

    torch.manual_seed(5)
    backbone = create_model("vit_nano_patch4")
    step_dir = tmp_path / "run" / "checkpoints" / "step_0000007"
    step_dir.mkdir(parents=True)
    objective_state = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "head.fc.weight": torch.ones(2, 2)}
    torch.save({"model": objective_state, "step": 7}, step_dir / "state.pt")  # the trainer's layout
    cfg = PretrainConfig()
    cfg.model.name, cfg.data.image_size, cfg.train.total_steps = "vit_nano_patch4", 32, 10
    cfg.optim.warmup_steps, cfg.eval.crop_pct, cfg.train.seed = 1, 0.9, 5
    (step_dir / "config.yaml").write_text(cfg.to_yaml())
    (step_dir.parent / "latest").write_text("step_0000007\n")
    source = resolve_backbone(str(tmp_path / "run"))
    assert source.label == "run@7" and source.model_name == "vit_nano_patch4"
    # evaluated as trained unless told otherwise: 32 px, the recipe's eval crop, the [class] token
    assert source.eval_defaults() == source.random_baseline().eval_defaults() == {"image_size": 32, "crop_pct": 0.9, "pool": "cls"}
    assert source.random_baseline(0).seed == 5  # its own train.seed, not the evaluation's
    loaded = source.build()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_train_and_test_with_different_class_lists_fail_before_any_work(tmp_path):
    """Shards built apart from folders that differ in one class: label 1 would be two classes. One line, early."""
    from eval_fixtures import write_split

    write_split(tmp_path / "a", "train", num_classes=3, per_class=2, num_shards=1)
    write_split(tmp_path / "b", "validation", num_classes=4, per_class=1, num_shards=1)
    with pytest.raises(ConfigError) as caught:
        eval_cli("knn", "--checkpoint", "random:vit_nano_patch4", "--train", str(tmp_path / "a"),
                 "--test", str(tmp_path / "b"), "--out", str(tmp_path / "o"), *TINY)
    message = str(caught.value)
    assert "list different classes (3 vs 4; label 3 is nothing vs 'c3')" in message
    assert str(tmp_path / "a") in message and "split 'validation'" in message
    assert not (tmp_path / "o" / "results.json").exists()


def test_random_baseline_is_the_checkpoints_own_step0_weights(tmp_path):
    """A run with train.seed=3 and lr 1e-30 (lr must be positive): its one step moves no weight by more than 1e-30,
    so its checkpoint holds the step-0 weights; --baseline random rebuilds them."""
    from trainer_fixtures import run_pretrain, smoke_overrides, write_pretrain_shards

    from ssl_vit.eval.backbones import resolve_backbone

    shards = write_pretrain_shards(tmp_path / "shards", num_samples=16)
    run = tmp_path / "run"
    proc = run_pretrain(smoke_overrides(shards, run, **{
        "train.seed": 3, "train.total_steps": 1, "optim.lr": 1e-30, "optim.min_lr": 0.0, "optim.warmup_steps": 0,
        "train.checkpoint_every": 1, "train.log_every": 1}))
    assert proc.returncode == 0, proc.stderr
    source = resolve_backbone(str(run), seed=0)  # the evaluation's own seed (0) must not decide the baseline
    assert source.train_seed == 3
    step0 = source.build().state_dict()
    baseline = source.random_baseline(0)
    assert baseline.label == "random-init vit_nano_patch4 (seed 3)"
    rebuilt = baseline.build(img_size=32).state_dict()
    assert rebuilt.keys() == step0.keys()
    for key in step0:  # random weights are ~1e-2: a different draw would miss by far more than 1e-20
        torch.testing.assert_close(rebuilt[key], step0[key], rtol=0, atol=1e-20, msg=key)
    other = resolve_backbone("random:vit_nano_patch4:0").build(img_size=32).state_dict()
    assert not torch.equal(other["patch_embed.proj.weight"], step0["patch_embed.proj.weight"])  # seed 0 would differ
    # at another resolution the baseline is those same draws, resampled (as the pretrained weights are)
    at48 = baseline.build(img_size=48).state_dict()
    assert torch.equal(at48["blocks.0.attn.qkv.weight"], rebuilt["blocks.0.attn.qkv.weight"])
    assert at48["pos_embed"].shape[1] == 1 + 12 * 12


def test_eval_defaults_to_the_checkpoints_resolution_crop_and_pooling(data, tmp_path, capsys):
    """A 32-px, average-pooled export is evaluated at 32 px with mean pooling unless told otherwise; another size says so."""
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4", img_size=32, global_pool="avg")
    ckpt = save_backbone(model, tmp_path / "b32.safetensors")
    small = ["batch_size=8", "num_workers=0", "crop_pct=1.0", "knn.k=[1]"]
    assert eval_cli("knn", "--checkpoint", str(ckpt), "--train", str(data), "--test", str(data),
                    "--out", str(tmp_path / "a"), *small) == 0
    record = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (record["image_size"], record["pool"], record["crop_pct"]) == (32, "mean", 1.0)
    assert "evaluating at" not in capsys.readouterr().err
    assert eval_cli("knn", "--checkpoint", str(ckpt), "--train", str(data), "--test", str(data),
                    "--out", str(tmp_path / "b"), "image_size=48", "pool=cls", *small) == 0
    record = json.loads((tmp_path / "b" / "results.json").read_text())
    assert (record["image_size"], record["pool"]) == (48, "cls")
    lines = [l for l in capsys.readouterr().err.splitlines() if "evaluating at" in l]
    assert lines == ["[b32] evaluating at 48 px; it was built for 32 px (position embeddings resampled)"]
