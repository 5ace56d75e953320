"""Every write goes through its package's one writer (issue #25; the rule is stated in `ssl_vit/files.py`).

ssl_vit writes files and creates directories only through `ssl_vit/files.py` (atomic, and a full disk, a read-only
file system or a file in the way as one line). data_tools, which imports neither torch nor ssl_vit, has its own:
`data_tools/files.py` for its small files and folders, `data_tools/tarwriter.py` for the shards it streams.

`find_writes` parses a module with `ast` and lists every call that writes to the file system: `open` (and
`Path.open`, `io.open`, `gzip.open`, `tarfile.open`, …) in a mode with w/a/x/+, `os.open` with a writing flag,
`write_text`/`write_bytes`/`touch`/`mkdir`/`symlink_to`, `os.replace`/`os.rename`/`os.makedirs`/…,
`Path.replace`/`Path.rename`, `shutil.copy*`/`move`, `torch.save`, `json.dump`/`pickle.dump`/`yaml.dump` to a
stream, `np.save*`/`tofile`, `savefig`, safetensors' `save_file`, PIL's `Image.save`, `save_pretrained`,
`tempfile.mkdtemp`/`mkstemp`/`NamedTemporaryFile`/`TemporaryDirectory`. A write is fine inside a function handed
to `atomic_write` (it writes into the file object atomic_write opened) and into an in-memory buffer (`BytesIO`,
`StringIO`). Deleting (unlink, rmtree) is not writing and is not checked.
"""
from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest

from ssl_vit.errors import StorageError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_vit", "data_tools")

# The writers themselves: the only modules whose writes are not reported.
WRITERS = {
    "ssl_vit/files.py",
    "data_tools/files.py",
    "data_tools/tarwriter.py",  # a shard is streamed sample by sample into `NAME.tar.tmp`, then renamed
}

# Writes that cannot go through the writer, each with its reason. Keyed by (file, enclosing function), not by
# line, so that editing a file does not break the list; every entry must still match a write (checked below).
ALLOWED = {
    # The run lock is the file's existence: it must be created with O_CREAT|O_EXCL (atomic_write's rename would
    # replace another run's lock), and its descriptor stays open for the fcntl lock. Errors go through
    # files.write_error, so they read like every other write's.
    ("ssl_vit/train/run_lock.py", "RunLock._create"),
    ("ssl_vit/train/run_lock.py", "RunLock._take_over"),  # the takeover guard: O_EXCL for the same reason
    ("ssl_vit/train/run_lock.py", "_fcntl_held"),  # opens the lock O_RDWR only to test its fcntl lock; writes nothing
    # `ssl-vit launch`'s private rendezvous folder: a new, uniquely named, owner-only directory under $TMPDIR,
    # which only mkdtemp makes safely; the supervisor deletes it when the launcher exits.
    ("ssl_vit/train/supervisor.py", "Supervisor.__init__"),
    # `.info.lock` is opened for append only to flock it around the read-modify-write of _info.json; nothing is
    # written into it (the write itself is data_tools/files.py's).
    ("data_tools/info.py", "_locked"),
    # /dev/null is opened for writing only to put it under the standard streams of a terminal that hung up (writes
    # to the terminal fail with EIO from then on); no file is written.
    ("ssl_vit/train/hangup.py", "quiet_if_hung_up"),
    # A remote shard's `.NAME.lock` is opened for append only to flock it while one process fetches the copy (the
    # copy itself is files.atomic_write's); nothing is written into it.
    ("ssl_vit/data/remote_copy.py", "local_copy"),
}

OPEN_MODULES = {"io", "gzip", "bz2", "lzma", "codecs", "tarfile"}  # `MODULE.open(path, mode)`
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
ALWAYS_METHODS = {"write_text", "write_bytes", "touch", "mkdir", "symlink_to", "hardlink_to", "tofile",
                  "save_pretrained"}
MODULE_CALLS = {
    "os": {"replace", "rename", "renames", "link", "symlink", "makedirs", "mkdir"},
    "shutil": {"copy", "copy2", "copyfile", "copytree", "move", "copymode", "copystat", "make_archive"},
    "tempfile": {"mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryDirectory"},
    "np": {"save", "savez", "savez_compressed", "savetxt"},
    "numpy": {"save", "savez", "savez_compressed", "savetxt"},
}
CALLBACK_OK = {("torch", "save"), ("json", "dump"), ("pickle", "dump"), ("yaml", "dump"), ("yaml", "safe_dump"),
               ("shutil", "copyfileobj")}  # write into a file object: fine inside an atomic_write callback
