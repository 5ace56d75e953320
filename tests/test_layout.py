"""The layout's rules, checked (docs/architecture.md): no import cycles, not even ones dodged by imports inside
functions; every import goes to a floor the doc's layer table allows; data_tools imports no torch; tests import
their helpers without editing sys.path; product code reads no test hooks."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_vit", "data_tools")
# Environment variables product code may read: what `accelerate launch` / torchrun set, and the thread count.
RUNTIME_ENV = {"LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "RANK", "WORLD_SIZE",
               # set by the launchers: torch's elastic agent, `accelerate launch`, `ssl-vit launch`
               "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION", "SSL_VIT_SUPERVISOR_DIR",
               # where ssl_vit keeps what it can rebuild (member indexes, remote-shard copies): a user's choice
               "SSL_VIT_CACHE_DIR", "XDG_CACHE_HOME",
               # the user's credentials for gated https shards, and the hosts each may go to (data/remote_auth.py)
               "HF_TOKEN", "HF_ENDPOINT", "SSL_VIT_HTTP_TOKEN", "SSL_VIT_HTTP_TOKEN_HOSTS"}


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


LAYERS_HEADING = "## Layers (checked by tests/test_layout.py)"
# Imports that break the table today and cannot be moved by a test change. Each is named here so it stays
# visible; the test fails once one is gone, so the entry goes with it.
KNOWN_EXCEPTIONS = {
    # the demo runs each stage as an `ssl-vit` subcommand through cli.main (commands/ importing the entry point
    # above it); cli reaches commands/ through importlib, so this is also a cycle the import graph cannot see.
    "ssl_vit.commands.demo -> ssl_vit.cli",
}
# What would bring torch into data_tools (torch itself, or a package that imports it).
TORCH = ("torch", "torchvision", "timm", "accelerate", "transformers", "safetensors.torch")


def layer_table(text: str) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """({floor: its files and folders}, {floor: the floors it may import}) from the table under LAYERS_HEADING."""
    section = text.split(LAYERS_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and the rule
    members: dict[str, list[str]] = {}
    allowed: dict[str, set[str]] = {}
    for row in rows:
        floor, files, may_import = (re.findall(r"`([^`]+)`", cell) for cell in row.strip("|").split("|"))
        assert len(floor) == 1 and floor[0] not in members, row
        members[floor[0]] = files
        allowed[floor[0]] = set(may_import)
    return members, allowed


def floors_of(paths: dict[str, Path], members: dict[str, list[str]]) -> dict[str, str]:
    """{module: its floor}; a module in no floor or in two is an error naming it."""
    out, unplaced = {}, []
    for name, path in paths.items():
        rel = path.relative_to(REPO).as_posix()
        hits = [floor for floor, entries in members.items()
                for entry in entries if rel == entry or (entry.endswith("/") and rel.startswith(entry))]
        if len(hits) == 1:
            out[name] = hits[0]
        else:
            unplaced.append(f"{rel}: {hits or 'no floor'}")
    assert not unplaced, f"every product module belongs to one floor of the layer table: {unplaced}"
    return out


def forbidden_edges(graph: dict[str, set[str]], floor_of: dict[str, str], allowed: dict[str, set[str]]) -> list[str]:
    """`importer -> imported` for every import from one floor to another that the table does not allow."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if floor_of[a] != floor_of[b] and floor_of[b] not in allowed[floor_of[a]])


def doc_layers() -> tuple[dict[str, str], dict[str, set[str]]]:
    members, allowed = layer_table((REPO / "docs" / "architecture.md").read_text())
    return floors_of({name: path for name, (path, _) in modules().items()}, members), allowed


