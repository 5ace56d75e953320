"""The shard reader alone: ours (`ssl_vit.data.shards.read_shard`) against webdataset's tar reader, per sample.

    .venv/bin/python bench/reader.py                 # defaults: 4 shards of 500 samples, ~20 s on one core
    .venv/bin/python bench/reader.py --quick --json

Both read the same shards from the local disk and yield every sample's bytes grouped by key, no decoding:
  ours      read_shard(url)   (webdataset's URL openers, our tar walk, the sample count checked)
  baseline  webdataset.DataPipeline(SimpleShardList(urls), tarfile_to_samples())
Samples are what `ssl-vit-shards` writes (`__key__`, a 110 kB `jpg` of random bytes, `cls`, `json`).
`ratio` = ours ÷ baseline in samples/s on one core, median of interleaved runs. Why the reader is our own
(docs/architecture.md): this speed, exact resume (a reader starts at any sample of its shard part) and
truncation detected (a shard cut at a member boundary is an error, not a shorter tar).
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import common
import webdataset as wds

from ssl_vit.data.shards import read_shard


def make_shards(root: Path, shards: int, per_shard: int) -> list[str]:
    """`root/train-00000k.tar`, written once (cached): 110 kB random `jpg` bytes, the class, a JSON record."""
    urls = [str(root / f"train-{s:06d}.tar") for s in range(shards)]
    if all(Path(u).is_file() for u in urls):
        return urls
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for s, url in enumerate(urls):
        with wds.TarWriter(url + ".tmp") as sink:
            for i in range(per_shard):
                key = f"s{s:03d}_{i:05d}"
                meta = {"path": f"c{i % 10}/{key}.jpg", "class": f"c{i % 10}", "width": 500, "height": 375}
                sink.write({"__key__": key, "jpg": rng.randbytes(110_000), "cls": str(i % 10).encode(),
                            "json": json.dumps(meta).encode()})
        os.replace(url + ".tmp", url)
    return urls


def count_ours(urls: list[str]) -> int:
    return sum(1 for url in urls for _ in read_shard(url))


def count_webdataset(urls: list[str]) -> int:
    return sum(1 for _ in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    shards, per_shard, reps = (2, 50, 2) if args.quick else (args.shards, args.per_shard, args.reps)
    urls = make_shards(common.CACHE / f"reader-{shards}x{per_shard}", shards, per_shard)
    n = shards * per_shard
    assert count_ours(urls) == count_webdataset(urls) == n  # the same samples, warm page cache for both
    times = common.interleaved({"ours": lambda: count_ours(urls), "webdataset": lambda: count_webdataset(urls)},
                               reps=reps)
    ours, base = n / common.median(times["ours"]), n / common.median(times["webdataset"])
    result = {
        "benchmark": "reader", "ratio": ours / base, "ours_samples_per_s": ours, "webdataset_samples_per_s": base,
        "ours_us_per_sample": 1e6 / ours, "webdataset_us_per_sample": 1e6 / base, "samples": n, "reps": reps,
        "runs_s": times, "command": common.command_line("bench/reader.py", argv),
        "machine": common.machine_info("cpu"),
    }
    table = ("| reader | samples/s | µs per sample |\n|---|---|---|\n"
             f"| ours (read_shard) | {ours:,.0f} | {1e6 / ours:.1f} |\n"
             f"| webdataset tarfile_to_samples | {base:,.0f} | {1e6 / base:.1f} |\n"
             f"| **ratio** | **{ours / base:.2f}×** | |")
    notes = (f"{shards} shards × {per_shard} samples (110 kB each), read from the page cache, no decoding; median of "
             f"{reps} interleaved runs. Load average {os.getloadavg()[0]:.2f} at the end.")
    common.finish(args, result, table, title="bench/reader.py — the shard reader per sample", notes=notes)
    return result


if __name__ == "__main__":
    common.run_main(main)
