"""Bad input reaches the user as one line, `error: …`, exit status 2, no traceback (unless --debug)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer_fixtures import REPO, SMOKE, cli_env, write_pretrain_shards

from ssl_vit import cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_pretrain_shards(tmp_path_factory.mktemp("shards"), num_samples=16, shard_size=16)


def test_invalid_yaml_from_a_real_process(tmp_path: Path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model:\n  name: [vit_nano_patch4\n")
    proc = subprocess.run([sys.executable, "-m", "ssl_vit", "pretrain", "--config", str(recipe)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {recipe}: not valid YAML")


@pytest.mark.parametrize("overrides, message", [
    (["train.global_batch=16", "data.batch_size=6"],
     "train.global_batch 16 is not a multiple of data.batch_size 6 × 1 processes = 6; set data.batch_size to 4 or 8, "
     "or train.global_batch to 12 or 18"),
    (["trian.total_steps=5"], "unknown key 'trian.total_steps' (did you mean 'train.total_steps'?)"),
    (["train.log_every=often"], "train.log_every: expected an integer, got 'often' (str)"),
    (["objective.kwargs.target=colour"], "unknown MPP target 'colour'"),
    (["model.name=vit_nano_patch5"], "model.name: unknown model 'vit_nano_patch5' (did you mean 'vit_nano_patch4'?)"),
    (["train.log_with=[tensorbored]"], "train.log_with: unknown tracker 'tensorbored'"),
])
def test_bad_recipes_fail_with_one_clear_line(shards: Path, tmp_path: Path, ssl_vit, overrides, message):
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={shards}", f"output_dir={tmp_path}/run", *overrides)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_missing_data_and_checkpoints_are_user_errors(shards: Path, tmp_path: Path, ssl_vit):
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE))
    assert rc == 2 and "data.train is not set; pass data.train=" in err
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={tmp_path}/absent")
    assert rc == 2 and err.startswith("error: ") and str(tmp_path / "absent") in err
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={shards}", f"output_dir={tmp_path}/run",
                      "--resume", str(tmp_path / "no_such_checkpoint"))
    assert rc == 2 and f"--resume {tmp_path / 'no_such_checkpoint'}: no checkpoint there" in err


def test_a_fresh_run_refuses_to_overwrite_an_existing_one(shards: Path, tmp_path: Path, ssl_vit):
    args = ("pretrain", "--config", str(SMOKE), f"data.train={shards}", f"output_dir={tmp_path}/run",
            "train.total_steps=2", "optim.warmup_steps=1")
    assert ssl_vit(*args)[0] == 0
    rc, err = ssl_vit(*args)
    assert rc == 2 and err == (f"error: {tmp_path / 'run'} already holds a run (latest checkpoint step_0000002); "
                               "pass --resume auto to continue it, --overwrite to delete it and start afresh, or "
                               "choose another output_dir\n")


def test_debug_shows_the_traceback(tmp_path: Path, ssl_vit):
    rc, err = ssl_vit("--debug", "pretrain", "--config", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing.yaml'}: recipe not found (no such file")
    rc, err = ssl_vit("pretrain", "--config", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "Traceback" not in err


def test_print_config_shows_the_resolved_recipe(capsys):
    assert cli.main(["pretrain", "--config", str(SMOKE), "optim.lr=0.01", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "name: vit_nano_patch4" in out and "lr: 0.01" in out and "global_batch: 16" in out


def test_a_command_whose_module_is_missing_does_not_break_the_others(monkeypatch, ssl_vit):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("ssl_vit.commands.no_such_module", "a command not installed"))
    rc, err = ssl_vit("ghost")
    assert rc == 2 and "the 'ghost' command is not available in this installation" in err
    with pytest.raises(SystemExit) as exc:  # argparse: an unknown command is a usage error, status 2
        cli.main(["pretrian"])
    assert exc.value.code == 2
