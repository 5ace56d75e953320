"""The stages of bench/gpu_check.py, one function each; `python bench/gpu_stages.py STAGE …` runs one in its own
process, so a crash, a hang or a CUDA error in one stage costs only that stage's figures.

    python bench/gpu_stages.py step --work DIR --report gpu_report.json --result step.json [--cpu-dry-run]

A stage returns its figures; the checks it ran that did not hold collect in its `Context` (a failed check fails
the stage, its figures are kept). Both go to `--result` as `{"figures": {...}, "failures": [...]}`, also part-way
through the longer stages. The measurements come from the scripts beside
this one (step.py, memory.py, loader_vs_gpu.py) and from the `ssl-vit` commands, run as a user runs them;
`--cpu-dry-run` runs each at toy size on the CPU, so this file is exercised by the test suite.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402  (bench/common.py)

from ssl_vit.train.metrics import peak_flops  # noqa: E402

ROOT = common.ROOT
PACKAGES = ("torch", "transformers", "timm", "torchvision", "accelerate", "safetensors", "webdataset", "braceexpand",
            "simplejpeg", "numpy", "pillow", "einops", "pyyaml", "tqdm", "scikit-learn", "pytest", "triton", "ssl_vit")
# How torch names the attention kernel it dispatched to (aten op, forward) → what it is.
SDPA_OPS = {"_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
            "_scaled_dot_product_flash_attention": "flash", "_scaled_dot_product_efficient_attention": "efficient",
            "_scaled_dot_product_cudnn_attention": "cudnn", "_scaled_dot_product_attention_math": "math"}
MIN_GPU_TESTS = 7  # tests/test_gpu.py: bf16, compile, fused AdamW, SDPA, no sync, resume, timm (some parametrised)


@dataclass
class Context:
    dry: bool  # --cpu-dry-run: toy sizes on the CPU
    work: Path  # scratch space: shards, runs, JSON of the bench scripts
    report: dict  # the report so far: earlier stages' figures (the loader feeds on the step's rate)
    result: Path  # where the stage's JSON goes (also partial figures, so a stage stopped by its budget keeps them)
    failures: list[str] = field(default_factory=list)

    def save(self, figures: dict) -> None:
        self.result.write_text(json.dumps({"figures": figures, "failures": self.failures}, indent=1, default=str) + "\n")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.dry else "cuda")

    def check(self, ok: bool, message: str) -> bool:
        """Record `message` as a failure unless `ok`; the stage goes on measuring."""
        if not ok:
            self.failures.append(message)
        return ok

    def earlier(self, stage: str) -> dict:
        return next((s.get("figures") or {} for s in self.report.get("stages", []) if s["name"] == stage), {})


# ------------------------------------------------------------------------------------------ 1: environment
def environment(ctx: Context) -> dict:
    """GPU, driver, CUDA, versions, the bf16 matmul rate measured, and the SDPA kernel our attention gets."""
    if not ctx.dry and not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False: no usable GPU (run with --cpu-dry-run on a CPU)")
    out = {"machine": common.machine_info(ctx.device), "versions": package_versions(),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "multiprocessors": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                      "bf16": torch.cuda.is_bf16_supported(), "nvidia_smi": nvidia_smi()}
    out["matmul_bf16_tflops"] = matmul_rate(ctx.device, 256 if ctx.dry else 8192, reps=3 if ctx.dry else 10)
    dtype = torch.float32 if ctx.dry else torch.bfloat16
    b, heads = (2, 2) if ctx.dry else (32, 12)
    out["sdpa"] = {
        "self_attention_197": attention_kernels(ctx.device, dtype, batch=b, heads=heads, tokens=197),
        "queries_98_of_197": attention_kernels(ctx.device, dtype, batch=b, heads=heads, tokens=197, queries=98),
    }
    for name, kernels in out["sdpa"].items():
        ctx.check(ctx.dry or "math" not in kernels["forward"], f"SDPA falls back to the math kernel for {name}")
    return out


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def nvidia_smi() -> str | None:
    """`nvidia-smi`'s one-line description of each GPU (name, driver, memory, clocks, power), or None."""
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def matmul_rate(device: torch.device, n: int, reps: int) -> float:
    """TFLOP/s of an n×n×n bf16 matrix product on random data (the ceiling MFU is read against)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = common.synchronizer(device)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def attention_kernels(device: torch.device, dtype: torch.dtype, *, batch: int, heads: int, tokens: int,
                      queries: int | None = None, head_dim: int = 64) -> dict[str, list[str]]:
    """The SDPA kernels our `Attention` dispatches to, forward and backward, at these shapes (from the profiler's
    aten op names): e.g. {"forward": ["flash"], "backward": ["flash"]}."""
    from torch.profiler import ProfilerActivity, profile

    from ssl_vit.models.vit import Attention

    dim = heads * head_dim
    attn = Attention(dim, heads, qkv_bias=True).to(device)
    x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)  # (B, T, D)
    index = None if queries is None else torch.arange(queries, device=device).expand(batch, queries)  # (B, K)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = attn(x, query_index=index)
        out.float().sum().backward()
        common.synchronizer(device)()
    names = {e.key.removeprefix("aten::") for e in prof.key_averages()}
    found = {"forward": set(), "backward": set()}
    for op, kind in SDPA_OPS.items():
        if op in names:
            found["forward"].add(kind)
        if f"{op}_backward" in names:
            found["backward"].add(kind)
    return {k: sorted(v) for k, v in found.items()}


# --------------------------------------------------------------------------------------- 2: pytest -m gpu
def gpu_tests(ctx: Context) -> dict:
    """`pytest -m gpu` on the GPU (in this process); in the dry run `--collect-only`: the tests measure the GPU,
    and tests/test_gpu.py says how to run what of them can run on a CPU."""
    import pytest

    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_gpu*.py"))  # where they live
    outcomes = Outcomes(lambda tests: ctx.save({"mode": "run on the GPU (stopped part-way)", "tests": tests}))
    code = pytest.main(["-m", "gpu", *files, "-p", "no:cacheprovider", "-q", "-rA",
                        *(["--collect-only"] if ctx.dry else [])], plugins=[outcomes])
    errors = [f"{t['name']}: {t['message']}" for t in outcomes.tests.values() if t["name"].startswith("collecting")]
    ctx.check(int(code) == 0, f"pytest exited {int(code)}" + (f" ({errors[0]})" if errors else ""))
    if ctx.dry:
        ctx.check(len(outcomes.collected) >= MIN_GPU_TESTS, f"only {len(outcomes.collected)} gpu tests collected")
        return {"mode": "collect-only on the CPU (not run: they measure the GPU)", "collected": outcomes.collected}
    tests = list(outcomes.tests.values())
    for t in tests:
        ctx.check(t["outcome"] == "passed", f"{t['name']}: {t['outcome']}: {t['message']}")
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"mode": "run on the GPU", "collected": outcomes.collected, **counts, "tests": tests}


class Outcomes:
    """A pytest plugin keeping each test's outcome (passed, failed, error, skipped), seconds and first message."""

    def __init__(self, on_report: Callable[[list[dict]], None]):
        self.collected: list[str] = []
        self.tests: dict[str, dict] = {}
        self.on_report = on_report  # called after every test phase with the outcomes so far

    def pytest_collection_finish(self, session) -> None:
        self.collected = [item.nodeid for item in session.items]

    def pytest_collectreport(self, report) -> None:
        if report.failed:  # a module that does not import: its tests never run, and the report must say why
            lines = report.longreprtext.splitlines() or [""]
            name = f"collecting {report.nodeid}"
            self.tests[name] = {"name": name, "outcome": "error", "seconds": 0.0,
                                "message": next((x[1:].strip() for x in lines if x.startswith("E ")), lines[-1])[:300]}

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("::", 1)[-1]
        test = self.tests.setdefault(name, {"name": name, "outcome": "passed", "seconds": 0.0, "message": ""})
        test["seconds"] += report.duration
        if report.failed:
            test["outcome"] = "failed" if report.when == "call" else "error"
            lines = report.longreprtext.splitlines() or [""]
            test["message"] = next((x[1:].strip() for x in lines if x.startswith("E ")), lines[-1])[:300]
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longreprtext
            test["message"] = str(reason)[:300]
        self.on_report(list(self.tests.values()))


