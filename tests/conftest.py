"""Fixtures shared by the test modules.

The helper modules next to this file (`shardgen`, `imagegen`, `trainer_fixtures`, `eval_fixtures`,
`tensorboard_reader`) are importable by name because pyproject.toml puts `tests/` on pytest's `pythonpath`;
what needs pytest's machinery (a runner with Accelerate's process-wide state reset around it, shards written
once per module or session) lives here.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from accelerate.state import AcceleratorState, GradientState
from trainer_fixtures import REPO, SMOKE, smoke_overrides, write_pretrain_shards

from ssl_vit import cli


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The member indexes and remote-shard copies (`SSL_VIT_CACHE_DIR`) of the whole session in its own folder,
    inherited by the processes tests start: never the user's ~/.cache, never another session's."""
    folder = tmp_path_factory.mktemp("ssl_vit_cache")
    before = os.environ.get("SSL_VIT_CACHE_DIR")
    os.environ["SSL_VIT_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SSL_VIT_CACHE_DIR", None)
    else:
        os.environ["SSL_VIT_CACHE_DIR"] = before


@contextlib.contextmanager
def fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps its state in process-wide singletons: reset them before and after an in-process run, so
    one run's world size, mixed precision or gradient accumulation never leaks into the next."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., int]:
    """`ssl-vit ARGV` in this process with a fresh Accelerate state; returns the exit status."""

    def run(*argv: str) -> int:
        with fresh_accelerate_state():
            return cli.main(list(argv))

    return run


@pytest.fixture
def ssl_vit(run_cli, capsys) -> Callable[..., tuple[int, str]]:
    """`ssl-vit ARGV` in this process with a fresh Accelerate state; returns (exit status, what it wrote to stderr)."""

    def run(*argv: str) -> tuple[int, str]:
        rc = run_cli(*argv)
        return rc, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def pretrain(run_cli) -> Callable[..., int]:
    """`ssl-vit pretrain --config smoke.yaml` on DATA into RUN_DIR with `key=value` overrides, in this process."""

    def run(data: Path, run_dir: Path, *args: str, **overrides: object) -> int:
        return run_cli("pretrain", "--config", str(SMOKE), *smoke_overrides(data, run_dir, **overrides), *args)

    return run


@pytest.fixture(scope="session")
def pretrain_shards(tmp_path_factory) -> Path:
    """48 two-colour JPEGs in three shards of 16, written once per session; read-only for the tests."""
    return write_pretrain_shards(tmp_path_factory.mktemp("pretrain_shards"), num_samples=48, shard_size=16)


@pytest.fixture(scope="session")
def pretrain_shards_32(tmp_path_factory) -> Path:
    """32 two-colour JPEGs in two shards of 16, written once per session (tests copy before they damage them)."""
    return write_pretrain_shards(tmp_path_factory.mktemp("pretrain_shards_32"), num_samples=32, shard_size=16)


@pytest.fixture(scope="session")
def bench_module() -> Callable[[str], ModuleType]:
    """`bench/NAME.py` loaded from its file, once per name: the benchmarks are scripts, not a package."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def bench_common(bench_module) -> ModuleType:
    """bench/common.py: the benchmarks' shared timing and record helpers."""
    return bench_module("common")
