"""`ssl-vit pretrain --dry-run`: the plan of a run — data, batch arithmetic, length, resume, memory — and nothing else."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_vit import cli
from ssl_vit.config import load_config
from ssl_vit.train.estimate import GIB, pretrain_step_memory
from ssl_vit.recipe_files import resolve_recipe

# 48 images in 3 shards of 16; global batch 16 → 3 steps per epoch.
PLAN = ["data.batch_size=8", "train.total_steps=200", "optim.warmup_steps=10"]


@pytest.fixture
def shards(pretrain_shards) -> Path:
    return pretrain_shards  # conftest's: 48 images in 3 shards of 16


def _dry_run(capsys, *argv: str) -> tuple[int, dict[str, str], str]:
    rc = cli.main(["pretrain", "--dry-run", *argv])
    captured = capsys.readouterr()
    rows = {}
    for line in captured.out.splitlines()[1:]:
        if not line.startswith(" "):
            label, _, text = line.partition("  ")
            rows[label.strip()] = text.strip()
    return rc, rows, captured.err


@pytest.mark.timeout(120)
def test_the_plan_states_every_number_of_the_run(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--config", "pretrain/smoke", f"data.train={shards}", f"output_dir={run_dir}", *PLAN, "--processes", "2"]
    rc, rows, err = _dry_run(capsys, *argv)
    assert rc == 0, err
    size = sum(p.stat().st_size for p in shards.glob("*.tar"))
    assert rows["recipe"].startswith(f"{resolve_recipe('pretrain/smoke')} (pretrain/smoke) + 5 overrides: data.train=")
    assert rows["data"] == f"{shards} (split train): 48 images in 3 shards (16 per shard, {size / 1e3:.2f} kB)"
    assert rows["batch"] == "8 per device × 2 processes × 1 accumulation = 16 images per step"
    assert rows["length"] == ("200 steps (train.total_steps) = 66.7 epochs of 3 steps; 3,200 images; warmup 10 steps, "
                              "checkpoint every 50")
    assert rows["run dir"] == f"{run_dir}: a new run"
    expected = pretrain_step_memory(load_config(resolve_recipe("pretrain/smoke"), PLAN))
    assert rows["memory"].startswith("vit_nano_patch4 (") and "8 × 32px per device, fp32: " in rows["memory"]
    assert f"peak {expected['peak_bytes']['total'] / GIB:.2f} GiB per device" in rows["memory"]
    assert not run_dir.exists()  # a dry run writes nothing


@pytest.mark.timeout(120)
def test_epochs_accumulation_and_an_existing_run(shards, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "step_0000050"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text("step_0000050")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as `accelerate launch` sets it: the launch's process count
    argv = ["--config", "smoke", f"data.train={shards}:train", f"output_dir={run_dir}", "data.batch_size=4",
            "train.total_steps=null", "train.epochs=2"]
    rc, rows, err = _dry_run(capsys, *argv)
    assert rc == 0, err
    assert rows["batch"] == "4 per device × 2 processes × 2 accumulation = 16 images per step"
    assert rows["length"].startswith("6 steps (train.epochs 2) = 2.0 epochs of 3 steps; 96 images")
    assert rows["run dir"] == (f"{run_dir}: the run would stop: {run_dir} already holds a run (latest checkpoint "
                               "step_0000050); pass --resume auto to continue it, --overwrite to delete it and start "
                               "afresh, or choose another output_dir")
    rc, rows, err = _dry_run(capsys, *argv, "--resume", "auto")
    assert rows["run dir"] == f"{run_dir}: resumes from {checkpoint} at step 50"


def test_a_batch_that_does_not_divide_fails_as_the_launch_would(shards, capsys):
    rc, _, err = _dry_run(capsys, "--config", "pretrain/smoke", f"data.train={shards}", "--processes", "3")
    assert rc == 2
    assert err.strip().endswith("train.global_batch 16 is not a multiple of data.batch_size 16 × 3 processes = 48; "
                                "set train.global_batch to 48")


@pytest.mark.timeout(180)
def test_a_run_another_process_is_training_in_says_so(shards, tmp_path, capsys):
    """Another process holds the run's lock (as a training run does): the plan says the run would stop and names
    it, as the run itself would; once that process is gone, the plan says its lock would be taken over."""
    import json
    import subprocess
    import sys
    from socket import gethostname

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = ("import sys\nfrom ssl_vit.train.run_lock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    argv = ["--config", "pretrain/smoke", f"data.train={shards}", f"output_dir={run_dir}", *PLAN]
    try:
        assert holder.stdout.readline() == "held\n"
        rc, rows, err = _dry_run(capsys, *argv)
        assert rc == 0, err
        assert rows["run dir"].startswith(f"{run_dir}: the run would stop: {run_dir} is in use by pid {holder.pid} "
                                          f"on {gethostname()}")
        assert "(it holds the file's lock)" in rows["run dir"]
        lock = (run_dir / "run.lock").read_bytes()
    finally:
        holder.kill()  # as kill -9: the lock file stays
        holder.wait()
    assert (run_dir / "run.lock").read_bytes() == lock  # the dry run changed nothing
    rc, rows, err = _dry_run(capsys, *argv)
    assert rows["run dir"] == (f"{run_dir}: a new run; would take over the lock of pid {holder.pid} on {gethostname()} "
                               f"(started {json.loads(lock)['started']}, command: -c {run_dir}), no longer running")