# ---------------------------------------------------------------------------------------------- 3: step
def step(ctx: Context) -> dict:
    """ViT-B/16, batch 256, bf16, compiled: ours against the transformers reference (bench/step.py)."""
    import step as step_bench

    argv = ["--quick"] if ctx.dry else ["--model", "vit_base_patch16", "--batch", "256", "--precision", "bf16",
                                        "--compile", "--steps", "10", "--warmup", "3", "--reps", "5"]
    result = step_bench.main([*argv, "--json", str(ctx.work / "step.json"), "--no-record"])
    (r,) = result["results"]
    full = full_model_flops(r["model"], r["img_size"])
    peak = peak_flops(result["machine"]["gpu"], "bf16")
    figures = {k: r[k] for k in ("model", "img_size", "batch", "ours_images_per_s", "reference_images_per_s", "ratio",
                                 "ratio_best_runs", "ours_mfu", "reference_mfu", "ours_peak_mem_bytes",
                                 "reference_peak_mem_bytes", "flops_per_image")}
    figures.update(full_model_flops_per_image=full, settings=result["settings"],
                   ours_mfu_full_model=r["ours_images_per_s"] * full / peak if peak else None)
    return figures


def full_model_flops(name: str, img_size: int) -> float:
    """Training FLOPs per image if the last block computed all its outputs (the goal's 105.4 GFLOP for ViT-B/16):
    ours computes only the K scored ones, so `flops_per_image` is lower."""
    from ssl_vit.models import create_model
    from ssl_vit.objectives.corruption import corruption_counts
    from ssl_vit.objectives.mpp import MaskedPatchPrediction

    with torch.device("meta"):
        mpp = MaskedPatchPrediction(create_model(name, img_size=img_size), target="mean_color")
    side = img_size // mpp.backbone.patch_size
    k, _ = corruption_counts(1, side * side, mpp.corruption_rate, mpp.mask_prob, mpp.random_prob)
    bb = mpp.backbone
    return mpp.flops_per_image(img_size) + 3.0 * (bb.forward_flops(img_size) - bb.forward_flops(img_size, num_outputs=k))


