"""How many BLAS / intra-op threads an evaluation process should use.

Few-shot solves and linear probes are BLAS-bound; with several processes per machine each starting one
thread per logical CPU, the threads fight over the cores (a probe ran 10x slower that way). So: respect
OMP_NUM_THREADS when the user set it, else split the *physical* cores evenly over the local processes.
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


def configure_threads(local_processes: int = 1) -> int:
    """Set torch's intra-op threads once per process and return the number chosen."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    threads = int(env) if env.isdigit() and int(env) > 0 else max(1, physical_cores() // max(local_processes, 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
