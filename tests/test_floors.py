"""The dependency floors in pyproject.toml are versions that ran, and cannot drift from what runs them.

`make test-floors` installs the package with `-c tests/floors.txt` (every runtime dependency but torch pinned at
its floor, and an extra where its newest release cannot join them) and runs the suite; torch's floor was run once
by hand, on the CPU, and docs/benchmarks.md records that run. So: each pin in tests/floors.txt equals its floor in
pyproject.toml, every runtime dependency but torch has one, and torch's floor is the version of the recorded run.
Raise a floor in one place only and this fails.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement  # packaging: accelerate depends on it
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"torch"}  # `make test-floors` takes torch==2.13.0, the local CPU wheel; its floor ran once (docs)


def _floors(extras: bool = False) -> dict[str, Version]:
    """pyproject.toml's runtime dependencies (with `extras`, the extras' too) as {name: floor}; each runtime one
    is exactly one `>=` bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [(line, True) for line in project["dependencies"]]
    if extras:
        lines += [(line, False) for group in project["optional-dependencies"].values() for line in group]
    out = {}
    for line, runtime in lines:
        req = Requirement(line)
        if not runtime and len(req.specifier) != 1:
            continue  # ssl_vit[analysis], ruff: no floor
        (spec,) = req.specifier  # a single bound: a ceiling or a second bound would go unrun
        assert spec.operator == ">=", f"{line}: a floor is written `name>=version`"
        out[_canonical(req.name)] = Version(spec.version)
    return out


def _pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "tests" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"tests/floors.txt: {line}: a pin is written `name==version`"
            out[_canonical(req.name)] = Version(spec.version)
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_floor_but_torchs_is_pinned() -> None:
    missing = _floors().keys() - UNPINNED - _pins().keys()
    assert not missing, f"tests/floors.txt pins no {sorted(missing)}: `make test-floors` would not run their floors"


def test_every_pin_is_its_floor_in_pyproject() -> None:
    floors, pins = _floors(extras=True), _pins()
    assert not pins.keys() & UNPINNED, "tests/floors.txt pins torch, which only the local CPU wheel may be here"
    differ = {name: (str(pin), str(floors.get(name))) for name, pin in pins.items() if floors.get(name) != pin}
    assert not differ, f"tests/floors.txt pins differ from pyproject.toml's floors (pin, floor): {differ}"


def test_torchs_floor_is_the_torch_of_the_recorded_run() -> None:
    """docs/benchmarks.md's floor section names the torch it ran (`torch 2.6.0+cu124`, say); the floor is it."""
    section = (ROOT / "docs" / "benchmarks.md").read_text().split("\n## The oldest torch", 1)
    assert len(section) == 2, "docs/benchmarks.md has no '## The oldest torch' section recording the floor's run"
    ran = re.search(r"\btorch (\d+\.\d+\.\d+)", section[1])
    assert ran, "the '## The oldest torch' section names no `torch X.Y.Z`"
    assert _floors()["torch"] == Version(ran.group(1)), (_floors()["torch"], ran.group(1))


def test_the_makefile_runs_the_suite_on_the_pins() -> None:
    make = (ROOT / "Makefile").read_text()
    target = make.split("\ntest-floors:", 1)[1].split("\n\n", 1)[0]
    assert "-c tests/floors.txt" in target and "pytest" in target, target