# -------------------------------------------------------------------------------------------- 3b: memory
def memory(ctx: Context) -> dict:
    """ViT-L/16 at batch 128, without and with activation checkpointing: real peak (eager bf16 step of
    bench/step.py) next to the fake-tensor estimate."""
    import step as step_bench

    name, batch = ("vit_nano_patch4", 8) if ctx.dry else ("vit_large_patch16", 128)
    rows = []
    for checkpointing in (False, True):
        repeats = ["--steps", "1", "--warmup", "0", "--reps", "1"] if ctx.dry else ["--steps", "2", "--warmup", "1",
                                                                                   "--reps", "2"]
        argv = ["--model", name, "--batch", str(batch), "--precision", "bf16", "--no-compile", *repeats,
                "--device", ctx.device.type, "--no-record",
                "--json", str(ctx.work / f"memory_{int(checkpointing)}.json")]
        result = step_bench.main(argv + (["--grad-checkpointing"] if checkpointing else []))
        (r,) = result["results"]
        estimate = estimate_peak_bytes(name, batch, r["img_size"], checkpointing=checkpointing)
        real = r["ours_peak_mem_bytes"]
        row = {"model": name, "batch": batch, "grad_checkpointing": checkpointing, "real_peak_bytes": real,
               "reference_real_peak_bytes": r["reference_peak_mem_bytes"], "images_per_s": r["ours_images_per_s"],
               **estimate, "real_over_estimate": real / estimate["estimate_bytes"] if real else None}
        if real:
            ctx.check(abs(real / estimate["estimate_bytes"] - 1) <= 0.15,
                      f"{name} batch {batch} checkpointing={checkpointing}: real peak {real / 2**30:.1f} GiB is "
                      f"not within 15% of the estimate {estimate['estimate_bytes'] / 2**30:.1f} GiB")
        rows.append(row)
        ctx.save({"rows": rows})  # kept if the next setting runs past the budget
    return {"rows": rows}


