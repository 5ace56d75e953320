"""Everything worth measuring on one GPU, in one call of under 8 minutes: environment, `pytest -m gpu`, the step
against the reference, ViT-L/16 memory against the estimate, the loader, and pretrain → kill → resume → eval.

    python bench/gpu_check.py                      # on the GPU machine: report into $OUT (or runs/gpu_check/…)
    python bench/gpu_check.py --cpu-dry-run        # every stage at toy size on the CPU (~1 minute; CI runs it)
    python bench/gpu_check.py --stages step loader --budget step=200
    python bench/gpu_check.py --record-from DIR/gpu_report.json    # append a GPU run's report to docs/benchmarks.md

Why this shape: the GPU machine is lent now and then, for ~15 minutes in all, one command of at most 10
minutes, and it cannot install anything (the wheels it lacks travel in `.whl/`, see `make gpu-wheels`). So the
check never needs a second try: each stage runs in its own process (bench/gpu_stages.py) under its own time
budget, a failure, a crash or a timeout costs only that stage's figures, the whole run stops inside
`--total-budget`, and the report is rewritten after every stage — if the call is cut short, what was measured
is already in `gpu_report.md` / `gpu_report.json`. This process imports no torch: even a broken install ends
in a report. The report is printed last.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES_SCRIPT = Path(__file__).resolve().parent / "gpu_stages.py"
# (name, what it measures, seconds on the GPU). Expected: ~7.5 minutes together (the step's two ViT-B/16
# compilations the most uncertain); the budgets are caps, and --total-budget caps their sum.
STAGES = [
    ("environment", "GPU, driver, versions, bf16 matmul rate, SDPA kernel for our shapes", 30),
    ("gpu_tests", "pytest -m gpu (bf16, compile, fused AdamW, SDPA, no sync, resume, timm)", 130),
    ("step", "ViT-B/16 batch 256 bf16 compiled, ours vs transformers: images/s, MFU, peak memory", 240),
    ("memory", "ViT-L/16 batch 128 ± activation checkpointing: real peak vs estimate", 75),
    ("loader", "train stream with 4/8/12/15 workers at the measured step rate (shards at 256 px)", 90),
    ("end_to_end", "ssl-vit pretrain ViT-B/16 300 steps, kill -9, --resume auto, eval fewshot", 110),
]
DRY_BUDGET = 600  # per stage in the dry run: a safety net on a loaded 2-core CI machine
TOTAL_BUDGET = 540  # leaves a minute of the device's 10 for installing the wheels and starting up
GOAL_MFU, GOAL_RATIO, GOAL_MEMORY, GOAL_WAIT = 0.45, 1.1, 0.15, 0.05
FITS_GIB = 78.0  # what an H100 80GB hands to a process (bench/memory.py's default budget)


# ---------------------------------------------------------------------------------------------- running
def run_stage(name: str, args: argparse.Namespace, budget: float, report_path: Path, log) -> dict:
    """Run one stage in its own process group under `budget` seconds; its record for the report."""
    result_path = args.work / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(STAGES_SCRIPT), name, "--work", str(args.work), "--report", str(report_path),
               "--result", str(result_path)] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log.write(f"\n===== {name} (budget {budget:.0f} s): {shlex.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and everything it started (data workers, runs)
        proc.wait()
        code = None
    seconds = time.perf_counter() - started
    record = {"name": name, "seconds": round(seconds, 1), "budget_s": round(budget), "figures": {}, "failures": []}
    if result_path.exists():
        record.update(json.loads(result_path.read_text()))
    if code is None:
        record.update(status="timeout", error=f"stopped after its budget of {budget:.0f} s")
    elif code != 0 or not result_path.exists():
        record.update(status="failed", error=last_error(args.out / "gpu_check.log") or f"exit status {code}")
    elif record["failures"]:
        record.update(status="failed", error=record["failures"][0])
    else:
        record["status"] = "passed"
    return record


def last_error(log_path: Path) -> str | None:
    """The last line of the stage's traceback (`SomeError: message`) in the log."""
    lines = log_path.read_text(errors="replace").split("\n===== ")[-1].splitlines()
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head and (head.endswith(("Error", "Exception", "Interrupt")) or head == "error") and " " not in head:
            return line.strip()[:500]
    return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [s[0] for s in STAGES]
    parser.add_argument("--out", type=Path, default=None,
                        help="where gpu_report.md/.json and gpu_check.log go (default: $OUT when set, else "
                             "runs/gpu_check/DATE)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_check" / "work",
                        help="scratch space: generated shards, runs (default runs/gpu_check/work)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every stage at toy size on the CPU")
    parser.add_argument("--stages", nargs="+", choices=names, default=names, help="run only these (default: all)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="another time budget for a stage (repeatable)")
    parser.add_argument("--total-budget", type=float, default=None,
                        help=f"seconds for all stages together (default {TOTAL_BUDGET}; dry run: none)")
    parser.add_argument("--record-from", type=Path, default=None, metavar="GPU_REPORT_JSON",
                        help="append that report to --record (docs/benchmarks.md) and exit")
    parser.add_argument("--record", type=Path, default=ROOT / "docs" / "benchmarks.md", help="file --record-from appends to")
    args = parser.parse_args(argv)
    args.budgets = {name: DRY_BUDGET if args.cpu_dry_run else seconds for name, _, seconds in STAGES}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in args.budgets or not value.replace(".", "", 1).isdigit():
            parser.error(f"--budget takes STAGE=SECONDS with STAGE one of {', '.join(names)}; got {item!r}")
        args.budgets[name] = float(value)
    if args.total_budget is None:
        args.total_budget = float("inf") if args.cpu_dry_run else TOTAL_BUDGET
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs" / "gpu_check" / stamp
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.record_from:
        record(args.record_from, args.record)
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "gpu_report.json"
    report = {"command": "python " + shlex.join(["bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
              "dry_run": args.cpu_dry_run, "started": now(), "host": platform.node(), "python": platform.python_version(),
              "stages": []}
    started = time.perf_counter()
    with (args.out / "gpu_check.log").open("a") as log:
        for name, _, _ in STAGES:
            if name not in args.stages:
                continue
            left = args.total_budget - (time.perf_counter() - started)
            if left < 10:
                report["stages"].append({"name": name, "status": "skipped", "seconds": 0, "budget_s": 0, "figures": {},
                                         "failures": [], "error": "no time left in --total-budget"})
                continue
            print(f"[gpu_check] {name} …", flush=True)
            stage = run_stage(name, args, min(args.budgets[name], left), report_path, log)
            report["stages"].append(stage)
            print(f"[gpu_check] {name}: {stage['status']} in {stage['seconds']:.0f} s"
                  + (f" — {stage['error']}" if stage.get("error") else ""), flush=True)
            write(report, args.out, started)  # every stage: a call cut short still leaves its figures
    write(report, args.out, started)
    print(markdown(report), end="", flush=True)
    return report


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write(report: dict, out: Path, started: float) -> None:
    report["finished"] = now()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["goals"] = goals(report)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_report.md").write_text(markdown(report))


# ---------------------------------------------------------------------------------------------- report
def figures(report: dict, stage: str) -> dict:
    return next((s["figures"] for s in report["stages"] if s["name"] == stage and s.get("figures")), {})


def goals(report: dict) -> list[dict]:
    """The issue's goals, each with what this run measured and whether it holds (None: not measured)."""
    step, mem, load, tests = (figures(report, k) for k in ("step", "memory", "loader", "gpu_tests"))
    out = []
    mfu = step.get("ours_mfu_full_model")
    out.append({"goal": f"ViT-B/16 MPP step ≥ {GOAL_MFU:.0%} MFU on the full model's FLOPs",
                "measured": None if mfu is None else f"{mfu:.1%} ({step['ours_images_per_s']:.0f} img/s)",
                "met": None if mfu is None else mfu >= GOAL_MFU})
    ratio = step.get("ratio") if not report["dry_run"] else None
    out.append({"goal": f"ViT-B/16 step ≥ {GOAL_RATIO}× the transformers reference",
                "measured": None if ratio is None else f"{ratio:.2f}×", "met": None if ratio is None else ratio >= GOAL_RATIO})
    rows = [r for r in mem.get("rows", []) if r.get("real_peak_bytes")]
    out.append({"goal": f"ViT-L/16 batch 128 fits in 80 GB ({FITS_GIB:g} GiB to a process); real peak within "
                        f"{GOAL_MEMORY:.0%} of the estimate",
                "measured": ", ".join(f"{'checkpointed' if r['grad_checkpointing'] else 'plain'} {gib(r['real_peak_bytes'])}"
                                      f" = {r['real_over_estimate']:.2f}× estimate" for r in rows) or None,
                "met": all(abs(r["real_over_estimate"] - 1) <= GOAL_MEMORY and r["real_peak_bytes"] <= FITS_GIB * 2**30
                           for r in rows) if rows else None})
    waits = [r for r in load.get("rows", []) if r["workers"] <= 12] if not report["dry_run"] else []
    out.append({"goal": f"loader never the bottleneck at ≤ 12 workers: data wait < {GOAL_WAIT:.0%}",
                "measured": ", ".join(f"{r['workers']}w {r['data_wait_share']:.0%}" for r in waits) or None,
                "met": waits[-1]["data_wait_share"] < GOAL_WAIT if waits else None})  # the most workers ≤ 12
    for goal, test in (("no host-device sync inside a step (bf16, fp16)", "test_no_host_device_sync_inside_a_training_step"),
                       ("resumed losses equal the uninterrupted ones on GPU", "test_resume_reproduces_the_losses")):
        # a parametrised test counts once per case (`name[bf16]`, `name[fp16]`): met when every case passed
        cases = {t["name"]: t["outcome"] for t in tests.get("tests", []) if t["name"].split("[")[0] == test}
        out.append({"goal": goal, "measured": ", ".join(f"{name}: {result}" for name, result in cases.items()) or None,
                    "met": all(r == "passed" for r in cases.values()) if cases else None})
    return out


def markdown(report: dict) -> str:
    env = figures(report, "environment")
    gpu = env.get("gpu") or {}
    versions = env.get("versions") or {}
    lines = [f"# GPU check{' (CPU dry run)' if report['dry_run'] else ''} — {report['started']}", "",
             f"`{report['command']}`  ", f"Device: {gpu.get('nvidia_smi') or gpu.get('name') or 'no GPU'}; "
             f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; " + ", ".join(
                 f"{k} {v}" for k, v in versions.items() if k in ("torch", "transformers", "timm", "accelerate",
                                                                 "webdataset", "simplejpeg", "triton") and v),
             f"Total {report.get('total_seconds', 0):.0f} s.", "", "## Stages", "",
             "| stage | status | seconds / budget | first problem |", "|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} / {s['budget_s']} | "
                     f"{(s.get('error') or '').replace('|', '/')} |")
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in report.get("goals", []):
        lines.append(f"| {g['goal']} | {g['measured'] or 'not measured'} | "
                     f"{ {True: 'yes', False: '**no**', None: '–'}[g['met']] } |")
    for section in (env_section, tests_section, step_section, memory_section, loader_section, e2e_section):
        try:
            lines += section(report)
        except (KeyError, TypeError, ValueError) as err:  # partial figures of a stopped stage: JSON has them all
            lines += ["", f"({section.__name__} could not be drawn from partial figures: {err!r}; see gpu_report.json)"]
    return "\n".join(lines) + "\n"


def gib(b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def times(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def env_section(report: dict) -> list[str]:
    env = figures(report, "environment")
    if not env:
        return []
    sdpa = "; ".join(f"{k}: forward {'+'.join(v['forward']) or '?'}, backward {'+'.join(v['backward']) or '?'}"
                     for k, v in env["sdpa"].items())
    return ["", "## Environment", "", f"bf16 matmul: {env['matmul_bf16_tflops']:.0f} TFLOP/s measured. "
            f"SDPA kernels for our attention shapes — {sdpa}."]


def tests_section(report: dict) -> list[str]:
    t = figures(report, "gpu_tests")
    if not t:
        return []
    if "tests" not in t:
        return ["", "## pytest -m gpu", "", f"{t['mode']}: {len(t['collected'])} tests collected."]
    rows = [f"| {x['name']} | {x['outcome']} | {x['seconds']:.1f} | {x['message'].replace('|', '/')} |" for x in t["tests"]]
    return ["", "## pytest -m gpu", "", "| test | outcome | s | message |", "|---|---|---|---|", *rows]


def step_section(report: dict) -> list[str]:
    s = figures(report, "step")
    if not s:
        return []
    return ["", "## Step", "", "| model | batch | ours img/s | ref img/s | ours ÷ ref | MFU ours (computed / full-model "
            "FLOPs) | MFU ref | peak ours / ref |", "|---|---|---|---|---|---|---|---|",
            f"| {s['model']} | {s['batch']} | {s['ours_images_per_s']:.0f} | {s['reference_images_per_s']:.0f} | "
            f"{s['ratio']:.2f}× (best runs {s['ratio_best_runs']:.2f}×) | {pct(s['ours_mfu'])} / "
            f"{pct(s['ours_mfu_full_model'])} | {pct(s['reference_mfu'])} | {gib(s['ours_peak_mem_bytes'])} / "
            f"{gib(s['reference_peak_mem_bytes'])} |",
            "", f"FLOPs per image: {s['flops_per_image'] / 1e9:.1f} G computed, {s['full_model_flops_per_image'] / 1e9:.1f} G "
            f"full model. Settings: {s['settings']}."]


def memory_section(report: dict) -> list[str]:
    m = figures(report, "memory")
    if not m:
        return []
    rows = [f"| {r['model']} | {r['batch']} | {'yes' if r['grad_checkpointing'] else 'no'} | {gib(r['real_peak_bytes'])} | "
            f"{gib(r['estimate_bytes'])} ({r['estimate_source']}) | "
            f"{times(r['real_over_estimate'])} | "
            f"{gib(r['reference_real_peak_bytes'])} | {r['images_per_s']:.0f} |" for r in m["rows"]]
    return ["", "## Memory (eager bf16 step)", "", "| model | batch | checkpointing | real peak | estimate | real ÷ "
            "estimate | HF ref real peak | img/s |", "|---|---|---|---|---|---|---|---|", *rows]


def loader_section(report: dict) -> list[str]:
    x = figures(report, "loader")
    if not x:
        return []
    rows = [f"| {r['workers']} | {r['loader_images_per_s']:.0f} | {r['combined_images_per_s']:.0f} | "
            f"{pct(r['data_wait_share'])} | {r['ratio']:.2f}× |" for r in x["rows"]]
    return ["", "## Loader", "", f"Step rate {x['step_images_per_s']:.0f} img/s ({x['step_rate_source']}); one worker "
            f"{x['per_worker_images_per_s']:.0f} img/s → {x['workers_needed']} workers needed.", "",
            "| workers | loader img/s | loader + step img/s | device waits | loader ÷ step |", "|---|---|---|---|---|", *rows]


def e2e_section(report: dict) -> list[str]:
    e = figures(report, "end_to_end")
    if not e:
        return []
    t, f = e["training"], e.get("fewshot")
    lines = ["", "## End to end", "",
            f"{e['steps']} steps: {t['images_per_s']:.0f} img/s, MFU {pct(t['mfu'])}, data wait "
            f"{t['data_wait_s_per_step'] * 1e3:.1f} ms per step ({pct(t['data_wait_share'])}) — medians of "
            f"{t['windows']} logged windows. Loss {e['loss_first']:.3f} → {e['loss_last']:.3f}. Killed (-9) after step "
            f"{e['killed_after_step']} ({e['first_run_s']:.0f} s), resumed from step {e['resumed_from_step']} "
            f"({e['resume_run_s']:.0f} s to the end); replayed steps' losses differ by at most "
            f"{e['replayed_steps_max_abs_loss_diff']}."]
    if f:
        shots = ", ".join(f"{k.split('/')[-1]} {v:.1f}%" for k, v in f["metrics"].items() if re.fullmatch(r"fewshot/\d+shot", k))
        lines.append(f"Few-shot evaluation: {f['images']} images in {f['seconds']} s = {f['images_per_s']:.0f} img/s "
                     f"(feature extraction included; {f['command_wall_s']:.0f} s with start-up); accuracy {shots}.")
    return lines


# ---------------------------------------------------------------------------------------------- record
def record(report_json: Path, docs: Path) -> None:
    """Append a GPU run's report to docs/benchmarks.md as a dated section with its command and machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    report = json.loads(report_json.read_text())
    machine = figures(report, "environment").get("machine") or {
        "platform": "?", "cpus": "?", "processor": "?", "torch_threads": "?", "python": report.get("python"),
        "torch": "?", "gpu": None}
    body = markdown(report).split("\n", 3)[3]  # without the title and command lines: the record adds its own
    common.append_record(docs, title="bench/gpu_check.py — the GPU check" + (" (CPU dry run)" if report["dry_run"] else ""),
                         command=report["command"], machine=machine, body=body)
    print(f"appended {report_json} to {docs}")


if __name__ == "__main__":
    main()
