"""Shipped recipes by name: `ssl-vit recipes` lists/shows them, and `--config NAME` finds them from anywhere."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_vit import __version__, cli
from ssl_vit.config import load_config
from ssl_vit.errors import ConfigError
from ssl_vit.recipe_files import recipe_names, recipes_dir, resolve_recipe, summary

REPO = Path(__file__).resolve().parents[1]


def test_every_file_of_the_recipes_folder_has_a_name():
    names = recipe_names()
    on_disk = sorted(p.relative_to(REPO / "recipes").with_suffix("").as_posix()
                     for p in (REPO / "recipes").rglob("*") if p.is_file() and p.suffix != ".md")
    assert recipes_dir() == REPO / "recipes"  # a checkout reads its own folder: one copy
    assert sorted(names) == on_disk
    assert {"pretrain/smoke", "accelerate/gpu_8", "demo/digits", "eval/default", "finetune/vit_b16_paper"} <= set(names)


def test_a_new_subfolder_is_listed_and_a_shebang_is_not_its_summary(tmp_path, monkeypatch):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "pretrain_2x8.sbatch").write_text("#!/bin/bash\n#SBATCH --nodes=2\n# Two nodes under SLURM.\n")
    (tmp_path / "README.md").write_text("# not a recipe\n")
    monkeypatch.setattr("ssl_vit.recipe_files.recipes_dir", lambda: tmp_path)
    assert list(recipe_names()) == ["slurm/pretrain_2x8"]
    assert summary(recipe_names()["slurm/pretrain_2x8"]) == "Two nodes under SLURM."


@pytest.mark.parametrize("text, kind, expected", [
    ("pretrain/smoke", None, "pretrain/smoke.yaml"),
    ("vit_b16_mean_color", None, "pretrain/vit_b16_mean_color.yaml"),
    ("smoke", "pretrain", "pretrain/smoke.yaml"),
    ("smoke", "finetune", "finetune/smoke.yaml"),
    ("recipes/eval/default.yaml", None, "eval/default.yaml"),  # the docs' spelling, from another directory
    ("accelerate/gpu_8.yaml", None, "accelerate/gpu_8.yaml"),
])
def test_names_resolve_to_the_shipped_file(text, kind, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe(text, kind) == REPO / "recipes" / expected


def test_a_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "smoke").write_text("model: {name: vit_nano_patch4}\n")
    assert resolve_recipe("pretrain/smoke", "pretrain") == Path("pretrain/smoke")


def test_unknown_and_ambiguous_names_fail_with_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_recipe("vit_b16_mean_colour", "pretrain")
    assert str(err.value).startswith("vit_b16_mean_colour: recipe not found (no such file, nor a shipped recipe of "
                                     "that name; closest: pretrain/vit_b16_mean_color,")
    with pytest.raises(ConfigError, match="recipe 'smoke' is ambiguous: eval/smoke, finetune/smoke, pretrain/smoke"):
        resolve_recipe("smoke")
    with pytest.raises(ConfigError, match="is a directory"):
        resolve_recipe(str(tmp_path))


def test_pretrain_takes_a_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--config", "pretrain/smoke", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "vit_nano_patch4"
    assert cli.main(["pretrain", "--config", "vit_b16_mean_colour", "--print-config"]) == 2
    assert "closest: pretrain/vit_b16_mean_color" in capsys.readouterr().err


def test_a_copy_of_a_shipped_recipe_finds_its_base_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["recipes", "show", "pretrain/vit_s16_mean_color"]) == 0
    copy = tmp_path / "my_vit_s16.yaml"
    shown = capsys.readouterr()
    copy.write_text(shown.out)
    assert "base: shipped:pretrain/vit_b16_mean_color\n" in copy.read_text()  # the shipped one, from anywhere
    assert "note: base: vit_b16_mean_color.yaml is written as base: shipped:pretrain/vit_b16_mean_color" in shown.err
    cfg = load_config(copy, ["data.train=x"])
    assert cfg.model.name == "vit_small_patch16" and cfg.optim.lr == 2e-4 and cfg.train.global_batch == 4096
    copy.write_text("base: no_such_base.yaml\n")
    with pytest.raises(ConfigError, match=r"no_such_base.yaml: recipe not found \(included from .*my_vit_s16.yaml"):
        load_config(copy)


def test_recipes_lists_shows_and_locates(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(recipe_names())
    line = next(x for x in out if x.startswith("pretrain/smoke "))
    assert line.split(None, 1)[1] == "Smoke run: a nano ViT learns masked patch prediction on CPU in about a minute."

    assert cli.main(["recipes", "list", "accelerate"]) == 0
    assert [x.split()[0] for x in capsys.readouterr().out.splitlines()] == [
        n for n in recipe_names() if n.startswith("accelerate/")]

    assert cli.main(["recipes", "show", "accelerate/gpu_8"]) == 0
    assert capsys.readouterr().out == (REPO / "recipes/accelerate/gpu_8.yaml").read_text()
    assert cli.main(["recipes", "path", "gpu_8"]) == 0
    assert capsys.readouterr().out == f"{REPO / 'recipes/accelerate/gpu_8.yaml'}\n"

    assert cli.main(["recipes", "show", "gpu_9"]) == 2
    assert "closest: accelerate/gpu_8" in capsys.readouterr().err
    assert cli.main(["recipes", "list", "slurn"]) == 2
    folders = sorted({n.split("/")[0] for n in recipe_names()})
    assert f"no recipes in folder 'slurn'; folders: {', '.join(folders)}" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"ssl-vit {__version__} (torch ")


@pytest.mark.parametrize("protocol, what, keys", [
    ("fewshot", "Few-shot linear evaluation on frozen features", ["fewshot.shots [1, 5, 10, 25]", "fewshot.seeds 3"]),
    ("knn", "Weighted k-nearest-neighbour classification", ["knn.k [10, 20, 200]", "knn.temperature 0.07"]),
    ("all", "every evaluator the recipe lists", ["fewshot.shots [1, 5, 10, 25]", "knn.k [10, 20, 200]",
                                                 "linear.holdout_fraction 0.1"]),
])
def test_each_eval_protocol_says_what_it_does_and_which_keys_it_reads(protocol, what, keys, capsys):
    """The description is the protocol module's first paragraph, the keys and defaults its constructor's."""
    with pytest.raises(SystemExit):
        cli.main(["eval", protocol, "--help"])
    out = capsys.readouterr().out
    rows = {" ".join(line.split()) for line in out.splitlines()}
    assert what in " ".join(out.split())
    assert set(keys) <= rows
    assert "data.image_size as the checkpoint was trained" in rows and "data.batch_size 256" in rows


def test_pretrain_help_lists_every_recipe_key_with_type_default_and_meaning(capsys):
    """Generated from the schema: a key added to PretrainConfig appears here with its own line of meaning."""
    from ssl_vit.config import PretrainConfig, describe, schema_keys

    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    lines = capsys.readouterr().out.splitlines()
    rows = describe(PretrainConfig)
    assert [key for key, *_ in rows] == schema_keys(PretrainConfig)
    for key, type_name, _default, meaning in rows:
        entry = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}  {type_name} = "))
        wrapped = []
        for line in lines[entry + 1:]:
            if not line.startswith("      "):
                break
            wrapped.append(line.strip())
        assert " ".join(wrapped) == " ".join(meaning.split()), key
    assert len({meaning for *_, meaning in rows}) == len(rows)  # each key its own meaning, none the section's
    batch = lines.index("  data.batch_size  int = 64")
    assert lines[batch + 1].strip() == "per device, per micro-batch"
    assert "  data.crop_scale  tuple[float, float] = [0.08, 1.0]" in lines and "  train.compile  bool = false" in lines
    assert "  model.init_from  str | None = null" in lines and '  data.train  str = ""' in lines


def test_eval_finetune_help_lists_the_fine_tuning_recipe_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "finetune", "--help"])
    out = capsys.readouterr().out
    assert "Fine-tuning: the pretrained backbone plus a zero-initialised linear head" in " ".join(out.split())
    lines = out.splitlines()
    layer_decay = lines.index("  optim.layer_decay  float = 1.0")
    assert lines[layer_decay + 1].strip().startswith("< 1: block i's rate scaled by layer_decay")
    assert "  optim.name  Literal['sgd', 'adamw'] = sgd" in lines and "  holdout_fraction  float = 0.0" in lines
