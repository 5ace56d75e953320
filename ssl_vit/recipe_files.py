"""The shipped recipes: where they are, their names, and `--config NAME_OR_PATH` → one file.

One copy exists: `recipes/` at the top of the repository, the folder people read and edit. A wheel carries it
as `ssl_vit/recipes/` (setup.py maps it there). This module looks for the packaged folder first and the
checkout's second, by file system rather than `importlib.resources`, so a checkout run straight from its
source (`PYTHONPATH=.`) reads its own recipes, not those of whichever copy is installed.

A recipe's name is its path below that folder without the suffix: `pretrain/smoke`, `accelerate/gpu_8`,
any subfolder included. `--config` takes, in this order: an existing file; a name (`pretrain/smoke`); a bare
name when one folder has it, or the command's own folder has it (`smoke` under `ssl-vit pretrain` is
`pretrain/smoke`); a checkout-relative path (`recipes/pretrain/smoke.yaml`, as the docs write it) when run
outside the checkout; `shipped:NAME`, a shipped recipe whatever files lie around. Anything else fails with the
closest names. A local folder named like a recipe (a run directory called `smoke/`) never hides it.

`portable_copy` is what `ssl-vit recipes show` prints: the recipe with each relative `base:` rewritten as
`base: shipped:NAME`, so a copy saved anywhere still builds on the shipped recipe it names (a recipe's own
`base: FILE` must be a file beside it: `config/loader.py`).
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from .errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
_SKIPPED_SUFFIXES = {".md", ".pyc", ".py"}
SHIPPED = "shipped:"  # `--config shipped:NAME`, `base: shipped:NAME`: a shipped recipe by name, never a local file
_BASE_LINE = re.compile(r"^(?P<key>base|include):(?P<space>\s*)(?P<quote>['\"]?)(?P<value>[^'\"#\s]+)(?P=quote)"
                        r"(?P<rest>\s*(#.*)?)$")


def recipes_dir() -> Path:
    """The folder of shipped recipes: the wheel's `ssl_vit/recipes/`, else the checkout's `recipes/`."""
    for candidate in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no recipes folder beside {_PACKAGE}: this installation is incomplete; reinstall ssl_vit")


def recipe_names() -> dict[str, Path]:
    """Every shipped recipe by name (`pretrain/smoke` → its file), in sorted order; READMEs left out."""
    root = recipes_dir()
    files = (p for p in root.rglob("*") if p.is_file() and p.suffix not in _SKIPPED_SUFFIXES
             and "__pycache__" not in p.parts and not p.name.startswith("."))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(files)}


def summary(path: Path) -> str:
    """A recipe's first comment line (`# …`), which says what it is; shebangs and `#SBATCH` lines are skipped."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("# ") and line[2:].strip():
            return line[2:].strip()
    return ""


def resolve_recipe(text: str | Path, kind: str | None = None) -> Path:
    """`--config`'s value as a file: a path that exists, else a shipped recipe's name (see the module doc).

    `kind` is the recipe folder the command reads (`pretrain`, `eval`, `finetune`, `demo`): a bare name is
    looked up there first, and an unknown name is compared against that folder's names first.
    """
    if str(text).startswith(SHIPPED):
        return shipped_recipe(str(text)[len(SHIPPED):], kind)
    path = Path(text)
    if path.is_file():
        return path
    try:
        return shipped_recipe(text, kind)
    except ConfigError:
        if path.is_dir():  # a folder named like a recipe never hides one; a folder and no recipe is this line
            raise ConfigError(f"{text}: is a directory; --config takes a recipe file or name (see `ssl-vit recipes`)"
                              ) from None
        raise


def shipped_recipe(text: str | Path, kind: str | None = None) -> Path:
    """The shipped recipe called `text` (`pretrain/smoke`, `smoke` with kind `pretrain`, `recipes/….yaml`)."""
    path = Path(text)
    names = recipe_names()
    name = path.as_posix()
    for prefix in ("./", "recipes/"):  # the docs' checkout-relative spelling, run elsewhere
        name = name.removeprefix(prefix)
    name = name.removesuffix(path.suffix) if path.suffix in (".yaml", ".yml") else name
    if name in names:
        return names[name]
    if kind and f"{kind}/{name}" in names:
        return names[f"{kind}/{name}"]
    by_stem = [n for n in names if n.rsplit("/", 1)[-1] == name]
    if len(by_stem) == 1:
        return names[by_stem[0]]
    if by_stem:
        raise ConfigError(f"recipe '{text}' is ambiguous: {', '.join(by_stem)}; give the folder too")
    raise ConfigError(f"{text}: recipe not found (no such file, nor a shipped recipe of that name"
                      f"{_closest(name, names, kind)}; `ssl-vit recipes` lists them)")


def _closest(name: str, names: dict[str, Path], kind: str | None) -> str:
    """'; closest: a, b, c' among full names and bare names, the command's own folder first."""
    own = [n for n in names if kind and n.startswith(kind + "/")]
    ordered = own + [n for n in names if n not in own]
    stems = {n.rsplit("/", 1)[-1]: n for n in reversed(ordered)}  # a stem maps to its first (own-folder) name
    close = difflib.get_close_matches(name, ordered, n=3, cutoff=0.5)
    close += [stems[s] for s in difflib.get_close_matches(name, list(stems), n=3, cutoff=0.5)]
    unique = list(dict.fromkeys(close))[:3]
    return f"; closest: {', '.join(unique)}" if unique else ""


def portable_copy(file: Path) -> tuple[str, list[str]]:
    """(the text of shipped recipe `file` as a copy that works from anywhere, notes on what changed): a relative
    `base:` / `include:` line naming another shipped recipe becomes `shipped:NAME`; comments stay as they are."""
    names = {p.resolve(): n for n, p in recipe_names().items()}
    lines, notes = [], []
    for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
        match = _BASE_LINE.match(line.rstrip("\r\n"))
        name = names.get((file.parent / match["value"]).resolve()) if match and SHIPPED not in match["value"] else None
        if name is not None:
            ending = line[len(line.rstrip("\r\n")):]
            line = f"{match['key']}:{match['space']}{SHIPPED}{name}{match['rest']}{ending}"
            notes.append(f"{match['key']}: {match['value']} is written as {match['key']}: {SHIPPED}{name}, so the "
                         "copy builds on the shipped recipe wherever you save it")
        lines.append(line)
    return "".join(lines), notes
