"""Bad numbers in recipes fail with one line at start-up: nan or inf rates, out-of-range seeds, an output
directory that is a file. (Before, `optim.lr=.nan` trained nine steps of NaN losses, and a file as output_dir
failed at the first checkpoint with a traceback.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_vit.config import load_config, load_eval_recipe, load_finetune_config
from ssl_vit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "pretrain" / "smoke.yaml"


@pytest.mark.parametrize("override,message", [
    ("optim.lr=.nan", r"command line: optim.lr: expected a finite number, got nan"),
    ("optim.lr=.inf", r"command line: optim.lr: expected a finite number, got inf"),
    ("optim.weight_decay=1e999", r"optim.weight_decay: expected a finite number, got inf"),
    ("optim.betas=[0.9, .nan]", r"optim.betas\[1\]: expected a finite number, got nan"),
    ("data.max_bad_fraction=-.inf", r"data.max_bad_fraction: expected a finite number, got -inf"),
    ("train.seed=-1", r"command line: train.seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("train.seed=4294967296", r"train.seed must be an integer in \[0, 2\*\*32\), got 4294967296"),
])
def test_bad_numbers_fail_at_load_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(SMOKE, [override])
    assert "\n" not in str(info.value)


def test_an_output_dir_that_is_a_file_or_under_one_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir '.*file' is a file; choose a folder"):
        load_config(SMOKE, [f"output_dir={tmp_path / 'file'}"])
    with pytest.raises(ConfigError, match=r"output_dir '.*file/run' lies under .*file, which is a file"):
        load_config(SMOKE, [f"output_dir={tmp_path / 'file' / 'run'}"])
    assert load_config(SMOKE, [f"output_dir={tmp_path / 'new' / 'run'}"]).output_dir.endswith("run")


def test_fine_tuning_and_eval_recipes_share_the_checks(tmp_path: Path) -> None:
    recipe = REPO / "recipes" / "finetune" / "vit_b16_paper.yaml"
    with pytest.raises(ConfigError, match=r"optim.lr: expected a finite number, got nan"):
        load_finetune_config(recipe, ["optim.lr=.nan"])
    with pytest.raises(ConfigError, match=r"train.seed must be an integer in \[0, 2\*\*32\)"):
        load_finetune_config(recipe, ["train.seed=-5"])
    bad = tmp_path / "eval.yaml"
    bad.write_text("seed: -3\n")
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32\), got -3"):
        load_eval_recipe(bad)


def test_data_max_pixels_and_shard_errors_reach_the_train_stream(tmp_path: Path) -> None:
    from shardgen import unique_samples, write_shards

    from ssl_vit.data import resolve_spec
    from ssl_vit.train.wiring import train_stream_factory

    write_shards(tmp_path, unique_samples(4), shard_size=4)
    cfg = load_config(SMOKE, [f"data.train={tmp_path}", "data.max_pixels=1000", "data.shard_errors=skip"])
    stream = train_stream_factory(resolve_spec(str(tmp_path), "train"), cfg.data, seed=0, rank=0, world_size=1,
                                  global_batch=cfg.data.batch_size)(0)
    options = stream._loader.dataset.o
    assert (options.max_pixels, options.shard_errors) == (1000, "skip")
    with pytest.raises(ConfigError, match=r"data.max_pixels must be a positive number of pixels or null, got 0"):
        load_config(SMOKE, ["data.max_pixels=0"])
    with pytest.raises(ConfigError, match=r"data.shard_errors: expected one of stop, skip, got 'sometimes'"):
        load_config(SMOKE, ["data.shard_errors=sometimes"])
