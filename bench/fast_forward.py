"""What a resume between checkpoints pays per skipped sample: fast-forwarding a train stream against decoding it.

    .venv/bin/python bench/fast_forward.py                 # 400 images 500×375 (bench/data.py's, cached), ~30 s
    .venv/bin/python bench/fast_forward.py --quick --json

A resume after a signal fast-forwards every loader worker past the samples the interrupted run consumed
(`stages.train_items(skip=N)`): it reads their bytes and draws their random numbers from the header's size, but
decodes nothing. Per sample, on one core, median of interleaved repetitions:
  read          the shard's bytes → raw samples (tar parsing; the same for both)
  fast-forward  `train_items(skip=N)` over the raw samples: header size, crop box, flip draw
  decode        `train_items(skip=0)` over the same samples: the above + decode, crop, resize to 224
`ratio` = decode ÷ fast-forward; the cost of skipping a sample is read + fast-forward against read + decode.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import common  # noqa: E402  (bench/common.py)
from data import make_dataset  # noqa: E402  (bench/data.py: cached photo-like JPEG shards)

from ssl_vit.data import resolve_spec  # noqa: E402
from ssl_vit.data.shards import read_shard  # noqa: E402
from ssl_vit.data.stages import BadSampleTally, train_items  # noqa: E402

IMAGE_SIZE = 224


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images timed (from a cached data set of at least 400)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_images, reps = (250, 2) if args.quick else (args.images, 5)
    _, shards = make_dataset(max(400, n_images))
    urls = list(resolve_spec(str(shards)).urls)
    raw: list[dict] = []

    def read() -> None:
        raw.clear()
        for url in urls:
            raw.extend(read_shard(url))
            if len(raw) >= n_images:
                break
        del raw[n_images:]

    def items(skip: int) -> None:
        tally = BadSampleTally(0.0, 10**9, "bench")
        rng = np.random.default_rng(0)
        for _ in train_items(raw, rng=rng, image_size=IMAGE_SIZE, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             hflip=True, tally=tally, skip=skip):
            pass

    read()  # warm the page cache and fill `raw`
    times = common.interleaved({"read": read, "fast-forward": lambda: items(n_images), "decode": lambda: items(0)},
                               reps=reps)
    per_sample = {name: common.median(t) / n_images * 1e6 for name, t in times.items()}  # µs
    ff, dec, rd = per_sample["fast-forward"], per_sample["decode"], per_sample["read"]
    result = {
        "benchmark": "fast_forward",
        "ratio": dec / ff,
        "skip_vs_decode": (rd + dec) / (rd + ff),
        "us_per_sample": per_sample,
        "runs_s": times,
        "images": n_images,
        "reps": reps,
        "command": common.command_line("bench/fast_forward.py", argv),
        "machine": common.machine_info("cpu"),
    }
    table = common.markdown_table(
        ["per sample (1 core)", "µs", "relative to fast-forward"],
        [[name, f"{us:.1f}", f"{us / ff:.1f}×"] for name, us in per_sample.items()],
    )
    notes = (f"{n_images} JPEGs 500×375 q90 (bench/data.py's), crops to {IMAGE_SIZE}, median of {reps} interleaved "
             f"runs, load average {os.getloadavg()[0]:.2f}. Decoding costs {dec / ff:.0f}× the fast-forward; with "
             f"the bytes read, skipping a sample costs {(rd + ff) / (rd + dec):.1%} of training on it.")
    common.finish(args, result, table, title="bench/fast_forward.py — resuming between checkpoints", notes=notes)
    return result


if __name__ == "__main__":
    common.run_main(main)