def estimate_peak_bytes(name: str, batch: int, img_size: int, *, checkpointing: bool, precision: str = "bf16") -> dict:
    """Our step's estimated peak memory, as `ssl-vit estimate-memory --model … --batch …` computes it (its own
    functions, in this process: the paper's ViT-B/16 recipe with those keys set), or, in a checkout from before
    the estimator moved into the package, bench/memory.py's fake-tensor step."""
    try:
        from ssl_vit.commands.estimate_memory import DEFAULT_RECIPE
        from ssl_vit.config import load_config
        try:
            from ssl_vit.train.estimate import pretrain_step_memory
        except ImportError:  # a checkout from before it moved to train/ (#25)
            from ssl_vit.estimate import pretrain_step_memory
        from ssl_vit.recipe_files import resolve_recipe
    except ImportError:
        from memory import peak_memory

        estimate = peak_memory(name, "ours", batch, checkpointing=checkpointing, bf16=precision == "bf16",
                               img_size=img_size)
        return {"estimate_bytes": estimate["total"], "estimate_source": "bench/memory.py"}
    keys = {"model.name": name, "data.batch_size": batch, "data.image_size": img_size, "train.precision": precision,
            "train.grad_checkpointing": checkpointing}
    cfg = load_config(resolve_recipe(DEFAULT_RECIPE, "pretrain"), [f"{k}={v}" for k, v in keys.items()])
    return {"estimate_bytes": int(pretrain_step_memory(cfg)["peak_bytes"]["total"]),
            "estimate_source": "ssl-vit estimate-memory"}


# -------------------------------------------------------------------------------------------- 4: loader
def loader(ctx: Context) -> dict:
    """bench/loader_vs_gpu.py with 4, 8, 12 and 15 workers on photo-like shards at shorter side 256, against the
    step rate measured by the step stage (the H100 goal, 4,200 img/s, when that stage has no figure)."""
    import loader_vs_gpu

    rate = ctx.earlier("step").get("ours_images_per_s")
    source = "measured by the step stage" if rate else f"the H100 goal ({loader_vs_gpu.H100_GOAL:.0f} img/s): no step figure"
    if ctx.dry:
        argv = ["--quick"]
    else:
        argv = ["--workers", "4", "8", "12", "15", "--step-rate", f"{rate or loader_vs_gpu.H100_GOAL:.0f}",
                "--resize-shorter", "256", "--reps", "1"]
    result = loader_vs_gpu.main([*argv, "--cache-dir", str(ctx.work / "cache"), "--no-record",
                                 "--json", str(ctx.work / "loader.json")])
    rows = result["results"]
    at_most_12 = [row for row in rows if row["workers"] <= 12]
    if at_most_12 and not ctx.dry:  # the goal: 12 workers (or fewer) keep the step waiting < 5% of its time
        row = at_most_12[-1]
        ctx.check(row["data_wait_share"] < 0.05, f"{row['workers']} workers: the step waits "
                                                 f"{100 * row['data_wait_share']:.0f}% of its time for data")
    return {"step_rate_source": source, "step_images_per_s": result["step_images_per_s"],
            "per_worker_images_per_s": result["per_worker_images_per_s"], "workers_needed": result["workers_needed"],
            "data": result["data"], "rows": rows}


