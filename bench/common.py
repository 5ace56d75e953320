"""What every script in bench/ shares: the common options, the machine description, interleaved timing,
the table, the JSON output and the dated section appended to docs/benchmarks.md.

A benchmark script does

    parser = argparse.ArgumentParser(...); add_common_args(parser); args = parser.parse_args(argv)
    times = interleaved({"ours": run_a, "reference": run_b}, reps=5, sync=synchronizer(device))  # A B B A A B
    result = {"command": command_line("bench/x.py", argv), "machine": machine_info(device), "ratio": ..., ...}
    table = markdown_table(["impl", "images/s"], rows)
    finish(args, result, table, title="bench/x.py — what it measures", notes="settings, in a sentence")

and `if __name__ == "__main__": run_main(main)`, so bad user input ends in one line.

Why interleaved: on a shared machine (2 cores, other jobs) the speed drifts by tens of percent over a minute;
alternating A B B A … exposes both implementations to the same drift, and the median of the repetitions
drops the runs a neighbour's burst spoiled.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
CACHE = ROOT / "bench" / ".cache"  # generated data, reused between runs (git-ignored)
DOCS_HEADER = "# Benchmarks\n\nAppended by the scripts in bench/; newest last.\n"



# ------------------------------------------------------------------------------------------ options
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """`--json [PATH]`, `--quick`, `--no-record`, `--record PATH`, `--threads N`."""
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the figures as JSON to PATH, or to stdout when no PATH is given "
                             "(the table then goes to stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds); not recorded")
    parser.add_argument("--no-record", action="store_true", help="do not append the results to docs/benchmarks.md")
    parser.add_argument("--record", type=Path, default=DOCS, metavar="PATH", help="markdown file to append to")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, i.e. the cores it may use)")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as a user would type it, for the record."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *(shlex.quote(a) for a in args)])


# ------------------------------------------------------------------------------------------ machine
def machine_info(device: str | torch.device | None = None) -> dict:
    """Platform, CPU count, threads, Python, torch and (when CUDA is used or present) the GPU's name."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device or "cuda"))
    return info


def describe_machine(m: Mapping) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"{m['platform']}, {m['cpus']} CPUs ({m['processor']}), {m['torch_threads']} torch threads{gpu}, "
            f"Python {m['python']}, torch {m['torch']}")


# ------------------------------------------------------------------------------------------- timing
def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU, whose ops run synchronously)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved(
    blocks: Mapping[str, Callable[[], None]],
    *,
    reps: int,
    sync: Callable[[], None] = lambda: None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each block, run in turn `reps` times; one `sync` before and after each block.

    The order flips every repetition (A B, B A, A B, …), so neither block always runs first, right after the
    other one has filled the caches or left garbage to collect. A block is a whole timed unit (e.g. `steps`
    training steps); divide by its size for per-step figures.
    """
    times: dict[str, list[float]] = {name: [] for name in blocks}
    names = list(blocks)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            blocks[name]()
            sync()
            times[name].append(time.perf_counter() - start)
            if progress is not None:
                progress(name, rep)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_main(main: Callable[[], object]) -> None:
    """Run a benchmark's `main()`; a problem with the user's input (bad shards, options) ends in one line, exit 2."""
    from data_tools.errors import DataToolsError
    from ssl_vit.errors import UserError

    try:
        main()
    except (UserError, DataToolsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; floats keep what the caller formatted (pass strings for control)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def append_record(path: Path, *, title: str, command: str, machine: Mapping, body: str, notes: str = "") -> None:
    """Append `## title — date` with the command, the machine, `notes` and `body` (tables) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = "" if path.exists() and path.stat().st_size else DOCS_HEADER
    section = f"\n## {title} — {date}\n\n`{command}`  \nMachine: {describe_machine(machine)}.\n"
    if notes:
        section += f"\n{notes.strip()}\n"
    section += f"\n{body.strip()}\n"
    with path.open("a") as f:
        f.write(head + section)


def finish(args: argparse.Namespace, result: dict, body: str, *, title: str, notes: str = "") -> None:
    """Print the table (stderr when JSON goes to stdout), write the JSON, append the record unless told not to.

    `result` must already hold `command` and `machine`; `--quick` runs are never recorded (smoke settings).
    """
    to_stdout = args.json == "-"
    print(body if not notes else f"{body}\n\n{notes.strip()}", file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps(result, indent=1, default=str)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if not (args.quick or args.no_record):
        append_record(args.record, title=title, command=result["command"], machine=result["machine"], body=body,
                      notes=notes)
        print(f"appended to {args.record}", file=sys.stderr)