def test_the_layer_checker_names_a_forbidden_edge():
    text = """intro
## Layers (checked by tests/test_layout.py)

| Floor | Modules | May import |
| --- | --- | --- |
| `low` | `pkg/low/` `pkg/errors.py` | — |
| `high` | `pkg/high/` | `low` |

## Next section
| `ignored` | `pkg/` | `high` |
"""
    members, allowed = layer_table(text)
    assert members == {"low": ["pkg/low/", "pkg/errors.py"], "high": ["pkg/high/"]}
    assert allowed == {"low": set(), "high": {"low"}}
    paths = {m: REPO / f"{m.replace('.', '/')}.py" for m in ("pkg.errors", "pkg.low.a", "pkg.high.b", "pkg.high.c")}
    floor_of = floors_of(paths, members)
    assert floor_of == {"pkg.errors": "low", "pkg.low.a": "low", "pkg.high.b": "high", "pkg.high.c": "high"}
    graph = {"pkg.errors": set(), "pkg.low.a": {"pkg.errors", "pkg.high.c"}, "pkg.high.b": {"pkg.low.a", "pkg.high.c"},
             "pkg.high.c": {"pkg.errors"}}
    assert forbidden_edges(graph, floor_of, allowed) == ["pkg.low.a -> pkg.high.c"]
    try:
        floors_of({"pkg.other": REPO / "pkg" / "other.py"}, members)
    except AssertionError as e:
        assert "pkg/other.py: no floor" in str(e)
    else:
        raise AssertionError("a module in no floor was let through")


def test_the_layer_table_is_an_order():
    """No two floors may import each other, not even around a loop: the table is a stack of floors."""
    _, allowed = doc_layers()
    assert set().union(*allowed.values()) <= set(allowed), "the table allows a floor it does not define"
    assert cycles({floor: set(below) for floor, below in allowed.items()}) == []
    assert not any(floor in below for floor, below in allowed.items())


def test_every_file_and_folder_the_layer_table_names_exists():
    """A module that moves takes its row's entry with it (a stale entry would place nothing)."""
    members, _ = layer_table((REPO / "docs" / "architecture.md").read_text())
    missing = [entry for entries in members.values() for entry in entries
               if not ((REPO / entry).is_dir() if entry.endswith("/") else (REPO / entry).is_file())]
    assert not missing, f"the layer table names what is not there: {missing}"


def test_imports_go_only_where_the_layer_table_allows():
    floor_of, allowed = doc_layers()
    found = set(forbidden_edges(import_graph(), floor_of, allowed))
    new, gone = sorted(found - KNOWN_EXCEPTIONS), sorted(KNOWN_EXCEPTIONS - found)
    assert not new, "imports docs/architecture.md's layer table forbids:\n" + "\n".join(new)
    assert not gone, "no longer imported, remove from KNOWN_EXCEPTIONS (and the doc):\n" + "\n".join(gone)


def test_models_import_nothing_from_data_train_eval_or_config():
    """Not even through another module: the backbone knows nothing of data, training, evaluation or recipes."""
    graph = import_graph()
    chain = {m: [m] for m in graph if m.startswith("ssl_vit.models")}  # module reached -> how, from models/
    todo = list(chain)
    while todo:
        module = todo.pop(0)
        for target in sorted(graph[module]):
            if target not in chain:
                chain[target] = chain[module] + [target]
                todo.append(target)
    banned = {"data", "train", "eval", "config"}
    bad = sorted(" -> ".join(how) for target, how in chain.items()
                 if target.startswith("ssl_vit.") and target.split(".")[1] in banned)
    assert not bad, "models/ reaches:\n" + "\n".join(bad)


def third_party_imports(path: Path) -> set[str]:
    """Every absolute module name a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def test_data_tools_imports_no_torch():
    offenders = sorted(f"{path.relative_to(REPO)} -> {name}" for path in (REPO / "data_tools").rglob("*.py")
                       for name in third_party_imports(path)
                       if any(name == t or name.startswith(t + ".") for t in TORCH))
    assert not offenders, "data_tools must not import torch:\n" + "\n".join(offenders)


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
