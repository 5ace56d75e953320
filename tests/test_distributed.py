"""Two real processes (DDP over gloo on CPU) under `accelerate launch`, on 3 shards that do not split evenly
between 2 ranks: both ranks run every step, end with identical weights, and the launch exits 0 — twice, the
second time resuming the first run's 2-process checkpoint. Then one process resumes it with the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from background import Background, selected
from trainer_fixtures import LAUNCH_CONFIG, REPO, SMOKE, cli_env, free_port, smoke_overrides

# 4 per process × 2 processes × 2 accumulation = 16: exercises no_sync on the first micro-batch.
RUN = {"data.batch_size": 4, "data.num_workers": 1, "optim.warmup_steps": 2, "train.log_every": 1,
       "train.checkpoint_every": 3}


def launch_command(data: Path, run_dir: Path, steps: int, *args: str) -> list[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate), "launch", "--config_file", str(LAUNCH_CONFIG), "--main_process_port", str(free_port()),
            "-m", "ssl_vit", "pretrain", "--config", str(SMOKE),
            *smoke_overrides(data, run_dir, **RUN, **{"train.total_steps": steps}), *args]


def launch(data: Path, run_dir: Path, steps: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(data, run_dir, steps, *args), cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=240)


FP16_TEST = "test_fp16_under_ddp_keeps_both_ranks_in_step_through_overflows"


@pytest.fixture(scope="module", autouse=True)
def fp16_launch(request, pretrain_shards: Path, tmp_path_factory) -> Iterator[tuple[Path, Background] | None]:
    """The fp16 test's launch starts with the module and runs while the other test's launches import (a launch
    leaves a core idle then); the fp16 test collects it."""
    if not selected(request, FP16_TEST):
        yield None
        return
    run_dir = tmp_path_factory.mktemp("fp16_ddp") / "run"
    command = launch_command(pretrain_shards, run_dir, 6, "train.precision=fp16", f"train.fp16_loss_scale={2.0 ** 24}")
    background = Background(command, run_dir.parent / "launch")
    yield run_dir, background
    background.kill()


def rank_summaries(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.timeout(400)
def test_two_processes_stay_in_sync_exit_cleanly_and_resume(pretrain_shards: Path, tmp_path: Path, pretrain, capsys):
    data = pretrain_shards
    assert len(list(data.glob("train-*.tar"))) == 3
    run_dir = tmp_path / "run"

    first = launch(data, run_dir, 6)
    assert first.returncode == 0, first.stdout[-1500:] + first.stderr[-3000:]
    assert "4 per device × 2 process(es) × 2 accumulation = 16 images per step" in first.stdout
    a, b = rank_summaries(run_dir)
    assert a["step"] == b["step"] == 6 and a["param_sha256"] == b["param_sha256"]
    checkpoint = run_dir / "checkpoints" / "step_0000006"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.yaml", "rng_rank0.pt", "rng_rank1.pt", "state.pt"]
    rngs = [torch.load(checkpoint / f"rng_rank{r}.pt", weights_only=True)["rng"]["torch"] for r in (0, 1)]
    assert not torch.equal(*rngs)  # each rank draws its own corruptions
    assert [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == list(range(1, 7))
    ledger = torch.load(checkpoint / "state.pt", weights_only=True)["feed"]["split_keys"]  # both ranks' keys reached rank 0
    assert len(ledger["urls"]) == 3 and len(ledger["hashes"]) == len(set(ledger["samples"].tolist())) == 48

    second = launch(data, run_dir, 9, "--resume", "auto")
    assert second.returncode == 0, second.stdout[-1500:] + second.stderr[-3000:]
    assert f"resumed from {checkpoint} at step 6" in second.stdout
    a, b = rank_summaries(run_dir)
    assert a["step"] == b["step"] == 9 and a["param_sha256"] == b["param_sha256"]

    # One process continues the 2-process run from a named checkpoint: same global batch (4 × 1 × 4), another
    # data order.
    rc = pretrain(data, run_dir, "--resume", str(run_dir / "checkpoints" / "step_0000009"),
                  **{**RUN, "data.num_workers": 0, "train.total_steps": 10})
    assert rc == 0
    out = capsys.readouterr().out
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000009'} at step 9" in out
    assert "resuming a 2-process checkpoint with 1 processes: the global batch stays 16 (accumulation 4)" in out
    state = torch.load(run_dir / "checkpoints" / "step_0000010" / "state.pt", weights_only=True)
    assert (state["world_size"], state["accumulation"], state["global_batch"]) == (1, 4, 16)


@pytest.mark.timeout(300)
def test_fp16_under_ddp_keeps_both_ranks_in_step_through_overflows(fp16_launch):
    """fp16 with 2 processes and gradient accumulation, from a loss scale (2^24) that overflows: the gradients are
    all-reduced before they are unscaled, so both ranks see the same overflow, skip the same steps, halve the same
    scale, and end with identical weights."""
    run_dir, background = fp16_launch
    done = background.finish(timeout=240)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    a, b = rank_summaries(run_dir)
    assert a["step"] == b["step"] == 6 and a["param_sha256"] == b["param_sha256"]
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["overflow_skipped"] for r in log[:3]] == [1, 2, 3] and all(r["nonfinite_skipped"] == 0 for r in log)
    assert [r["loss_scale"] for r in log] == [2.0 ** (24 - r["overflow_skipped"]) for r in log]
    state = torch.load(run_dir / "checkpoints" / "step_0000006" / "state.pt", weights_only=True)
    assert state["precision"]["scale"] == log[-1]["loss_scale"]
