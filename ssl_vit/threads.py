"""How many BLAS / intra-op threads a training or evaluation process should use.

torch starts one intra-op thread per core in every process. Several processes per machine, or data-loader
workers decoding beside the training process, then oversubscribe the cores, and OpenMP threads that spin while
they wait for one another make it far worse: a few-shot probe ran 10× slower, and on 2 cores the demo's
pretraining step with one loader worker 2.6× slower, than with the threads the cores actually had. So: respect
OMP_NUM_THREADS when the user set it, else split the *physical* cores evenly over the local processes and leave
one core per loader worker.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def physical_cores() -> int:
    """Cores this process may run on, counting hyperthread siblings once."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    per_core = 1
    if siblings.exists():
        # "0,64" or "0-1" means two hardware threads share core 0.
        text = siblings.read_text().strip()
        per_core = sum(len(range(int(a), int(b) + 1)) if "-" in part else 1
                       for part in text.split(",") for a, _, b in [part.partition("-")])
    return max(1, usable // max(per_core, 1))


def configure_threads(local_processes: int = 1, loader_workers: int = 0) -> int:
    """Set torch's intra-op threads once per process and return the number chosen."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    share = physical_cores() // max(local_processes, 1) - max(loader_workers, 0)
    threads = int(env) if env.isdigit() and int(env) > 0 else max(1, share)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
