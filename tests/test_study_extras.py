"""`ssl-vit study` declares what it imports: every third-party module its code imports (at the top or inside a
function) is a core dependency or in the `demo` extra, the one the study needs (its default data is the demo's
digits; tests/install_test.sh installs the wheel with `[demo]`). scipy (the Student-t quantile of the study's
intervals) used to arrive only through scikit-learn; remove it from the extra and this fails."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from ssl_vit.analysis.study import paired_interval
from ssl_vit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STUDY_EXTRA = "demo"
# What `ssl-vit study` runs of its own: the command, the study's logic, the demo's data, report and figures.
STUDY_CODE = ["ssl_vit/commands/study.py", "ssl_vit/commands/demo.py", "ssl_vit/analysis", "ssl_vit/demo"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]).lower()


def resolved_extra(project: dict, extra: str) -> set[str]:
    """The distributions an extra installs, following `ssl_vit[other]` into the other extras."""
    out = set()
    for requirement in project["optional-dependencies"][extra]:
        name = _name(requirement)
        if name == _name(project["name"]):
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                out |= resolved_extra(project, inner.strip())
        else:
            out.add(name)
    return out


def imported_packages(paths: list[str]) -> set[str]:
    """Top-level names of every absolute import in those files (folders: every .py below), function bodies too."""
    names = set()
    for path in paths:
        files = [ROOT / path] if path.endswith(".py") else sorted((ROOT / path).rglob("*.py"))
        for file in files:
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_of_the_study_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(d) for d in project["dependencies"]}
    extra = resolved_extra(project, STUDY_EXTRA)
    assert "scipy" in extra and "scikit-learn" in extra and "matplotlib" in extra, extra
    ours = {"ssl_vit", "data_tools", "__future__"}
    third_party = imported_packages(STUDY_CODE) - set(sys.stdlib_module_names) - ours
    assert "scipy" in third_party  # the study's intervals import it (else this test checks nothing about it)
    distributions = packages_distributions()
    undeclared = {}
    for module in sorted(third_party):
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & (core | extra):
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported by `ssl-vit study` but in neither the dependencies nor [{STUDY_EXTRA}]: {undeclared}"


def test_the_install_test_installs_the_study_extra():
    assert f'"$WHEEL[{STUDY_EXTRA}]"' in (ROOT / "tests" / "install_test.sh").read_text()


def test_without_scipy_the_interval_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy…` now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(UserError, match=re.escape("pip install 'ssl_vit[demo]'")):
        paired_interval([1.0, 2.0], [0.0, 0.0])


# t_{0.975, df} to 17 digits, from mpmath at 40 digits (the root of the regularised incomplete beta); df = 2 also in
# closed form, 0.95 / sqrt(2 · 0.975 · 0.025). Often-quoted 4.302652729911275 and 2.2281388519649385 are off by ~1e-11.
@pytest.mark.parametrize("df, quantile", [(2, 4.3026527297494639), (4, 2.7764451051977944), (10, 2.2281388519862747)])
def test_interval_uses_the_student_t_quantile(df, quantile):
    """Differences 0, 1, …, df: the half-width is t_{0.975, df} · sd / √n."""
    diffs = [float(i) for i in range(df + 1)]
    mean, low, high = paired_interval(diffs, [0.0] * len(diffs))
    sd = (sum((d - mean) ** 2 for d in diffs) / df) ** 0.5
    assert (high - mean) == pytest.approx(quantile * sd / len(diffs) ** 0.5, rel=1e-12)
    assert (mean - low) == pytest.approx(high - mean, rel=1e-12)
