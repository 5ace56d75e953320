"""The benchmarks in bench/ run end to end in their `--quick` setting and report what the docs promise.

Each runs in a subprocess, as a user runs it (`python bench/X.py --quick --json`): stdout must be exactly one
JSON document with `ratio` and both raw rates, consistent with each other, and a `--quick` run must not append
to the record file. The helpers in bench/common.py are checked in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from background import Background, selected

from ssl_vit.train.metrics import peak_flops

ROOT = Path(__file__).resolve().parents[1]


def bench_command(script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, str(ROOT / "bench" / script), *args], {**os.environ, "OMP_NUM_THREADS": "1"}


def bench_result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # stdout holds the JSON alone; the table and progress went to stderr


def run_bench(script: str, *args: str, timeout: int = 120) -> dict:
    command, env = bench_command(script, *args)
    return bench_result(subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout))


# Benchmarks whose test asserts nothing that depends on their timing: they start with the module and run while
# the step and reader benchmarks do (each is one process at one thread). data.py and exactly_once.py compare
# timings with thresholds: they run alone, after these have been collected.
BACKGROUND = {"test_loader_vs_gpu_quick_reports_loader_and_step_rates": "loader_vs_gpu.py",
              "test_memory_quick_counts_parameters_and_adamw_state_exactly": "memory.py"}


@pytest.fixture(scope="module", autouse=True)
def background_benches(request, tmp_path_factory) -> Iterator[dict[str, Background]]:
    """{script: its run, started with the module} for the selected tests of `BACKGROUND`."""
    runs = {}
    for test, script in BACKGROUND.items():
        if selected(request, test):
            tmp = tmp_path_factory.mktemp(script.removesuffix(".py"))
            args = {"loader_vs_gpu.py": ["--cache-dir", str(tmp / "cache"), "--no-record"], "memory.py": []}[script]
            command, env = bench_command(script, "--quick", "--json", *args)
            runs[script] = Background(command, tmp / "bench", env=env)
    yield runs
    for run in runs.values():
        run.kill()


@pytest.mark.timeout(120)
def test_step_quick_reports_both_rates_and_their_ratio(tmp_path: Path) -> None:
    record = tmp_path / "bench.md"
    out = run_bench("step.py", "--quick", "--json", "--record", str(record))
    assert out["benchmark"] == "step" and out["settings"]["device"] == "cpu"
    (r,) = out["results"]
    assert r["model"] == "vit_nano_patch4" and r["img_size"] == 32 and r["batch"] == 8
    assert r["ours_images_per_s"] > 0 and r["reference_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["ours_images_per_s"] / r["reference_images_per_s"])
    assert out["ratio"] == r["ratio"]
    assert len(r["ours_runs_s"]) == len(r["reference_runs_s"]) == 2  # --quick: 2 interleaved blocks each
    assert r["ours_peak_mem_bytes"] is None and r["ours_mfu"] is None  # CPU: not measured, said so
    assert not record.exists()  # --quick is a smoke setting, never recorded


@pytest.mark.timeout(120)
def test_reader_quick_reads_every_sample_and_reports_the_ratio(tmp_path: Path) -> None:
    record = tmp_path / "bench.md"
    out = run_bench("reader.py", "--quick", "--json", "--record", str(record))
    assert out["benchmark"] == "reader" and out["samples"] == 100  # 2 shards × 50, both readers saw all of them
    assert out["ratio"] == pytest.approx(out["ours_samples_per_s"] / out["webdataset_samples_per_s"])
    assert out["ours_us_per_sample"] == pytest.approx(1e6 / out["ours_samples_per_s"])
    assert len(out["runs_s"]["ours"]) == len(out["runs_s"]["webdataset"]) == 2
    assert not record.exists()


@pytest.mark.timeout(120)
def test_loader_vs_gpu_quick_reports_loader_and_step_rates(background_benches) -> None:
    out = bench_result(background_benches["loader_vs_gpu.py"].finish(timeout=120))
    assert out["step_images_per_s"] > 0 and out["loader_images_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["loader_images_per_s"] / out["step_images_per_s"])
    (r,) = out["results"]
    assert r["workers"] == 1 and 0.0 <= r["data_wait_share"] <= 1.0
    assert out["workers_needed"] == -(-out["target_images_per_s"] // out["per_worker_images_per_s"])
    assert out["data"]["num_samples"] == 48  # the generated --quick data set, all of it in the shards
    assert out["data"]["shard_bytes_per_image"] > 0


@pytest.mark.timeout(120)
def test_memory_quick_counts_parameters_and_adamw_state_exactly(background_benches) -> None:
    """The fake-tensor estimate holds hand-computable parts exactly: fp32 parameters (4 bytes each) and fused
    AdamW's two moments plus one fp32 step count per tensor; checkpointing cuts the activations."""
    from ssl_vit.models import create_model
    from ssl_vit.objectives.mpp import MaskedPatchPrediction

    out = bench_result(background_benches["memory.py"].finish(timeout=120))
    params = list(MaskedPatchPrediction(create_model("vit_nano_patch4")).parameters())
    param_bytes = 4 * sum(p.numel() for p in params)
    plain, checkpointed = out["results"]
    assert (plain["grad_checkpointing"], checkpointed["grad_checkpointing"]) == (False, True)
    assert plain["img_size"] == 32
    for r in out["results"]:
        assert r["ours"]["params"] == r["reference"]["params"] == param_bytes  # same weights in both
        assert r["ours"]["optimizer"] == 2 * param_bytes + 4 * len(params)
        assert r["ours_peak_bytes"] == r["ours"]["total"] >= sum(v for k, v in r["ours"].items() if k != "total")
        assert r["ratio"] == pytest.approx(r["reference_peak_bytes"] / r["ours_peak_bytes"])
        assert r["fits"] is True
    assert checkpointed["ours"]["activations"] < 0.6 * plain["ours"]["activations"]
    assert out["ratio"] == min(r["ratio"] for r in out["results"])


