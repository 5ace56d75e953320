"""A full disk at every write a run makes — starting, config.yaml, metrics, checkpoint, export, feature cache —
is one line naming the file and the full file system. The disk is a real 4 MiB tmpfs (mounting needs root;
elsewhere these tests skip), filled at the moment each write happens."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from ssl_vit.errors import StorageError
from ssl_vit.eval.cache import save_features
from ssl_vit.eval.features import Features
from ssl_vit.files import atomic_write, write_error
from ssl_vit.train import checkpoint as ckpt
from ssl_vit.train import run_dir as run_dir_module
from ssl_vit.train import session as session_module
from ssl_vit.train.metrics import MetricsLog

RUN = {"train.total_steps": 4, "train.checkpoint_every": 2, "train.log_every": 1, "optim.warmup_steps": 1}


class SmallDisk:
    """A tmpfs mounted at `root`; `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (65536, 4096, 1):  # unbuffered: every byte that fits is written, down to the last one
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


@pytest.fixture(scope="module")
def shards(pretrain_shards_32: Path) -> Path:
    return pretrain_shards_32


def one_line(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def pretrain(pretrain):
    """The shared in-process runner with this module's short run as the default."""
    return lambda shards, run_dir, *args, **overrides: pretrain(shards, run_dir, *args, **{**RUN, **overrides})


def fill_before(disk: SmallDisk, function):
    def filled(*args, **kwargs):
        disk.fill()
        return function(*args, **kwargs)

    return filled


# ------------------------------------------------------------------------------------------------ pretraining
def test_full_at_start_is_one_line_and_leaves_no_directory_behind(disk, shards, capsys, pretrain):
    disk.fill()
    run = disk.root / "run"
    line = one_line(capsys, pretrain(shards, run))
    assert f"no space left on {disk.root} while writing run lock {run / 'run.lock'}" in line
    assert not run.exists()


def test_full_when_writing_config_yaml(disk, shards, capsys, monkeypatch, pretrain):
    monkeypatch.setattr(session_module, "begin", fill_before(disk, run_dir_module.begin))
    run = disk.root / "run"
    line = one_line(capsys, pretrain(shards, run))
    assert f"no space left on {disk.root} while writing {run / 'config.yaml'}" in line
    assert not (run / "run.lock").exists()  # the lock is released on the way out


def test_full_when_writing_metrics(disk, shards, capsys, monkeypatch, pretrain):
    """Appends fit into the log's last page for a while; the error comes when a line needs a new one."""
    real = MetricsLog.write

    def write(self, step, window, lr, *args):
        if step == 3:
            disk.fill()
        return real(self, step, window, lr, *args)

    monkeypatch.setattr(MetricsLog, "write", write)
    run = disk.root / "run"
    line = one_line(capsys, pretrain(shards, run, **{"train.total_steps": 60, "train.checkpoint_every": 60}))
    assert f"no space left on {disk.root} while writing {run / 'metrics.jsonl'}" in line


def test_full_when_writing_a_checkpoint_keeps_latest_and_the_resume_continues(disk, shards, capsys, monkeypatch, pretrain):
    real = ckpt.save_checkpoint

    def save(root, step, **kwargs):
        if step == 4:
            disk.fill()
        return real(root, step, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    run = disk.root / "run"
    line = one_line(capsys, pretrain(shards, run))
    assert f"could not write checkpoint {run / 'checkpoints' / 'step_0000004'}: no space left on {disk.root}" in line
    assert "`latest` still names" in line and "step_0000002" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    monkeypatch.undo()
    disk.free()
    assert pretrain(shards, run, "--resume", "auto") == 0
    assert "resumed from" in capsys.readouterr().out


def test_torch_writer_on_a_full_disk_says_no_space_not_unexpected_pos(disk):
    """torch.save given a path writes through its C++ writer, whose ENOSPC reads "unexpected pos …"."""
    disk.fill()
    target = disk.root / "x.pt"
    with pytest.raises(RuntimeError) as raw:
        torch.save({"w": torch.zeros(100_000)}, str(target))
    target.unlink()  # torch's writer leaves its partial file behind
    mapped = write_error(target, raw.value)
    assert mapped is not None and str(mapped).startswith(f"no space left on {disk.root} while writing {target}")
    with pytest.raises(StorageError, match=f"no space left on {disk.root} while writing {target}"):
        atomic_write(target, lambda f: torch.save({"w": torch.zeros(100_000)}, f))
    assert sorted(os.listdir(disk.root)) == ["filler"]  # no temporary file left


# ------------------------------------------------------------------------------------------------ export, cache
def test_full_when_exporting(disk, shards, tmp_path, capsys, pretrain, run_cli):
    run = tmp_path / "run"
    assert pretrain(shards, run) == 0
    capsys.readouterr()
    disk.fill()
    out = disk.root / "vit.safetensors"
    line = one_line(capsys, run_cli("export", str(run), str(out)))
    assert f"no space left on {disk.root} while writing {out}" in line
    assert not out.exists()


def test_full_when_caching_features(disk):
    features = Features(torch.randn(2000, 384), torch.zeros(2000, dtype=torch.long), [f"k{i}" for i in range(2000)])
    disk.fill()
    path = disk.root / "cache" / "features-abc.pt"
    with pytest.raises(StorageError, match=f"no space left on {disk.root} while writing {path}"):
        save_features(path, features, {})
    assert list(path.parent.iterdir()) == []
