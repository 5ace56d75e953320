"""`base:` means the file it names (issue #24): a recipe whose local base is missing fails naming that file, even
when a shipped recipe has the name — it meant its own, and the shipped one would train something else without a
word. The shipped recipe is used when the recipe says so (`base: shipped:NAME`), which is what `ssl-vit recipes
show` writes into a copy. A local folder named like a recipe never hides the shipped one."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_vit import cli
from ssl_vit.config import load_config
from ssl_vit.errors import ConfigError
from ssl_vit.recipe_files import recipe_names, resolve_recipe

B16 = "pretrain/vit_b16_mean_color"


def message(*args) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(*args)
    return str(err.value)


def test_a_missing_local_base_fails_naming_it_even_when_a_shipped_recipe_has_its_name(tmp_path: Path):
    """A user's folder: my_b16.yaml builds on their own vit_b16_mean_color.yaml, which was renamed away."""
    folder = tmp_path / "pretrain"  # the shipped folder's name too: once, that made the lookup find the shipped one
    folder.mkdir()
    (folder / "vit_b16_mean_color.yaml").write_text("optim:\n  lr: 0.5\ntrain:\n  total_steps: 100000\n")
    mine = folder / "my_b16.yaml"
    mine.write_text("base: vit_b16_mean_color.yaml\ntrain:\n  seed: 3\n")
    assert load_config(mine, ["data.train=x"]).optim.lr == 0.5  # its own base, which is there
    (folder / "vit_b16_mean_color.yaml").rename(folder / "old_b16.yaml")
    assert message(mine, ["data.train=x"]) == (
        f"{folder / 'vit_b16_mean_color.yaml'}: recipe not found (included from {mine}); to build on the shipped "
        f"recipe of that name, write base: shipped:{B16}")


def test_shipped_base_names_the_shipped_recipe_whatever_lies_beside(tmp_path: Path):
    (tmp_path / "vit_b16_mean_color.yaml").write_text("optim:\n  lr: 0.5\n")  # a local file of the same name
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: shipped:{B16}\ntrain:\n  seed: 3\n")
    cfg, shipped = load_config(mine, ["data.train=x"]), load_config(recipe_names()[B16], ["data.train=x"])
    assert cfg.optim.lr == shipped.optim.lr != 0.5 and cfg.train.seed == 3
    assert cfg.model == shipped.model and cfg.train.global_batch == shipped.train.global_batch
    mine.write_text("base: shipped:vit_b16_mean_colour\n")
    assert message(mine).startswith(f"{mine}: base: shipped:vit_b16_mean_colour: vit_b16_mean_colour: recipe not found")
    assert f"closest: {B16}" in message(mine)


def test_a_base_that_is_a_folder_is_named_as_one(tmp_path: Path):
    (tmp_path / "vit_b16_mean_color.yaml").mkdir()
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: vit_b16_mean_color.yaml\n")
    assert message(mine).startswith(f"{tmp_path / 'vit_b16_mean_color.yaml'}: is a directory, not a recipe "
                                    f"(included from {mine}); to build on the shipped recipe of that name")


@pytest.mark.parametrize("name", sorted(n for n in recipe_names() if n.startswith("pretrain/")))
def test_every_shown_pretraining_recipe_loads_from_anywhere_as_the_shipped_one(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["recipes", "show", name]) == 0
    shown = capsys.readouterr()
    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    copy.write_text(shown.out)
    assert load_config(copy, ["data.train=x"]) == load_config(recipe_names()[name], ["data.train=x"])
    based = "base:" in recipe_names()[name].read_text()
    assert ("note: base: " in shown.err) == based and (f"base: shipped:{B16}" in shown.out) == based


def test_a_local_folder_named_like_a_recipe_never_hides_it(tmp_path: Path, monkeypatch, capsys):
    """A run directory called `smoke/` (or `pretrain/smoke/`) in the working directory: `--config smoke` is the
    shipped recipe still; `shipped:NAME` is the shipped one even beside a file of that name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    (tmp_path / "pretrain" / "smoke").mkdir(parents=True)
    shipped = recipe_names()["pretrain/smoke"]
    assert resolve_recipe("smoke", "pretrain") == shipped
    assert resolve_recipe("pretrain/smoke") == shipped
    assert cli.main(["pretrain", "--config", "smoke", "--print-config"]) == 0
    assert "vit_nano_patch4" in capsys.readouterr().out
    (tmp_path / "mine").write_text("model: {name: vit_tiny_patch16}\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "smoke").write_text("a file wins over a name\n")
    assert resolve_recipe("eval/smoke") == Path("eval/smoke")
    assert resolve_recipe("shipped:eval/smoke") == recipe_names()["eval/smoke"]
    with pytest.raises(ConfigError, match="mine: is a directory"):
        (tmp_path / "mine").unlink()
        (tmp_path / "mine").mkdir()
        resolve_recipe("mine")
