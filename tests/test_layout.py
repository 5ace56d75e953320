"""The layout's rules, checked (docs/architecture.md): no import cycles, not even ones dodged by imports inside
functions; tests import their helpers without editing sys.path; product code reads no test hooks."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_vit", "data_tools")
# Environment variables product code may read: what `accelerate launch` / torchrun set, and the thread count.
RUNTIME_ENV = {"LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "RANK", "WORLD_SIZE",
               # set by the launchers: torch's elastic agent, `accelerate launch`, `ssl-vit launch`
               "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION", "SSL_VIT_SUPERVISOR_DIR"}


def modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package's __init__)} of every product module."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the product modules it imports anywhere in its file (top level or inside functions)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in mods]
                targets.update(submodules)
                if len(submodules) < len(node.names):  # names from the module itself, not submodules of it
                    targets.add(module)
        edges = set()
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_its_members():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "ssl_vit.eval.features" in graph and "ssl_vit.config.loader" in graph["ssl_vit.config.pretrain"]
    assert cycles(graph) == []


def test_tests_do_not_edit_sys_path():
    offenders = [p.name for p in (REPO / "tests").glob("*.py") if "sys.path.insert" in p.read_text()
                 and p.name != "test_layout.py"]
    assert offenders == []


def environment_reads(path: Path) -> set[str]:
    """Names read through os.environ.get / os.environ[...] / os.getenv in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


def test_product_code_reads_no_test_hooks():
    read = {name: sorted(environment_reads(path)) for name, (path, _) in modules().items()}
    read = {name: names for name, names in read.items() if names}
    assert {n for names in read.values() for n in names} <= RUNTIME_ENV, read
