"""Shards and command lines for the trainer tests: tiny, learnable images and the smoke recipe's overrides."""
from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from run_records import last_logged_step
from shardgen import Sample, encode, write_shards

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "pretrain" / "smoke.yaml"
LAUNCH_CONFIG = REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"  # 2 CPU processes of gloo DDP


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_colour_image(rng: random.Random, size: int) -> Image.Image:
    """Left and right halves in two random colours: a masked patch's colour is visible in its neighbours."""
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    img.paste(tuple(rng.randrange(256) for _ in range(3)), (size // 2, 0, size, size))
    return img


def write_pretrain_shards(out: Path, num_samples: int = 48, shard_size: int = 16, size: int = 36, seed: int = 0) -> Path:
    """`out/train-00000{0..}.tar` + `_info.json`: `num_samples` two-colour JPEGs; returns `out`."""
    rng = random.Random(seed)
    samples = [Sample(f"img{i:05d}", encode(two_colour_image(rng, size)), -1, "jpg", (size, size)) for i in range(num_samples)]
    write_shards(out, samples, split="train", shard_size=shard_size)
    return out


def smoke_overrides(data: Path, run_dir: Path, **extra: object) -> list[str]:
    """Overrides of recipes/pretrain/smoke.yaml for a run on `data` into `run_dir`."""
    values = {"data.train": str(data), "output_dir": str(run_dir), **extra}
    return [f"{key}={value}" for key, value in values.items()]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for subprocess runs: one thread per process, the repository importable first. What was on
    PYTHONPATH stays after it: on the GPU machine the wheels it lacks are installed there (`pip --target`)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path,
               TOKENIZERS_PARALLELISM="false", ACCELERATE_DISABLE_RICH="1")
    env.update(extra)
    return env


def pretrain_command(overrides: list[str], *extra_args: str) -> list[str]:
    return [sys.executable, "-m", "ssl_vit", "pretrain", "--config", str(SMOKE), *overrides, *extra_args]


def run_pretrain(overrides: list[str], *extra_args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_command(overrides, *extra_args), cwd=REPO, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def start_and_wait(command: list[str], metrics: Path, until_step: int, timeout: float = 90) -> subprocess.Popen:
    """Start `command` (a training run) and return its process once `metrics` logs `until_step`."""
    proc = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while last_logged_step(metrics) < until_step:
        assert proc.poll() is None, f"the run ended before step {until_step}:\n{proc.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    return proc


def rank_error_lines(stderr: str) -> list[str]:
    """Each rank's `error: …` line; two ranks writing at once can share a terminal line (or a progress bar's)."""
    return [m.strip() for m in re.findall(r"error: .*?(?=error: |[\r\n]|$)", stderr)]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative name → sha256 of its bytes; folders as 'dir', links as '-> target', not
    followed): equal iff nothing changed."""
    import hashlib

    def digest(p: Path) -> str:
        if p.is_symlink():
            return f"-> {os.readlink(p)}"
        return "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))}


def sigterm_at_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process as the in-process trainer starts step `step` (what a scheduler does); the trainer's
    handler takes it and the run checkpoints that step and returns. `monkeypatch.undo()` (or the test's end) restores it."""
    import signal

    from ssl_vit.train import trainer as trainer_module

    original = trainer_module.Trainer._step

    def signalled(self, number, *args, **kwargs):
        if number == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, number, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_step", signalled)


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run for a test to change (`tmp_path/run`); links stay links, as a user's would."""
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))