CALLBACK_OK_METHODS = {"savefig", "save"}  # matplotlib's Figure.savefig, PIL's Image.save
MEMORY = {"BytesIO", "StringIO"}
KNOWN_MODULES = {*MODULE_CALLS, *OPEN_MODULES, *(m for m, _ in CALLBACK_OK), "safetensors.torch"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_writing_mode(mode: ast.AST | None, default_reads: bool) -> bool:
    if mode is None:
        return not default_reads
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return any(c in mode.value for c in "wax+")
    return True  # a mode computed at run time may write


def _arg(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str, str]] = []  # (line, what, enclosing function)
        self.scope: list[str] = []
        self.callback_depth = 0
        self.callback_lambdas: set[int] = set()
        self.callback_defs: set[str] = set()
        self.memory: set[str] = set()
        self.product_names: set[str] = set()  # modules of our own packages (`_mpl.save(fig, path)` is a product call)
        self.aliases: dict[str, tuple[str | None, str]] = {}  # `from os import replace` → replace: ("os", "replace")

    def run(self, tree: ast.AST) -> list[tuple[int, str, str]]:
        for node in ast.walk(tree):  # first pass: callbacks handed to atomic_write, in-memory buffers, own modules
            if isinstance(node, ast.Call) and _name(node.func) == "atomic_write":
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Lambda):
                        self.callback_lambdas.add(id(arg))
                    elif isinstance(arg, ast.Name):
                        self.callback_defs.add(arg.id)
            elif isinstance(node, (ast.Assign, ast.withitem)):
                value = node.value if isinstance(node, ast.Assign) else node.context_expr
                targets = node.targets if isinstance(node, ast.Assign) else [node.optional_vars]
                if isinstance(value, ast.Call) and _name(value.func) in MEMORY:
                    self.memory |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                self.product_names |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module in KNOWN_MODULES:
                self.aliases |= {a.asname or a.name: (node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                self.product_names |= {a.asname or a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
                self.aliases |= {a.asname: (a.name, "") for a in node.names if a.asname and a.name in KNOWN_MODULES}
        self.visit(tree)
        return self.found

    def _scoped(self, node: ast.AST, name: str, callback: bool) -> None:
        self.scope.append(name)
        self.callback_depth += callback
        self.generic_visit(node)
        self.callback_depth -= callback
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.name, False)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name, node.name in self.callback_defs)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.callback_depth += id(node) in self.callback_lambdas
        self.generic_visit(node)
        self.callback_depth -= id(node) in self.callback_lambdas

    def visit_Call(self, node: ast.Call) -> None:
        what = self._write(node)
        if what and not self._into_memory(node) and not (self.callback_depth and self._into_file_object(node)):
            self.found.append((node.lineno, what, ".".join(self.scope) or "<module>"))
        self.generic_visit(node)

    def _into_memory(self, call: ast.Call) -> bool:
        return any(isinstance(a, ast.Name) and a.id in self.memory for a in call.args)

    def _into_file_object(self, call: ast.Call) -> bool:
        resolved = self._resolve(call.func)
        return resolved in CALLBACK_OK or (isinstance(call.func, ast.Attribute) and call.func.attr in CALLBACK_OK_METHODS)

    def _resolve(self, func: ast.AST) -> tuple[str | None, str] | None:
        """(owner module or None, called name), with import aliases undone; None when not a plain call."""
        if isinstance(func, ast.Name):
            module, name = self.aliases.get(func.id, (None, func.id))
            return (module, name) if name else None
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if owner in self.aliases and not self.aliases[owner][1]:
                owner = self.aliases[owner][0]  # `import numpy as np2`
            return owner, func.attr
        return None

    def _write(self, call: ast.Call) -> str | None:
        resolved = self._resolve(call.func)
        if resolved is None:
            return None
        owner, attr = resolved
        if owner is None and isinstance(call.func, ast.Name) and attr in ("open", "save_file", "save_model"):
            if attr == "open":
                return "open(..., write mode)" if _is_writing_mode(_arg(call, 1, "mode"), default_reads=True) else None
            return f"{attr}(...)"
        if owner is None and not isinstance(call.func, ast.Attribute):
            return None  # a plain function of this module or one imported from elsewhere
        if owner == "os" and attr == "open":
            flags = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(call.args[1])}
            return "os.open(..., writing flags)" if flags & WRITE_FLAGS else None
        if owner in OPEN_MODULES and attr == "open":
            return f"{owner}.open(..., write mode)" if _is_writing_mode(_arg(call, 1, "mode"), True) else None
        if owner == "os" and attr == "fdopen":
            return "os.fdopen(..., write mode)" if _is_writing_mode(_arg(call, 1, "mode"), True) else None
        if attr == "open" and owner not in OPEN_MODULES and owner != "Image":  # Path.open(mode)
            mode = _arg(call, 0, "mode")
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+"):
                return ".open(write mode)"
            return None
        if owner in MODULE_CALLS and attr in MODULE_CALLS[owner]:
            return f"{owner}.{attr}(...)"
        if (owner, attr) in CALLBACK_OK:
            if attr in ("dump", "safe_dump") and owner == "yaml" and _arg(call, 1, "stream") is None:
                return None  # yaml.safe_dump(value) returns text
            return f"{owner}.{attr}(...)"
        if attr in ALWAYS_METHODS:
            return f".{attr}(...)"
        if attr in ("replace", "rename") and len(call.args) == 1 and not call.keywords and owner != "dataclasses":
            return f".{attr}(...) (a rename)"  # str.replace takes two arguments, Path.replace one
        if attr == "savefig":
            return ".savefig(...)"
        if attr == "save" and isinstance(call.func, ast.Attribute) and owner not in self.product_names:
            return ".save(...)"
        if attr in ("save_file", "save_model"):
            return f"{owner}.{attr}(...)"
        return None