def test_interleaved_alternates_the_order_and_times_each_block(bench_common) -> None:
    calls: list[str] = []
    times = bench_common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3,
                                     sync=lambda: calls.append("sync"))
    assert [c for c in calls if c != "sync"] == ["a", "b", "b", "a", "a", "b"]
    assert calls.count("sync") == 12  # before and after every block
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert bench_common.median([3.0, 1.0, 2.0]) == 2.0


def test_append_record_writes_header_once_then_sections(tmp_path: Path, bench_common) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    machine = bench_common.machine_info("cpu")
    for i in range(2):
        bench_common.append_record(path, title=f"bench/x.py run {i}", command="python bench/x.py --y",
                                   machine=machine, body="| a |\n|---|\n| 1 |", notes="A note.")
    text = path.read_text()
    assert text.count("# Benchmarks") == 1 and text.count("## bench/x.py run") == 2
    assert "`python bench/x.py --y`" in text and "A note." in text
    assert f"{machine['cpus']} CPUs" in text and f"torch {machine['torch']}" in text
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "fp32") == 51e12
    assert peak_flops(None, "bf16") is None


@pytest.mark.timeout(240)  # the checks' on/off pair and their isolated cost take ~30 s more
def test_data_quick_reports_stream_and_build_ratios():
    r = run_bench("data.py", "--quick", "--json", timeout=230)
    assert r["ratio"] == pytest.approx(r["ours_images_per_s"] / r["baseline_images_per_s"])
    assert r["ours_images_per_s"] > 0 and r["baseline_images_per_s"] > 0 and set(r["workers"]) == {"1", "2"}
    assert r["checks_ratio"] == pytest.approx(r["checked_images_per_cpu_s"] / r["unchecked_images_per_cpu_s"])
    assert len(r["checked_cpu_runs"]) == len(r["unchecked_cpu_runs"]) == 1 and 0 < r["isolated_checks"]["ratio"] <= 1
    assert r["isolated_checks"]["ledger_us"] > 0
    for check in ("full", "header"):
        assert r["build"][check]["ratio"] == pytest.approx(r["build"][check]["mb_per_s"] / r["build"]["tar_mb_per_s"])
        assert r["build"][check]["ratio_fsync"] == pytest.approx(
            r["build"][check]["mb_per_s"] / r["build"]["tar_fsync_mb_per_s"])


@pytest.mark.timeout(120)
def test_exactly_once_quick_compares_with_the_stream_before_and_measures_the_shuffle() -> None:
    out = run_bench("exactly_once.py", "--quick", "--json", "--no-record")
    assert out["ratio"] == pytest.approx(out["now_images_per_cpu_s"] / out["before_images_per_cpu_s"])
    assert out["now_images_per_cpu_s"] > 0 and out["before_images_per_cpu_s"] > 0 and out["index_ms_per_shard"] > 0
    q = out["shuffle"]
    uniform = q["stored class by class / uniform permutation"]["distinct_classes_per_16"]
    assert 15.5 < uniform < 16  # 16 draws of 1,000 classes: 15.88 expected
    assert q["stored shuffled (the build's default) / global order, shuffle_buffer 10,000"]["distinct_classes_per_16"] > 15.5
    # class-sorted shards: a window of ~8 shards holds ~8 classes, so fewer distinct classes than uniform
    assert q["stored class by class / global order, shuffle_buffer 10,000"]["distinct_classes_per_16"] < uniform
