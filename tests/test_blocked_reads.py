"""A stop signal is honoured while a shard read is blocked: the run exits within seconds, with one line and the
checkpoint of the last finished step, and leaves no loader worker behind; the checkpoint resumes.

The blocked read is real: the run's shard reader (patched in the training process before its loader workers
fork) sleeps for an hour inside a read once a marker file names its rank — a hung mount as the trainer sees it.
Before, the training process waited in `next(loader)` for ever: its SIGTERM handler only set a flag nobody looked
at. Under `ssl-vit launch` with 2 ranks, one stuck rank makes both give the step up together (the other waits in
the ranks' agreement, not in a collective of the step).
Also: a process that leaves a stream open exits (its loader workers ignore SIGTERM, and Python's exit waited
for them without end).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from test_launch_signals import BIN, launcher_command
from trainer_fixtures import REPO, SMOKE, cli_env, run_pretrain, smoke_overrides

from ssl_vit.train.batch_wait import GRACE_S

STUCK_READS = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from ssl_vit.cli import main
    from ssl_vit.data.shard_access import ShardAccess

    marker, real = Path(sys.argv[1]), ShardAccess.read

    def read(self, shard, member):  # blocks inside the read once the marker names this rank, as on a hung mount
        while marker.exists() and os.environ.get("RANK", "0") in marker.read_text().split():
            time.sleep(3600)
        return real(self, shard, member)

    ShardAccess.read = read
    sys.exit(main(sys.argv[2:]))
""")


def metric_lines(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def start_then_block(command: list[str], run_dir: Path, marker: Path, ranks: str) -> tuple[subprocess.Popen, int]:
    """Start the run, let it train 2 steps, block the reads of `ranks`; returns it once it has made no step for 2 s,
    with its last step."""
    proc = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 240
    while metric_lines(run_dir) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    marker.write_text(ranks)
    steps, still = metric_lines(run_dir), 0
    while still < 20:  # 2 s without a step: the batches read before the marker are used up, the read hangs
        time.sleep(0.1)
        still, steps = (still + 1, steps) if metric_lines(run_dir) == steps else (0, metric_lines(run_dir))
    return proc, steps


def stop_and_collect(proc: subprocess.Popen) -> tuple[str, float, list]:
    """SIGTERM to `proc`; (its output, seconds until it exited, its process tree at the signal)."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    return out, time.monotonic() - t0, tree


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process-read", "loader-worker"])
def test_sigterm_while_a_read_is_blocked_stops_within_seconds_with_a_checkpoint(pretrain_shards, tmp_path, workers):
    run_dir, marker = tmp_path / "run", tmp_path / "stuck"
    run = {"train.log_every": 1, "train.checkpoint_every": 5000, "optim.warmup_steps": 2, "data.num_workers": workers}
    overrides = smoke_overrides(pretrain_shards, run_dir, **run, **{"train.total_steps": 5000})
    command = [sys.executable, "-c", STUCK_READS, str(marker), "pretrain", "--config", str(SMOKE), *overrides]
    proc, steps = start_then_block(command, run_dir, marker, "0")
    try:
        assert len(psutil.Process(proc.pid).children(recursive=True)) == workers
        out, took, tree = stop_and_collect(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert took < GRACE_S + 15, (took, out[-3000:])  # the grace, a checkpoint, the exit: not for ever
    stops = re.findall(r"stopped by SIGTERM at step (\d+): a loader had no batch within .*?; checkpoint (\S+)\. ", out)
    assert len(stops) == 1 and int(stops[0][0]) == steps, out[-3000:]
    assert Path(stops[0][1]) == run_dir / "checkpoints" / f"step_{steps:07d}"
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.cmdline()[:3] for p in alive]

    if workers:  # the checkpoint of the given-up step's predecessor is a good one: the run goes on from it
        marker.unlink()
        resumed = run_pretrain(smoke_overrides(pretrain_shards, run_dir, **run, **{"train.total_steps": steps + 2}),
                               "--resume", "auto")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {run_dir / 'checkpoints' / f'step_{steps:07d}'} at step {steps}" in resumed.stdout
        assert metric_lines(run_dir) >= steps + 2


@pytest.mark.timeout(120)
def test_a_process_that_leaves_a_stream_open_still_exits(pretrain_shards):
    script = textwrap.dedent(f"""
        from ssl_vit.data import build_eval_stream
        batches = iter(build_eval_stream({str(pretrain_shards)!r}, batch_size=4, image_size=16, num_workers=1))
        next(batches)
        raise SystemExit(3)  # leaving without closing it (an exception, a second Ctrl-C)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 3, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_one_rank_stuck_in_a_read_stops_both_ranks_under_ssl_vit_launch(pretrain_shards, tmp_path):
    run_dir, marker, script = tmp_path / "run", tmp_path / "stuck", tmp_path / "stuck_reads.py"
    script.write_text(STUCK_READS)
    overrides = smoke_overrides(pretrain_shards, run_dir, **{
        "train.total_steps": 5000, "train.log_every": 1, "train.checkpoint_every": 5000, "optim.warmup_steps": 2,
        "data.batch_size": 8, "data.num_workers": 1})
    command = [str(BIN / "ssl-vit"), "launch", *launcher_command("accelerate"), str(script), str(marker),
               "pretrain", "--config", str(SMOKE), *overrides]
    proc, steps = start_then_block(command, run_dir, marker, "1")  # rank 0 reads on; rank 1's read hangs
    try:
        out, took, tree = stop_and_collect(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert took < GRACE_S + 30, (took, out[-3000:])
    stops = re.findall(r"stopped by SIGTERM at step (\d+): a loader had no batch within", out)
    assert stops == [str(steps)], out[-3000:]
    files = sorted(p.name for p in (run_dir / "checkpoints" / f"step_{steps:07d}").iterdir())
    assert files == ["config.yaml", "rng_rank0.pt", "rng_rank1.pt", "state.pt"], files  # both ranks saved it
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline()[:4] for p in alive]