def find_writes(source: str, filename: str = "<snippet>") -> list[tuple[int, str, str]]:
    """(line, what, enclosing function) of every write in `source`."""
    return _Finder().run(ast.parse(source, filename))


def product_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def all_writes() -> dict[str, list[tuple[int, str, str]]]:
    return {p.relative_to(ROOT).as_posix(): find_writes(p.read_text(encoding="utf-8"), str(p)) for p in product_modules()}


# --------------------------------------------------------------------------------------------- the rule
def test_every_write_goes_through_the_writer():
    outside = []
    for rel, writes in all_writes().items():
        if rel in WRITERS:
            continue
        outside += [f"{rel}:{line}: {what} in {func}" for line, what, func in writes if (rel, func) not in ALLOWED]
    assert not outside, ("writes outside ssl_vit/files.py (data_tools: data_tools/files.py); route them through "
                         "it, or add them to ALLOWED with the reason:\n  " + "\n  ".join(outside))


def test_allowed_entries_still_name_a_write():
    writes = all_writes()
    stale = [f"ALLOWED {rel} {func}" for rel, func in sorted(ALLOWED)
             if not any(f == func for _, _, f in writes.get(rel, []))]
    assert not stale, "entries that match no write any more (remove them):\n  " + "\n  ".join(stale)


def test_the_writers_do_write():
    writes = all_writes()
    assert all(writes[rel] for rel in WRITERS), "a writer module that writes nothing is not the one place"


# ------------------------------------------------------------------------------------- the checker can fail
@pytest.mark.parametrize("snippet", [
    'Path(x).write_text("a")',
    'p.write_bytes(b"a")',
    'open(p, "w").write("a")',
    'open(p, mode="ab")',
    'open(p, mode)',
    'p.open("w")',
    'gzip.open(p, "wt")',
    'os.open(p, os.O_WRONLY | os.O_CREAT)',
    'os.replace(a, b)',
    'tmp.replace(final)',
    'tmp.rename(final)',
    'shutil.copy2(a, b)',
    'torch.save(obj, path)',
    'json.dump(obj, f)',
    'yaml.safe_dump(obj, f)',
    'np.save(path, array)',
    'fig.savefig(path)',
    'save_file(tensors, path)',
    'image.save(path, format="PNG")',
    'p.mkdir(parents=True)',
    'os.makedirs(p)',
    'tempfile.mkdtemp()',
    'model.save_pretrained(folder)',
    'def f(path):\n    torch.save(obj, path)',
    'from os import replace\nreplace(a, b)',
    'from shutil import copyfile as cp\ncp(a, b)',
    'import numpy as numpy2\nnumpy2.save(path, array)',
    'from safetensors.torch import save_file\nsave_file(tensors, path)',
])
def test_the_checker_reports_a_write(snippet):
    assert find_writes(snippet), snippet