# ------------------------------------------------------------------------------------------ 5: end to end
E2E = {  # the ViT-B/16 recipe on the generated shards: 300 steps of 256, killed after 150, resumed from 100
    "gpu": dict(recipe="recipes/pretrain/vit_b16_mean_color.yaml", eval_recipe="recipes/eval/default.yaml", steps=300,
                kill_after=150, overrides={"data.batch_size": 256, "train.global_batch": 256, "optim.warmup_steps": 30,
                                           "train.log_every": 10, "train.checkpoint_every": 100, "data.num_workers": 12,
                                           "data.shuffle_buffer": 1000},
                eval_overrides=["data.num_workers=8", "precision=auto"]),
    "dry": dict(recipe="recipes/pretrain/smoke.yaml", eval_recipe="recipes/eval/smoke.yaml", steps=12, kill_after=7,
                overrides={"optim.warmup_steps": 2, "train.log_every": 1, "train.checkpoint_every": 5},
                eval_overrides=[]),
}


def end_to_end(ctx: Context) -> dict:
    """`ssl-vit pretrain` from shards (MFU and data wait from metrics.jsonl), `kill -9` after a checkpoint and
    `--resume auto`, then `ssl-vit eval fewshot` on the run: feature extraction images/s."""
    import loader_vs_gpu

    plan = E2E["dry" if ctx.dry else "gpu"]
    count, side = (48, 64) if ctx.dry else (512, 256)
    shards, photos = loader_vs_gpu.prepare_shards(ctx.work / "cache", count, side, 90)
    run = ctx.work / "e2e_run"
    shutil.rmtree(run, ignore_errors=True)
    overrides = {"data.train": str(shards), "output_dir": str(run), "train.total_steps": plan["steps"],
                 **plan["overrides"]}
    command = [sys.executable, "-m", "ssl_vit", "pretrain", "--config", str(ROOT / plan["recipe"]),
               *(f"{k}={v}" for k, v in overrides.items())]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(), start_new_session=True)
    reached = wait_for_step(proc, run / "metrics.jsonl", plan["kill_after"])
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its data workers, as a pre-empted node loses them
    proc.wait()
    first_s = time.perf_counter() - started
    before = records(run / "metrics.jsonl")
    started = time.perf_counter()
    resumed = subprocess.run([*command, "--resume", "auto"], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    resume_s = time.perf_counter() - started
    print(resumed.stdout[-3000:], resumed.stderr[-3000:], sep="\n")
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume auto exited {resumed.returncode}: {resumed.stderr.strip()[-500:]}")
    after = records(run / "metrics.jsonl")
    resumed_at = next((int(line.rsplit("at step", 1)[1]) for line in resumed.stdout.splitlines()
                       if line.startswith("resumed from")), None)
    ctx.check(resumed_at is not None and resumed_at > 0, "the resumed run did not start from a checkpoint")
    ctx.check([r["step"] for r in after][-1] == plan["steps"], "the resumed run did not reach the last step")
    again = {r["step"]: r["loss"] for r in after}
    overlap = [(r["loss"], again[r["step"]]) for r in before if resumed_at and r["step"] > resumed_at
               and r["step"] in again and r["loss"] is not None and again[r["step"]] is not None]
    figures = {"steps": plan["steps"], "killed_after_step": reached, "resumed_from_step": resumed_at,
               "first_run_s": first_s, "resume_run_s": resume_s, "training": steady_state(after, resumed_at, global_batch(run)),
               "loss_first": after[0]["loss"], "loss_last": after[-1]["loss"],
               "replayed_steps_max_abs_loss_diff": max((abs(a - b) for a, b in overlap), default=None)}
    ctx.save(figures)  # kept if the evaluation runs past the budget
    figures["fewshot"] = fewshot_throughput(ctx, run, photos, plan)
    return figures


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int) -> int:
    """Block until `metrics` logs `step` (or later); the step reached. Fails if the run ends first."""
    while True:
        logged = [r["step"] for r in records(metrics)]
        if logged and logged[-1] >= step:
            return logged[-1]
        if proc.poll() is not None:
            raise RuntimeError(f"the pretraining run exited {proc.returncode} before step {step}")
        time.sleep(0.05)


