"""The exactly-once order (issue 26): train-stream throughput against the stream before it, and shuffle quality.

    .venv/bin/python bench/exactly_once.py                 # ~2 minutes on 2 cores
    .venv/bin/python bench/exactly_once.py --quick --json

1. Throughput per core. Images per CPU-second on one core (num_workers=0: all the work in one process) of
   `build_train_stream` as it is now and as it was at `BEFORE` (the last commit before the global order: per-worker
   shard streams through a shuffle buffer of 1000), on bench/data.py's photo-like 500×375 JPEGs, crops to 224,
   batches of 64. Each measurement is its own subprocess (the old tree extracted with `git archive`), the two
   interleaved A B B A …; `ratio` = now ÷ before, median (goal ≥ 0.9). The member indexes are built before the
   measurements (a first run builds them once; their cost per shard is reported on its own).
2. Shuffle quality, of the order alone (no image is read): ImageNet-1k's shape (1,000 classes × 1,281 samples in
   1,024 shards of 1,251), stored class by class (the worst case: each shard holds one or two classes) and stored in
   a random order (`ssl-vit-shards build`'s default). For the global order at `data.shuffle_buffer` 10,000 and for a
   uniform permutation of the epoch: the mean number of distinct classes in a batch of 16 consecutive positions
   (FFCV's quasi-random order gives 10–13 on ImageNet, a uniform shuffle ~15.9) and the correlation between
   consecutive samples' stored positions (0 for a uniform shuffle).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import common  # noqa: E402  (bench/common.py)
from data import make_dataset  # noqa: E402  (bench/data.py: the photo-like JPEGs, cached)

from ssl_vit.data.global_order import GlobalOrder  # noqa: E402

BEFORE = "942dfdc"  # the last commit before the global order (#26)
CLASSES, PER_CLASS, SHARD = 1000, 1281, 1251

# One measurement, in a fresh interpreter whose ssl_vit is the tree on sys.path[0].
MEASURE = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from ssl_vit.data import TrainStreamOptions, build_train_stream
options = TrainStreamOptions(batch_size=64, image_size=224, num_workers=0, shuffle_buffer=1000)
stream = build_train_stream(sys.argv[2], options, seed=int(sys.argv[4]))
it = iter(stream)
next(it)
start, seen = time.process_time(), 0
while seen < int(sys.argv[3]):
    seen += len(next(it)["label"])
print(json.dumps(seen / (time.process_time() - start)))
stream.close()
"""


def old_tree(folder: Path) -> Path:
    """ssl_vit and data_tools as they were at `BEFORE`, extracted into `folder`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "ssl_vit", "data_tools"],
                             check=True, capture_output=True).stdout
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(archive)
        f.flush()
        with tarfile.open(f.name) as tar:
            tar.extractall(folder, filter="data")
    return folder


def measure(tree: Path, shards: Path, count: int, seed: int, cache: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSL_VIT_CACHE_DIR": str(cache), "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tree), str(shards), str(count), str(seed)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def index_cost(shards: Path, cache: Path) -> float:
    """Milliseconds to build one shard's member index (the first run's one-off cost), median over the shards."""
    os.environ["SSL_VIT_CACHE_DIR"] = str(cache)
    from ssl_vit.data.member_index import shard_index

    times = []
    for path in sorted(shards.glob("train-*.tar")):
        start = time.perf_counter()
        shard_index(str(path), path)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def shuffle_quality(positions: int) -> dict:
    """Distinct classes per batch of 16 and consecutive-position correlation, per storage and order."""
    total = CLASSES * PER_CLASS
    counts = [SHARD] * (total // SHARD) + ([total % SHARD] if total % SHARD else [])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    _, shard, member = GlobalOrder(counts, seed=0, window=10_000).locate(np.arange(positions))
    orders = {"global order, shuffle_buffer 10,000": starts[shard] + member,  # (n,) stored index of each position
              "uniform permutation": np.random.default_rng(1).permutation(total)[:positions]}
    storages = {"stored class by class": np.arange(total) // PER_CLASS,  # (total,) class of each stored index
                "stored shuffled (the build's default)": np.random.default_rng(2).permutation(total) // PER_CLASS}
    result = {}
    for storage, classes in storages.items():
        for order, stored in orders.items():
            batches = classes[stored[: positions // 16 * 16]].reshape(-1, 16)  # (n/16, 16) classes per batch
            distinct = np.mean([len(np.unique(b)) for b in batches])
            correlation = float(np.corrcoef(stored[:-1], stored[1:])[0, 1])
            result[f"{storage} / {order}"] = {"distinct_classes_per_16": float(distinct),
                                              "consecutive_position_correlation": correlation}
    return result


def table(r: dict) -> str:
    rows = [f"Throughput per core (images per CPU-second, num_workers=0): now {r['now_images_per_cpu_s']:.0f}, before "
            f"({BEFORE}) {r['before_images_per_cpu_s']:.0f}: **{r['ratio']:.2f}×** (goal ≥ 0.9). Building a shard's "
            f"member index the first time: {r['index_ms_per_shard']:.1f} ms per shard of 250 (once, then cached).",
            "", "| storage / order | distinct classes in a batch of 16 | correlation of consecutive positions |",
            "|---|---|---|"]
    for name, q in r["shuffle"].items():
        rows.append(f"| {name} | {q['distinct_classes_per_16']:.2f} | {q['consecutive_position_correlation']:+.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    n_images, count, reps, positions = (400, 192, 1, 16_000) if args.quick else (2000, 640, 5, 200_000)
    _, shards = make_dataset(n_images)
    with tempfile.TemporaryDirectory() as tmp:
        before = old_tree(Path(tmp) / "before")
        cache = Path(tmp) / "cache"
        index_ms = index_cost(shards, cache)
        now_runs, before_runs = [], []
        for rep in range(reps):  # A B, B A, …
            pair = [("now", ROOT), ("before", before)]
            for name, tree in pair if rep % 2 == 0 else reversed(pair):
                (now_runs if name == "now" else before_runs).append(measure(tree, shards, count, rep, cache))
    result = {
        "ratio": statistics.median(now_runs) / statistics.median(before_runs),
        "now_images_per_cpu_s": statistics.median(now_runs),
        "before_images_per_cpu_s": statistics.median(before_runs),
        "now_runs": now_runs, "before_runs": before_runs,
        "index_ms_per_shard": index_ms,
        "shuffle": shuffle_quality(positions),
        "images": n_images, "count": count, "reps": reps, "positions": positions,
        "command": " ".join(["python", "bench/exactly_once.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": common.machine_info("cpu"),
    }
    notes = (f"Load average {os.getloadavg()[0]:.2f} at the end. {n_images} images 500×375 JPEG q90 in shards of "
             f"250, {count} images per measurement after one warm-up batch, median of {reps} interleaved runs, each in "
             f"its own process. Shuffle quality over the first {positions:,} positions of epoch 0.")
    common.finish(args, result, table(result), title="bench/exactly_once.py — the global order's cost and shuffle",
                  notes=notes)
    return result


if __name__ == "__main__":
    common.run_main(main)