@pytest.mark.parametrize("snippet", [
    'open(p)',
    'open(p, "rb")',
    'p.open()',
    'Image.open(p)',
    'p.read_text()',
    'json.dumps(obj)',
    'yaml.safe_dump(obj)',
    'name.replace("a", "b")',
    'dataclasses.replace(obj, a=1)',
    'atomic_write(path, lambda f: torch.save(obj, f))',
    'atomic_write(path, lambda f: fig.savefig(f, format="png"))',
    'def write(f):\n    json.dump(obj, f)\natomic_write(path, write)',
    'buf = io.BytesIO()\nimage.save(buf, format="PNG")',
    'from . import _mpl\n_mpl.save(fig, path)',
    'from safetensors.torch import save\natomic_write(path, save(tensors))',
    'from os import path\npath.join(a, b)',
    'self.feed.open(start, lambda: latest())',
])
def test_the_checker_passes_reads_and_routed_writes(snippet):
    assert not find_writes(snippet), snippet


def test_the_checker_names_the_line_and_function():
    source = "import os\n\nclass A:\n    def f(self):\n        x = 1\n        os.replace(a, b)\n"
    assert find_writes(source) == [(6, "os.replace(...)", "A.f")]


# --------------------------------------------------------------------------- rerouted writes fail in one line
@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only file system (a tmpfs mounted ro: root ignores a directory's permissions, not a ro mount)."""
    import subprocess

    root = tmp_path / "ro"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(root)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        root.chmod(0o555)  # not root: the directory's permissions stop the write
        yield root
        root.chmod(0o755)
        return
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_eval_compare_into_a_read_only_directory_is_one_line(tmp_path, read_only_dir, ssl_vit):
    from ssl_vit.eval.results import write_results

    for name in ("a", "b"):
        write_results(tmp_path / name, name, {"fewshot/5shot": 50.0}, {})
    rc, err = ssl_vit("eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"),
                      "--out", str(read_only_dir / "comparison.md"))
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), err
    assert str(read_only_dir / "comparison.md") in lines[0]
    assert "read-only" in lines[0] or "permission denied" in lines[0], err
    assert not list(read_only_dir.iterdir())


def test_results_under_a_file_name_the_file_in_the_way(tmp_path):
    from ssl_vit.eval.results import write_results

    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(StorageError, match=r"taken is a file, not a directory") as caught:
        write_results(tmp_path / "taken" / "eval", "run", {"fewshot/5shot": 50.0}, {})
    assert "\n" not in str(caught.value)


def test_a_figure_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """matplotlib writes through atomic_write's file object: a full disk is files.py's line, and no half PNG."""
    pytest.importorskip("matplotlib")
    from ssl_vit.analysis import _mpl

    fig = _mpl.new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # the bytes never reach the disk
    with pytest.raises(StorageError, match=r"^no space left on .* while writing .*curves\.png; free space") as caught:
        _mpl.save(fig, tmp_path / "figures" / "curves.png")
    assert "\n" not in str(caught.value)
    assert list((tmp_path / "figures").iterdir()) == []
    monkeypatch.undo()
    png = _mpl.save(fig, tmp_path / "figures" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_data_tools_skipped_list_goes_through_its_writer(tmp_path):
    """The same bytes as before (UTF-8, a name that is not escaped as the old text file did), written atomically."""
    from data_tools.layout import skipped_path, write_skipped

    rows = [("b/\udcff.jpg", "not an image"), ("a/x.jpg", "too small\tnow")]
    write_skipped(tmp_path, "train", rows)
    assert skipped_path(tmp_path, "train").read_bytes() == (
        b'path\treason\na/x.jpg\t"too small\tnow"\nb/\\udcff.jpg\tnot an image\n')
    assert [p.name for p in tmp_path.iterdir()] == ["train_skipped.tsv"]
