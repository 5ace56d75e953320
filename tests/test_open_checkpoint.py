"""One way to open a checkpoint: `ssl-vit export` / `analyze` (train/restore.py) and `ssl-vit eval`
(eval/backbones.py) read a checkpoint's recipe and weights through `open_checkpoint`, by one rule set.

Before, they read recipes by different rules: export and analyze read only the `config` inside state.pt, eval read
config.yaml first. So a checkpoint whose recipe was only (or differently) in config.yaml opened in eval and not in
export (or with another crop and seed), and a damaged recipe gave different lines — eval even named a config.yaml
that did not exist, and a config.yaml that is not YAML was a traceback in eval while export ignored it.
The checkpoints here are built by hand (a real objective's state, as the trainer saves it), so no training runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_vit.cli import main
from ssl_vit.config import PretrainConfig, build_objective
from ssl_vit.eval.backbones import resolve_backbone


def recipe(crop_pct: float = 0.9, seed: int = 5) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.model.name, cfg.data.image_size, cfg.train.total_steps = "vit_nano_patch4", 32, 10
    cfg.optim.warmup_steps, cfg.eval.crop_pct, cfg.train.seed = 1, crop_pct, seed
    return cfg


def write_checkpoint(run: Path, *, config=None, config_yaml: str | None = None, step: int = 7) -> Path:
    """RUN/checkpoints/step_…/ with a real MPP objective's state (the trainer's `model`), `config` inside state.pt
    when given, and config.yaml beside it when given; `latest` names it."""
    torch.manual_seed(0)
    objective = build_objective(recipe())
    step_dir = run / "checkpoints" / f"step_{step:07d}"
    step_dir.mkdir(parents=True)
    state = {"model": objective.state_dict(), "step": step}
    if config is not None:
        state["config"] = config
    torch.save(state, step_dir / "state.pt")
    if config_yaml is not None:
        (step_dir / "config.yaml").write_text(config_yaml)
    (step_dir.parent / "latest").write_text(step_dir.name + "\n")
    return step_dir


def error_lines(run: Path, tmp_path: Path, capsys) -> dict[str, str]:
    """The one line each command prints for `run` (exit 2, no traceback)."""
    commands = {
        "export": ["export", str(run), str(tmp_path / "out.safetensors")],
        "analyze": ["analyze", str(run), "--images", str(tmp_path / "no-images"), "--out", str(tmp_path / "analysis")],
        "eval": ["eval", "knn", "--checkpoint", str(run), "--train", str(tmp_path / "no-shards"),
                 "--out", str(tmp_path / "eval")],
    }
    lines = {}
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        lines[name] = err.strip()
    return lines


@pytest.mark.parametrize("layout", ["only config.yaml", "config.yaml repaired"])
def test_export_and_eval_read_the_same_recipe(tmp_path, capsys, layout):
    """Only config.yaml (export refused it before: "holds no recipe"), or a config.yaml that differs from the copy
    inside state.pt (export took state.pt's crop 0.9 and seed 5, eval config.yaml's 0.8 and 6): now both read
    config.yaml, as a resume does."""
    run = tmp_path / "run"
    inside = None if layout == "only config.yaml" else recipe(crop_pct=0.9, seed=5).to_dict()
    write_checkpoint(run, config=inside, config_yaml=recipe(crop_pct=0.8, seed=6).to_yaml())

    out = tmp_path / "b.safetensors"
    assert main(["export", str(run), str(out)]) == 0
    exported = json.loads(out.with_suffix(".json").read_text())
    source = resolve_backbone(str(run))
    assert (exported["crop_pct"], exported["train_seed"]) == (source.crop_pct, source.train_seed) == (0.8, 6)
    assert source.label == "run@7" and exported["step"] == 7
    tensors, built = load_file(str(out)), source.build().state_dict()
    assert tensors.keys() == built.keys() and all(torch.equal(tensors[k], built[k]) for k in built)


def _broken_yaml(run: Path) -> None:
    write_checkpoint(run, config=recipe().to_dict(), config_yaml="model: {name: [vit\n")


def _yaml_list(run: Path) -> None:
    write_checkpoint(run, config=recipe().to_dict(), config_yaml="- model\n- data\n")


def _removed_key(run: Path) -> None:
    old = recipe().to_dict()
    old["optim"]["warmup"] = 3  # a key this version does not know
    write_checkpoint(run, config=old)


def _bad_value(run: Path) -> None:
    old = recipe().to_dict()
    old["train"]["total_steps"] = "lots"
    write_checkpoint(run, config=old)


def _config_not_a_mapping(run: Path) -> None:
    write_checkpoint(run, config="vit_nano_patch4")


def _finetune(run: Path) -> None:
    from ssl_vit.config import FinetuneConfig

    cfg = FinetuneConfig()
    cfg.train.total_steps, cfg.optim.warmup_steps = 10, 1
    write_checkpoint(run, config=cfg.to_dict())


@pytest.mark.parametrize("damage, expected", [
    (_broken_yaml, "config.yaml: not valid YAML ("),
    (_yaml_list, "config.yaml: not a recipe (a mapping of sections model:, data:, ...; got list)"),
    (_removed_key, "state.pt config: unknown key 'optim.warmup' (did you mean 'optim.warmup_steps'?); the "
                   "checkpoint's recipe does not fit this version of ssl_vit: correct it in"),
    (_bad_value, "state.pt config: train.total_steps: expected an integer"),
    (_config_not_a_mapping, "state.pt: its `config` is not a recipe (got str)"),
    (_finetune, "is a fine-tuning checkpoint"),
])
def test_a_damaged_recipe_is_the_same_line_everywhere(tmp_path, capsys, damage, expected):
    run = tmp_path / "run"
    damage(run)
    lines = error_lines(run, tmp_path, capsys)
    assert lines["export"] == lines["analyze"] == lines["eval"], lines
    assert expected in lines["eval"] and str(run / "checkpoints" / "step_0000007") in lines["eval"]


def test_no_recipe_is_the_same_line_and_eval_still_opens_it_with_model(tmp_path, capsys):
    run = tmp_path / "run"
    write_checkpoint(run)  # weights, no recipe anywhere
    lines = error_lines(run, tmp_path, capsys)
    assert "the checkpoint holds no recipe (no config.yaml beside state.pt, no `config` inside it)" in lines["export"]
    assert lines["export"] == lines["analyze"]
    assert lines["eval"] == lines["export"] + " (or pass --model NAME to read its backbone without one)"
    source = resolve_backbone(str(run), model="vit_nano_patch4")  # the architecture given: the weights load
    assert source.model_name == "vit_nano_patch4" and source.train_seed is None
    source.build(img_size=32)


def test_a_run_whose_latest_is_broken_names_its_intact_checkpoints_everywhere(tmp_path, capsys):
    run = tmp_path / "run"
    write_checkpoint(run, config=recipe().to_dict())
    (run / "checkpoints" / "latest").write_text("step_0000099\n")
    lines = error_lines(run, tmp_path, capsys)
    tails = {name: line.split(f" {run}: ", 1)[1] for name, line in lines.items()}
    assert tails["export"] == tails["analyze"] == tails["eval"], lines
    assert "is missing or names no intact checkpoint; intact checkpoints: step_0000007" in tails["eval"]
