"""Can the train stream with N workers keep up with the training step? Loader images/s against step images/s.

    .venv/bin/python bench/loader_vs_gpu.py                      # CPU: workers 1 2 against a simulated H100 (~30 s)
    .venv/bin/python bench/loader_vs_gpu.py --step-rate real --model vit_tiny_patch16 --batch 32   # real CPU step
    python bench/loader_vs_gpu.py --workers 2 4 8 12             # GPU: the real ViT-B/16 bf16 step (default there)
    .venv/bin/python bench/loader_vs_gpu.py --quick --json       # smoke: tiny data, vit_nano_patch4, seconds

Data: `--images` photo-like 500×375 JPEGs (random crops, flips and colour gains of the two photographs that
ship with scikit-learn, quality 90), made into shards by `data_tools.build.build_split` with
`--resize-shorter` (256: the shorter side, as one would store ImageNet for 224px training) at JPEG `--quality`;
cached under `--cache-dir` (bench/.cache, git-ignored) and reused.

For each worker count N:
  loader alone    `ssl_vit.data.build_train_stream(num_workers=N, pin_memory on CUDA)` drained as fast as
                  possible: images/s, and per worker;
  loader + step   each batch copied to the device (non_blocking) and consumed by the step: the real
                  `MaskedPatchPrediction` step of bench/step.py, or with `--step-rate R` a simulated device that
                  is busy B/R seconds per batch (a sleep: the host is free, as while a GPU computes).
`ratio` = loader images/s (largest N) ÷ step images/s: ≥ 1 means the loader keeps up. The data-wait share is
the share of the device's time lost to waiting for data, 1 − (loader + step images/s) ÷ (step images/s alone).
Workers needed = ceil(target ÷ one worker's images/s), the target being the step rate (or `--target-rate`).
With a real step on the CPU the workers and the step share the cores, so the "device waits" share there also
holds the step's slow-down by the workers; "host waits in next()" is the time the step really waited for data.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402  (bench/common.py)

from data_tools.progress_bar import progress_bar  # noqa: E402
from ssl_vit.data import ShardSet, TrainStreamOptions, build_train_stream, resolve_spec  # noqa: E402
from ssl_vit.models import list_models  # noqa: E402

TITLE = "bench/loader_vs_gpu.py — train stream vs step rate"
H100_GOAL = 4200.0  # ViT-B/16 bf16 images/s per H100 at the 45% MFU goal (4200 × 105.6 GFLOP ≈ 0.45 × 989 TFLOP/s)
WIDTH, HEIGHT = 500, 375
DEFAULTS = dict(images=512, resize_shorter=256, image_size=224, warmup_batches=3, batches=12, reps=2)
QUICK = dict(images=48, resize_shorter=64, image_size=32, batch=8, workers=[1], warmup_batches=1, batches=4,
             model="vit_nano_patch4", step_rate="real", reps=1, compile=False)


# ------------------------------------------------------------------------------------------------ data
def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 500×375 JPEGs (q90) cut from scikit-learn's two sample photographs: real image statistics."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # two 640×427 RGB photographs
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in progress_bar(range(count), desc="photos", unit="img", file=sys.stderr):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.35, 1.0)  # share of the photo's width, at the 4:3 output aspect
        w = int(photo.width * scale)
        h = min(int(w * HEIGHT / WIDTH), photo.height)
        left, top = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        img = photo.crop((left, top, left + w, top + h)).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = rng.uniform(0.8, 1.2, 3)  # per-channel colour gains, so no two crops share their pixels
        pixels = np.clip(np.asarray(img, dtype=np.float32) * gains, 0, 255).astype(np.uint8)  # (H, W, 3)
        Image.fromarray(pixels).save(folder / f"img{i:06d}.jpg", format="JPEG", quality=90)


def prepare_shards(cache: Path, count: int, resize_shorter: int, quality: int) -> tuple[Path, Path]:
    """(shard directory, photo folder): `count` photos resized to `resize_shorter` at JPEG `quality`, as shards;
    built once, then reused (build_split finds a complete split up to date)."""
    from data_tools.build import build_split
    from data_tools.errors import DataToolsError

    photos = cache / f"photos-{count}"
    if not (photos / "complete").exists():
        make_photos(photos / "img", count)
        (photos / "complete").touch()
    shard_size = max(count * 30_000 // 32, 100_000)  # ~32 shards at ~30 kB per image: most workers own some
    # Every build option is named here and in the directory name; a cache that another version of the build
    # refuses to resume is rebuilt.
    out = cache / f"shards-{count}-s{resize_shorter}-q{quality}-{shard_size // 1000}k-header"
    build = functools.partial(build_split, photos / "img", out, "train", labels="none", seed=0,
                              resize_shorter=resize_shorter, quality=quality, shard_size=shard_size, check="header",
                              workers=1, progress=True)
    try:
        build()
    except DataToolsError as err:  # a cache left by another version of the build: it is only a cache
        print(f"rebuilding the cached shards: {err}", file=sys.stderr)
        build(overwrite=True)
    return out, photos / "img"


def shard_stats(out: Path, photos: Path) -> dict:
    """Bytes per sample as stored (tar members and headers included), and of the 500×375 source JPEGs."""
    entry = json.loads((out / "_info.json").read_text())["splits"]["train"]
    jpeg = [p.stat().st_size for p in photos.glob("*.jpg")]
    return {"num_samples": entry["num_samples"], "shards": len(entry["filenames"]),
            "shard_bytes_per_image": sum(entry["bytes"]) / entry["num_samples"],
            "source_jpeg_bytes_per_image": float(np.mean(jpeg)) if jpeg else None}


# ----------------------------------------------------------------------------------------- consumers
def real_step(args: argparse.Namespace, device: torch.device) -> tuple[Callable, float]:
    """(consume(images), step images/s alone): our MPP step from bench/step.py on `device`."""
    from step import Runner

    from ssl_vit.models import create_model
    from ssl_vit.objectives.mpp import MaskedPatchPrediction

    torch.manual_seed(0)
    model = MaskedPatchPrediction(create_model(args.model, img_size=args.image_size), seed=0).to(device).train()
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8).to(device)
    runner = Runner(model, SimpleNamespace(steps=max(1, args.batches // 4), precision=args.precision,
                                           compile=args.compile, compile_backend=args.compile_backend), images, device)
    sync = common.synchronizer(device)
    for _ in range(2):  # warm-up (and compile)
        runner.step()
    times = common.interleaved({"step": runner.block}, reps=3, sync=sync)["step"]
    return runner.step, args.batch * runner.steps / common.median(times)


def simulated_step(rate: float, batch: int) -> Callable:
    """A device that is busy batch/rate seconds per batch and leaves the host idle meanwhile."""
    busy = batch / rate

    def consume(images: torch.Tensor) -> None:
        time.sleep(busy)

    return consume


# ------------------------------------------------------------------------------------------- timing
def drain(shards: ShardSet, workers: int, args: argparse.Namespace, device: torch.device, consume: Callable | None,
          seed: int) -> dict:
    """Images/s of `args.batches` batches after `args.warmup_batches` (worker start-up and buffer fill excluded);
    with `consume`, each batch goes to the device and through it, and the host's wait in next() is recorded.

    Each worker builds whole batches, so with many workers the counts grow to one warm-up batch and three timed
    batches per worker: otherwise the timed window would end before every worker had delivered once.
    """
    warmup, timed = max(args.warmup_batches, workers), max(args.batches, 3 * workers)
    options = TrainStreamOptions(batch_size=args.batch, image_size=args.image_size, num_workers=workers,
                                 shuffle_buffer=1000, pin_memory=device.type == "cuda")
    stream = build_train_stream(shards, options, seed=seed)
    sync = common.synchronizer(device)
    waited = 0.0
    try:
        batches = iter(stream)
        for i in range(warmup + timed):
            if i == warmup:
                sync()
                start, waited = time.perf_counter(), 0.0
            asked = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - asked
            if consume is not None:
                consume(batch["image"].to(device, non_blocking=True))
        sync()
        elapsed = time.perf_counter() - start
    finally:
        stream.close()
    return {"images_per_s": timed * args.batch / elapsed, "host_wait_share": waited / elapsed}


def measure(shards: ShardSet, args: argparse.Namespace, device: torch.device, consume: Callable,
            step_ips: float) -> list[dict]:
    """Per worker count: the loader alone and the loader feeding the step, each the median of `args.reps` runs."""
    results = []
    runs = len(args.workers) * args.reps * 2
    with progress_bar(total=runs, desc="loader runs", unit="run", file=sys.stderr) as bar:
        for n in args.workers:
            alone, fed, waits = [], [], []
            for rep in range(args.reps):  # alone and fed alternate, so drift hits both alike
                alone.append(drain(shards, n, args, device, None, seed=rep)["images_per_s"])
                bar.update()
                r = drain(shards, n, args, device, consume, seed=rep)
                fed.append(r["images_per_s"])
                waits.append(r["host_wait_share"])
                bar.update()
            loader = common.median(alone)
            combined = common.median(fed)
            results.append({"workers": n, "loader_images_per_s": loader, "loader_images_per_s_per_worker": loader / n,
                            "combined_images_per_s": combined, "data_wait_share": max(0.0, 1 - combined / step_ips),
                            "host_wait_share": common.median(waits), "ratio": loader / step_ips})
    return results


# --------------------------------------------------------------------------------------------- main
def step_rate_arg(text: str) -> str | float:
    if text == "real":
        return text
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--step-rate takes 'real' or images/s, got {text!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"--step-rate must be positive, got {text}")
    return rate


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts to try (default: 1 2 … up to the CPU count, powers of two)")
    parser.add_argument("--step-rate", type=step_rate_arg, default=None, metavar="real|IMAGES_PER_S",
                        help=f"'real': our training step on --device; a number: a simulated device consuming that "
                             f"many images/s (default: real on CUDA; on CPU {H100_GOAL:.0f}, the H100 ViT-B/16 "
                             "goal)")
    parser.add_argument("--target-rate", type=float, default=None, help="images/s to size the workers for "
                        "(default: the step rate)")
    parser.add_argument("--model", default=None, help="model of the real step (default vit_base_patch16 on CUDA, "
                        "vit_tiny_patch16 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default 256 CUDA, 64 CPU)")
    parser.add_argument("--image-size", type=int, default=None, help="crop side (224)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="real step (bf16 CUDA, fp32 CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the real step (default: on for CUDA, off for CPU)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--images", type=int, default=None, help="photos in the generated data set (512)")
    parser.add_argument("--resize-shorter", type=int, default=None, help="shorter side of the stored JPEGs (256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored images")
    parser.add_argument("--shards", default=None, help="use these shards (a data spec with a train split) instead")
    parser.add_argument("--cache-dir", type=Path, default=common.CACHE, help="where generated data is kept")
    parser.add_argument("--warmup-batches", type=int, default=None, help="batches per run before timing starts (3)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per run (12)")
    parser.add_argument("--reps", type=int, default=None, help="runs per worker count and mode, median (2)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():  # what the user set stays set
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = args.device or ("cpu" if args.quick else common.default_device())
    cuda = args.device.startswith("cuda")
    device_defaults = dict(workers=[n for n in (1, 2, 4, 8, 16, 32) if n <= (os.cpu_count() or 1)],
                           step_rate="real" if cuda else H100_GOAL,
                           model="vit_base_patch16" if cuda else "vit_tiny_patch16",
                           batch=256 if cuda else 64, precision="bf16" if cuda else "fp32", compile=cuda)
    for key, value in device_defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model not in list_models():
        parser.error(f"unknown --model {args.model!r}; registered: {', '.join(list_models())}")
    if min(args.workers) < 1 or args.batch < 1 or args.batches < 1 or args.reps < 1 or args.warmup_batches < 0:
        parser.error("--workers, --batch, --batches and --reps must be at least 1, --warmup-batches at least 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    common.apply_threads(args)
    device = torch.device(args.device)
    if args.shards:
        shards, stats = resolve_spec(args.shards, "train"), {}  # fails here, in one line, if they are missing
    else:
        out, photos = prepare_shards(args.cache_dir, args.images, args.resize_shorter, args.quality)
        shards, stats = resolve_spec(str(out), "train"), shard_stats(out, photos)
    if args.step_rate == "real":
        consume, step_ips = real_step(args, device)
        mode = f"real step: {args.model}, batch {args.batch}, {args.precision}, compile={args.compile}, on {device}"
    else:
        consume, step_ips = simulated_step(args.step_rate, args.batch), float(args.step_rate)
        mode = f"simulated device consuming {args.step_rate:.0f} images/s"
    results = measure(shards, args, device, consume, step_ips)
    per_worker = results[0]["loader_images_per_s_per_worker"]  # the fewest workers: closest to one free core each
    target = args.target_rate or step_ips
    best = results[-1]
    result = {
        "benchmark": "loader_vs_gpu",
        "command": common.command_line("bench/loader_vs_gpu.py", argv),
        "machine": common.machine_info(device),
        "mode": mode,
        "step_images_per_s": step_ips,
        "loader_images_per_s": best["loader_images_per_s"],
        "ratio": best["ratio"],
        "per_worker_images_per_s": per_worker,
        "target_images_per_s": target,
        "workers_needed": math.ceil(target / per_worker),
        "data": {"images": args.images, "resize_shorter": args.resize_shorter, "quality": args.quality,
                 "image_size": args.image_size, "batch": args.batch, **stats},
        "results": results,
    }
    if stats:
        result["storage_mb_per_s_at_target"] = stats["shard_bytes_per_image"] * target / 1e6
    report(args, result)
    return result


def report(args: argparse.Namespace, r: dict) -> None:
    rows = [[x["workers"], f"{x['loader_images_per_s']:.0f}", f"{x['loader_images_per_s_per_worker']:.0f}",
             f"{x['combined_images_per_s']:.0f}", f"{100 * x['data_wait_share']:.0f}%",
             f"{100 * x['host_wait_share']:.0f}%", f"**{x['ratio']:.2f}×**"] for x in r["results"]]
    table = common.markdown_table(["workers", "loader img/s", "per worker", "loader+step img/s", "device waits",
                                   "host waits in next()", "loader ÷ step"], rows)
    d = r["data"]
    stored = (f"{d['num_samples']} images stored at shorter side {d['resize_shorter']}, JPEG q{d['quality']}: "
              f"{d['shard_bytes_per_image'] / 1e3:.1f} kB per image in the shards "
              f"({d['source_jpeg_bytes_per_image'] / 1e3:.1f} kB as 500×375 q90 JPEG); at "
              f"{r['target_images_per_s']:.0f} img/s that is {r['storage_mb_per_s_at_target']:.0f} MB/s. "
              if "shard_bytes_per_image" in d else "")
    notes = (f"Step: {r['mode']} → {r['step_images_per_s']:.0f} img/s. Crops {d['image_size']}px, batches of "
             f"{d['batch']}, {args.batches} timed batches per run (≥ 3 per worker) after {args.warmup_batches} "
             f"(≥ 1 per worker), median of {args.reps}. "
             f"{stored}One worker decodes {r['per_worker_images_per_s']:.0f} img/s, so "
             f"{r['target_images_per_s']:.0f} img/s needs **{r['workers_needed']} loader core(s)**.")
    common.finish(args, r, table, title=TITLE, notes=notes)


if __name__ == "__main__":
    common.run_main(main)
