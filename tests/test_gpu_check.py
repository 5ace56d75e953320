"""bench/gpu_check.py cannot rot between GPU runs: its CPU dry run passes every stage at toy size and writes the
report, a stage over its budget or failing still leaves a report that says so, and the record goes to the docs."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from background import Background, selected

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["environment", "gpu_tests", "step", "memory", "loader", "end_to_end"]


DRY_RUN_TEST = "test_cpu_dry_run_passes_every_stage_and_prints_the_report_last"


def gpu_check_command(*args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return [sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], env


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    command, env = gpu_check_command(*args)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def dry_run(request, tmp_path_factory) -> Iterator[tuple[Path, Background] | None]:
    """The CPU dry run (~90 s, its stages one after another in one process at a time: one core) starts with the
    module and runs while the module's other tests use the other core; its test, the module's last, collects it."""
    if not selected(request, DRY_RUN_TEST):
        yield None
        return
    tmp = tmp_path_factory.mktemp("gpu_check_dry_run")
    out, work = tmp / "out", tmp / "work"
    command, env = gpu_check_command("--cpu-dry-run", "--out", str(out), "--work", str(work))
    background = Background(command, tmp / "gpu_check", env=env)
    yield out, background
    background.kill()


def test_a_stage_past_its_budget_is_stopped_and_the_report_still_written(tmp_path: Path) -> None:
    proc = gpu_check("--cpu-dry-run", "--stages", "step", "--budget", "step=0.2", "--out", str(tmp_path),
                     "--work", str(tmp_path / "work"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (stage,) = json.loads((tmp_path / "gpu_report.json").read_text())["stages"]
    assert (stage["status"], stage["error"]) == ("timeout", "stopped after its budget of 0 s")
    assert "| step | timeout |" in (tmp_path / "gpu_report.md").read_text()


def test_a_failing_stage_is_recorded_with_its_error_and_recorded_in_the_docs(tmp_path: Path) -> None:
    """Without a GPU the real (not dry) environment stage fails with its one-line reason; the others would go on.
    `--record-from` appends the report to the benchmarks file."""
    proc = gpu_check("--stages", "environment", "--out", str(tmp_path), "--work", str(tmp_path / "work"), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (stage,) = json.loads((tmp_path / "gpu_report.json").read_text())["stages"]
    assert stage["status"] == "failed"
    assert stage["error"].startswith("RuntimeError: torch.cuda.is_available() is False: no usable GPU")
    docs = tmp_path / "benchmarks.md"
    recorded = gpu_check("--record-from", str(tmp_path / "gpu_report.json"), "--record", str(docs), timeout=120)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    text = docs.read_text()
    assert text.count("## bench/gpu_check.py — the GPU check") == 1 and "| environment | failed |" in text
    assert "`python bench/gpu_check.py --stages environment" in text


def test_gpu_tests_fail_without_cuda_instead_of_skipping(tmp_path: Path) -> None:
    """`pytest -m gpu` where torch sees no GPU is a failure naming the reason: a silent skip would read as a pass."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the gpu tests would run")
    env = {k: v for k, v in os.environ.items() if k != "SSL_VIT_TEST_DEVICE"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-k", "fused_adamw",
                           "-p", "no:cacheprovider", "-q"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "pytest -m gpu needs a CUDA device and torch sees none" in proc.stdout
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout


# What the GPU machine ships (docs/benchmarks.md, "The GPU check"); anything else must travel as a wheel.
ON_THE_GPU_MACHINE = {"torch", "accelerate", "einops", "pyyaml", "pillow", "tqdm", "safetensors", "numpy",
                      "transformers", "timm", "torchvision", "matplotlib", "scikit-learn", "pytest", "pytest-timeout",
                      "hypothesis", "huggingface_hub"}


def test_documented_gpu_command_and_wheels_cover_the_dependencies() -> None:
    """README and docs/benchmarks.md give the same one-line command, short enough for the device tool (2,000
    characters); `make gpu-wheels` fetches every runtime dependency the GPU machine lacks."""
    import re
    import tomllib

    commands = {doc: [line for line in (ROOT / doc).read_text().splitlines() if line.startswith("python3 -m pip install")]
                for doc in ("README.md", "docs/benchmarks.md")}
    (readme,), (docs,) = commands.values()
    assert readme == docs and len(readme) < 2000
    assert "--no-index --no-deps" in readme and ".whl/*.whl" in readme and readme.endswith("python3 bench/gpu_check.py")
    wheels = re.search(r"^GPU_WHEELS \?= (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    fetched = {w.split("==")[0].lower() for w in wheels}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert needed - ON_THE_GPU_MACHINE == fetched


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_dry_run_passes_every_stage_and_prints_the_report_last(dry_run) -> None:
    out, background = dry_run
    proc = background.finish(timeout=880)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == STAGES and report["dry_run"] is True
    assert {n: (s["status"], s.get("error")) for n, s in stages.items()} == {n: ("passed", None) for n in STAGES}
    assert proc.stdout.endswith((out / "gpu_report.md").read_text())  # the report is printed last
    assert sorted(os.listdir(out)) == ["gpu_check.log", "gpu_report.json", "gpu_report.md"]  # $OUT holds ≤ 8 files

    env = stages["environment"]["figures"]
    assert env["versions"]["torch"] and env["machine"]["gpu"] is None
    assert env["sdpa"]["self_attention_197"]["forward"] and env["sdpa"]["queries_98_of_197"]["backward"]
    collected = stages["gpu_tests"]["figures"]["collected"]
    assert "collect-only" in stages["gpu_tests"]["figures"]["mode"] and len(collected) >= 7
    assert any("test_no_host_device_sync" in t for t in collected) and any("timm" in t for t in collected)
    step = stages["step"]["figures"]
    assert step["ratio"] == pytest.approx(step["ours_images_per_s"] / step["reference_images_per_s"])
    assert step["full_model_flops_per_image"] > step["flops_per_image"] > 0  # ours skips the unscored outputs
    memory = stages["memory"]["figures"]["rows"]
    assert [r["grad_checkpointing"] for r in memory] == [False, True]
    assert memory[1]["estimate_bytes"] < memory[0]["estimate_bytes"]  # checkpointing needs less
    assert {r["estimate_source"] for r in memory} == {"ssl-vit estimate-memory"}
    loader = stages["loader"]["figures"]
    assert loader["step_rate_source"] == "measured by the step stage" and loader["rows"][0]["loader_images_per_s"] > 0
    e2e = stages["end_to_end"]["figures"]
    assert e2e["resumed_from_step"] == e2e["killed_after_step"] // 5 * 5 >= 5  # the last checkpoint before the kill
    # On the CPU the replayed steps after the resume compute exactly what the killed run had computed.
    assert e2e["replayed_steps_max_abs_loss_diff"] == 0.0
    assert e2e["training"]["images_per_s"] > 0 and e2e["fewshot"]["images"] == 48
    assert all(g["met"] is None for g in report["goals"])  # a dry run measures no GPU goal
    assert_gpu_figures_render(report)


def assert_gpu_figures_render(report: dict) -> None:
    """The dry run's figures with what only a GPU measures filled in (MFU, peaks, test outcomes): every section of
    the report is drawn and every goal judged — the report of the one GPU call must not break on its own figures."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu = copy.deepcopy(report)
    gpu["dry_run"] = False
    figures = {s["name"]: s["figures"] for s in gpu["stages"]}
    figures["step"].update(ours_mfu=0.44, reference_mfu=0.40, ours_mfu_full_model=0.46, ratio=1.15,
                           ours_peak_mem_bytes=17 * 2**30, reference_peak_mem_bytes=19 * 2**30)
    for row, real in zip(figures["memory"]["rows"], (26 * 2**30, 7 * 2**30)):
        row.update(real_peak_bytes=real, estimate_bytes=int(real / 1.05), real_over_estimate=1.05)
    figures["loader"]["rows"][-1]["data_wait_share"] = 0.01
    figures["gpu_tests"]["tests"] = [
        {"name": "test_no_host_device_sync_inside_a_training_step[bf16]", "outcome": "passed", "seconds": 3.0, "message": ""},
        {"name": "test_no_host_device_sync_inside_a_training_step[fp16]", "outcome": "passed", "seconds": 3.0, "message": ""},
        {"name": "test_resume_reproduces_the_losses", "outcome": "failed", "seconds": 30.0, "message": "assert 1 == 2"}]
    met = [g["met"] for g in gpu_check.goals(gpu)]
    assert met == [True, True, True, True, True, False]
    gpu["goals"] = gpu_check.goals(gpu)
    text = gpu_check.markdown(gpu)
    assert "could not be drawn" not in text and "| test_resume_reproduces_the_losses | failed | 30.0 | assert 1 == 2 |" in text
    assert "44.0% / 46.0%" in text and "26.0 GiB" in text and "| resumed losses equal the uninterrupted ones on GPU" in text
