"""Two "machines" on one: two `accelerate launch` processes with recipes/accelerate/nodes_2x8.yaml's settings
(`--num_machines 2`, machine ranks 0 and 1, the main address on 127.0.0.1, one CPU process each over gloo).
Both finish with equal weights; killing one machine stops the other with a clear error within the collective
timeout (`train.collective_timeout_s`), instead of leaving it waiting for ever."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from trainer_fixtures import REPO, SMOKE, cli_env, free_port, smoke_overrides

NODES = REPO / "recipes" / "accelerate" / "nodes_2x8.yaml"
RUN = {"data.batch_size": 8, "data.num_workers": 1, "train.log_every": 1, "optim.warmup_steps": 2,
       "train.collective_timeout_s": 20}


def start_node(rank: int, port: int, data: Path, run_dir: Path, steps: int) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--config_file", str(NODES), "--num_processes", "2", "--machine_rank",
               str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "-m", "ssl_vit",
               "pretrain", "--config", str(SMOKE),
               *smoke_overrides(data, run_dir, **RUN, **{"train.total_steps": steps, "train.checkpoint_every": steps})]
    return subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_machines_finish_with_equal_weights(pretrain_shards: Path, tmp_path: Path):
    port, run_dir = free_port(), tmp_path / "run"
    nodes = [start_node(rank, port, pretrain_shards, run_dir, 6) for rank in (0, 1)]
    outs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "8 per device × 2 process(es) × 1 accumulation = 16 images per step" in outs[0]
    a, b = (json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a["step"] == b["step"] == 6 and a["param_sha256"] == b["param_sha256"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killing_one_machine_stops_the_other_with_a_clear_error(pretrain_shards: Path, tmp_path: Path):
    port, run_dir = free_port(), tmp_path / "run"
    nodes = [start_node(rank, port, pretrain_shards, run_dir, 100_000) for rank in (0, 1)]
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert all(node.poll() is None for node in nodes) and time.monotonic() < deadline
        time.sleep(0.1)
    machine = psutil.Process(nodes[1].pid)
    for process in [*machine.children(recursive=True), machine]:  # machine 1 is gone: every process at once
        process.kill()
    killed_at = time.monotonic()
    out = nodes[0].communicate(timeout=120)[0]
    took = time.monotonic() - killed_at
    assert nodes[0].returncode not in (0, None) and took < 90, (took, out[-3000:])
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors and "lost contact with another process" in errors[0], out[-3000:]
    assert "--resume auto" in errors[0]