def records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # being written
            pass
    return out


def steady_state(rows: list[dict], resumed_at: int | None, global_batch: int) -> dict:
    """Medians over the logged windows, leaving out the first window of each process (start-up, warm-up, data
    workers starting): the run's first, and the first after `resumed_at`."""
    first_after_resume = next((r["step"] for r in rows if resumed_at is not None and r["step"] > resumed_at), None)
    steady = [r for r in rows[1:] if r["step"] != first_after_resume] or rows
    ips = common.median([r["images_per_s"] for r in steady])
    wait = common.median([r["data_wait_s"] for r in steady])
    step_s = global_batch / ips
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {"windows": len(steady), "images_per_s": ips, "data_wait_s_per_step": wait,
            "data_wait_share": wait / step_s, "mfu": common.median(mfu) if mfu else None}


def global_batch(run: Path) -> int:
    """The run's images per step, from the resolved recipe it wrote."""
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["global_batch"])


def fewshot_throughput(ctx: Context, run: Path, photos: Path, plan: dict) -> dict:
    """`ssl-vit eval fewshot` of the run on the photos labelled by the photograph they were cut from (two
    classes): images/s of the whole evaluation, feature extraction of train and test included."""
    from data_tools.build import build_split

    labelled = ctx.work / "labelled"
    if not (labelled / "_info.json").exists():
        jpgs = sorted(photos.glob("*.jpg"))
        cut = len(jpgs) * 3 // 4
        for split, members in (("train", jpgs[:cut]), ("validation", jpgs[cut:])):
            listing = ctx.work / f"{split}.csv"
            with listing.open("w", newline="") as f:  # make_photos cuts image i from photograph i % 2
                writer = csv.writer(f)
                writer.writerow(["path", "label"])
                writer.writerows([p, ("china", "flower")[int(p.stem[3:]) % 2]] for p in members)
            build_split(listing, labelled, split, resize_shorter=64 if ctx.dry else 256, quality=90, progress=False)
    out = ctx.work / "eval"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ssl_vit", "eval", "fewshot", "--checkpoint", str(run), "--train",
                           f"{labelled}:train", "--test", f"{labelled}:validation", "--config",
                           str(ROOT / plan["eval_recipe"]), "--out", str(out), *plan["eval_overrides"]],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
    if proc.returncode != 0:
        raise RuntimeError(f"ssl-vit eval fewshot exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    results = json.loads((out / "results.json").read_text())
    info = json.loads((labelled / "_info.json").read_text())["splits"]
    images = info["train"]["num_samples"] + info["validation"]["num_samples"]
    seconds = find_key(results, "seconds")["fewshot"]
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "command_wall_s": wall,
            "metrics": {k: v for k, v in find_key(results, "metrics").items() if isinstance(v, (int, float))}}


def find_key(tree: object, key: str) -> dict:
    """The first `key` at any depth of a JSON tree (results.json nests by run)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------------------ main
STAGES: dict[str, Callable[[Context], dict]] = {"environment": environment, "gpu_tests": gpu_tests, "step": step,
                                                "memory": memory, "loader": loader, "end_to_end": end_to_end}


def child_env() -> dict[str, str]:
    """The environment of the commands a stage starts: this checkout first on the path, unbuffered output."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one stage of bench/gpu_check.py")
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--report", type=Path, default=None, help="the report so far (JSON), for earlier figures")
    parser.add_argument("--result", type=Path, required=True, help="where to write this stage's JSON")
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report = json.loads(args.report.read_text()) if args.report and args.report.exists() else {}
    ctx = Context(dry=args.cpu_dry_run, work=args.work, report=report, result=args.result)
    ctx.save(STAGES[args.stage](ctx))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
