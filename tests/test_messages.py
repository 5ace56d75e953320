"""The messages of #27: a data directory that is not there says so, did-you-mean knows abbreviations, a user error
under `ssl-vit launch` is one line and exit 2, and `--version` / `--help` import no torch."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from trainer_fixtures import REPO, SMOKE, cli_env, free_port

from ssl_vit.cli import COMMANDS, build_parser, main, parsers_below
from ssl_vit.config import PretrainConfig
from ssl_vit.config.loader import closest_key, schema_keys
from ssl_vit.data import resolve_spec
from ssl_vit.errors import DataError

BIN = __import__("pathlib").Path(sys.executable).parent


@pytest.mark.parametrize("spec", ["{d}/nope", "{d}/nope:train", "{d}/nope/"])
def test_a_data_directory_that_does_not_exist_is_named_as_one(tmp_path, spec):
    with pytest.raises(DataError, match=rf"^data directory {tmp_path}/nope/? does not exist"):
        resolve_spec(spec.format(d=tmp_path), "train")


def test_a_missing_shard_file_is_still_a_missing_shard(tmp_path):
    with pytest.raises(DataError, match=r"1 of 1 shards .* do not exist"):
        resolve_spec(str(tmp_path / "x-000000.tar"))


def test_pretrain_on_a_missing_directory_says_it_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["pretrain", "--config", str(SMOKE), "data.train=nope", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines() == [err] and "data directory nope does not exist" in err


KEYS = schema_keys(PretrainConfig)


@pytest.mark.parametrize(("typed", "meant"), [
    ("optim.learning_rate", "optim.lr"),  # initials of the typed words
    ("optim.wd", "optim.weight_decay"),  # the typed name is the initials
    ("train.totalsteps", "train.total_steps"),
    ("data.batchsize", "data.batch_size"),
    ("model.nme", "model.name"),
    ("optim.lr_min", "optim.min_lr"),  # the same words in another order
    ("optim.warm", "optim.warmup_steps"),  # the only key that begins so
    ("optm.lr", "optim.lr"),  # the section is the typo
])
def test_did_you_mean_finds_what_was_meant(typed, meant):
    assert closest_key(typed, KEYS) == meant


@pytest.mark.parametrize("typed", ["optim.xyzzy", "bad.key", "data.remote"])
def test_did_you_mean_suggests_nothing_for_a_key_close_to_none(typed):
    assert closest_key(typed, KEYS) is None


def test_the_cli_suggests_lr_for_learning_rate(capsys):
    assert main(["pretrain", "--config", str(SMOKE), "optim.learning_rate=1e-3", "--print-config"]) == 2
    assert "(did you mean 'optim.lr'?)" in capsys.readouterr().err


# What answering --help or --version may not import: seconds of start-up (torch alone takes 1-2 s) for a question
# that needs none of it. yaml (the recipe schema's) is allowed.
HEAVY = ("torch", "accelerate", "numpy", "PIL", "transformers", "safetensors", "matplotlib", "sklearn", "scipy")


def imports_torch(code: str) -> tuple[bool, str]:
    torch, out, _ = heavy_imports(code)
    return "torch" in torch, out


def heavy_imports(code: str) -> tuple[list[str], str, float]:
    """(the HEAVY modules `code` imported, its stdout, the wall seconds of the whole process), in a fresh Python."""
    probe = f"import sys\n{code}\nprint('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    seconds = time.perf_counter() - start
    heavy = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("HEAVY")]
    assert heavy, done.stderr[-2000:]
    return heavy[0], done.stdout, seconds


CALL = "from ssl_vit.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def every_command_path() -> list[tuple[str, ...]]:
    """Every command and sub-command the CLI has, as the words that name it: [], [pretrain], [eval, knn], …, read
    from the parsers themselves, so a new command or protocol is covered without editing this test."""
    return sorted({tuple(p.prog.split()[1:]) for command in COMMANDS for p in parsers_below(build_parser(command))})


PATHS = every_command_path()


def test_every_command_and_protocol_is_checked():
    assert {"pretrain", "eval", "study", "analyze", "demo", "estimate-memory", "launch", "export", "recipes"} <= {
        p[0] for p in PATHS if p}
    assert {("eval", name) for name in ("fewshot", "linear", "knn", "finetune", "all", "compare")} <= set(PATHS)


@pytest.mark.parametrize("flag", ["--help", "--version"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "ssl-vit")
def test_help_and_version_of_every_command_import_no_torch(path, flag):
    """`ssl-vit [COMMAND [SUB]] --help|--version` prints at once: no torch, nothing heavy; under 3 s for the whole
    Python process (about 0.2 s when the machine is quiet; the bound is for a loaded machine's noise)."""
    heavy, out, seconds = heavy_imports(CALL.format(argv=[*path, flag]))
    assert heavy == []
    assert out.startswith(f"usage: {' '.join(['ssl-vit', *path])} " if flag == "--help" else "ssl-vit 0.1.0 (torch ")
    assert seconds < 3


def test_a_usage_error_imports_no_torch_either():
    heavy, _, _ = heavy_imports(CALL.format(argv=["eval", "knn", "--nope"]))
    assert heavy == []


def test_the_eval_help_table_is_the_evaluators_own():
    """`ssl-vit eval PROTOCOL --help` reads the evaluators' descriptions and defaults from a table (importing them
    would import torch); this holds that table equal to what `describe` reads from their code."""
    from ssl_vit.commands.eval_protocols import EVALUATORS
    from ssl_vit.eval import names
    from ssl_vit.eval.registry import describe

    code = {name: describe(name) for name in names()}
    assert EVALUATORS == code, f"ssl_vit/commands/eval_protocols.py is stale: set EVALUATORS = {code!r}"


def test_the_shards_tool_help_imports_no_torch():
    torch, out = imports_torch("from data_tools.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not torch and out.startswith("usage:")


def test_the_public_api_is_still_there():
    import ssl_vit

    assert ssl_vit.create_model.__name__ == "create_model" and "VisionTransformer" in dir(ssl_vit)


@pytest.mark.slow
def test_a_user_error_under_launch_is_one_line_and_exit_2(tmp_path):
    command = [str(BIN / "ssl-vit"), "launch", str(BIN / "accelerate"), "launch", "--config_file",
               str(REPO / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
               "-m", "ssl_vit", "pretrain", "--config", str(SMOKE), f"data.train={tmp_path}", "bad.key=1"]
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == ["error: command line: unknown key 'bad.key'; see --print-config for "
                                                "the valid keys"]
