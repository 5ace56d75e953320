"""What a rank prints when its data loader has given no batch for minutes with no stop requested.

A loader worker stuck where no deadline reaches (a hung local mount, a deadlock at start) would otherwise leave a
silent job: the other ranks wait in their collectives until `train.collective_timeout_s`, and nobody learns where
it stopped. So the wait for a batch (`batch_wait.py`) reports it once: which rank, which loader worker processes,
and their Python stacks — this process's threads through `faulthandler`, each loader worker's through `py-spy dump`
when py-spy is installed (it reads another process's stack without stopping it for long), else the line says how
to get them. The training goes on waiting: a slow first fetch of remote shards is not an error.
"""
from __future__ import annotations

import faulthandler
import shutil
import subprocess
import sys

PY_SPY_TIMEOUT_S = 20.0


def report_stall(rank: int, waited: float, worker_pids: list[int]) -> None:
    """Print the stall and every stack it can get to stderr."""
    workers = ", ".join(map(str, worker_pids)) if worker_pids else "none: this process reads (data.num_workers=0)"
    print(f"warning: rank {rank}: no batch from the data loader for {waited:.0f} s with no stop requested (loader "
          f"worker pids: {workers}). A read may be stuck (a hung mount, a stalled link); the stacks follow. The run "
          "goes on waiting; stop it with SIGTERM (it checkpoints the last step) once you know the cause",
          file=sys.stderr, flush=True)
    print(f"--- rank {rank}, the training process (pid of this process) ---", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    py_spy = shutil.which("py-spy")
    for pid in worker_pids:
        if py_spy is None:
            print(f"--- loader worker {pid}: install py-spy (pip install py-spy) to see its stack, or run "
                  f"`py-spy dump --pid {pid}` ---", file=sys.stderr, flush=True)
            continue
        try:
            done = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=PY_SPY_TIMEOUT_S)
            stack = (done.stdout or done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            stack = f"(py-spy could not read it: {exc})"
        print(f"--- loader worker {pid} ---\n{stack}", file=sys.stderr, flush=True)
