"""One recipe loader for every recipe kind: YAML files plus `key=value` overrides → a checked dataclass.

    cfg = load_recipe(PretrainConfig, "recipes/pretrain/smoke.yaml", ["optim.lr=1e-3"])

A schema is a plain dataclass with typed fields (int, float, str, bool, Literal, tuples, lists, dicts, optional
values, nested dataclass sections). Loading checks every key and type before anything is built, so a typo
fails in a second with one line that names where the key was set (the file or the command line), the key
and the fix, in the same words for every recipe kind:

    recipes/pretrain/x.yaml: unknown key 'optim.warmup' (did you mean 'optim.warmup_steps'?)
    command line: train.global_batch: expected an integer, got 'lots' (str)

`base:` (or `include:`) names another recipe whose values this one overrides: a file, relative to this one (it
must exist: a missing one is an error naming it, never a silent stand-in), or `shipped:NAME`, a shipped recipe by
name (`base: shipped:pretrain/vit_b16_mean_color`, what `ssl-vit recipes show` writes into a copy). Overrides are
dotted keys whose values parse as YAML: `optim.lr=1e-3 data.train=/data/in1k optim.betas=[0.9,0.95]`.

A schema may define three hooks: `expand_key(key)` (shorthands for overrides, e.g. the eval recipe's
`batch_size=64` for `data.batch_size=64`), `prepare(raw, where)` (normalise the file's mapping before the
overrides and the types, e.g. a list of evaluators into a mapping) and a `validate(where, sources)` method
(value checks across keys). `describe(schema)` lists every key with its type, default and one-line help
(a field's `metadata["help"]`, else its section's docstring), the material of generated `--help` text.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError

COMMAND_LINE = "command line"
DEFAULTS = "defaults"


# ------------------------------------------------------------------------------------------------ reading
def read_yaml_mapping(path: str | Path, what: str = "recipe", sections: str = "model:, data:, ...") -> dict:
    """A YAML file holding a mapping (every recipe kind reads through here): one clear line when it is not."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of sections ({sections}), got {type(data).__name__}")
    return data


def read_recipe(path: Path, what: str = "recipe", sections: str = "model:, data:, ...",
                seen: tuple[Path, ...] = ()) -> dict:
    """The mapping of recipe `path`, following `base:` / `include:` (relative to the including file)."""
    if not path.is_file() and seen:
        raise ConfigError(f"{path}: recipe not found (included from {seen[-1]})")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: recipes include each other in a cycle ({' → '.join(map(str, seen))})")
    data = read_yaml_mapping(path, what, sections)
    base = data.pop("base", None) or data.pop("include", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expects a recipe path, got {base!r}")
    merged = read_recipe(_base_file(path, base), what, sections, seen + (path.resolve(),))
    _deep_merge(merged, data)
    return merged


def _base_file(path: Path, base: str) -> Path:
    """The file `base:` names in recipe `path`: `shipped:NAME` a shipped recipe, anything else a file relative to
    `path`. A file that is not there is an error, even when a shipped recipe has its name: the recipe meant its
    own (renamed, deleted, not copied along), and building on another would train something else without a word."""
    from ..recipe_files import SHIPPED, shipped_recipe

    if base.startswith(SHIPPED):
        try:
            return shipped_recipe(base[len(SHIPPED):])
        except ConfigError as err:
            raise ConfigError(f"{path}: base: {base}: {err}") from None
    file = path.parent / base
    if file.is_file():
        return file
    try:
        name = shipped_recipe(base, kind=path.parent.name)
        hint = f"; to build on the shipped recipe of that name, write base: {SHIPPED}{_shipped_name(name)}"
    except ConfigError:
        hint = ""
    state = "is a directory, not a recipe" if file.is_dir() else "recipe not found"
    raise ConfigError(f"{file}: {state} (included from {path}){hint}")


def _shipped_name(file: Path) -> str:
    from ..recipe_files import recipe_names

    return next(name for name, p in recipe_names().items() if p == file)


def _deep_merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=1e-3` → ("optim.lr", 0.001); values parse as YAML (`null`, `[0.9, 0.95]`, `true`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{COMMAND_LINE}: '{item}' is not a key=value override (e.g. optim.lr=1e-3)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{COMMAND_LINE}: the value of '{key}' is not valid YAML ({first_line(err)})") from None
    return key.strip(), value


# ------------------------------------------------------------------------------------------------ loading
def load_recipe(
    schema: type, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
    what: str = "recipe", sections: str = "model:, data:, ...",
):
    """Read recipe `path` (following `base:`; None: the schema's defaults), apply `key=value` overrides, check
    keys, types and values; returns the `schema` instance. `what` and `sections` describe the kind in errors.
    (A `--config` value naming a shipped recipe becomes a path in the command: `recipe_files.resolve_recipe`.)"""
    raw: dict = read_recipe(Path(path), what, sections) if path is not None else {}
    where = str(path) if path is not None else DEFAULTS
    prepare = getattr(schema, "prepare", None)
    if prepare is not None:
        raw = prepare(raw, where)
    sources = _key_sources(raw, where)
    expand = getattr(schema, "expand_key", None)
    for item in overrides:
        key, value = parse_override(item)
        key = expand(key) if expand is not None else key
        check_key(schema, key)
        _set_dotted(raw, key, value)
        sources[key] = COMMAND_LINE
    return from_mapping(schema, raw, where, sources)


def from_mapping(schema: type, raw: dict, where: str, sources: dict[str, str] | None = None):
    """Build and validate `schema` from plain data (a loaded recipe, or a config saved in a checkpoint)."""
    cfg = build_section(schema, raw, "", where, sources or {})
    if hasattr(cfg, "validate"):
        cfg.validate(where, sources or {})
    return cfg


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (`optim.lr`, …); below a mapping field (`model.overrides`) any key goes."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in _recipe_fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out += schema_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _mapping_keys(schema: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(schema)
    out = []
    for f in _recipe_fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _mapping_keys(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(_optional_inner(hint)) is dict:
            out.append(f"{prefix}{f.name}")
    return out


def check_key(schema: type, key: str) -> None:
    """An override's key must exist (or lie below a mapping field), else name the closest valid key."""
    valid = schema_keys(schema)
    sections = {k.split(".")[0] for k in valid}
    if key in valid or key in sections or any(key.startswith(m + ".") for m in _mapping_keys(schema)):
        return
    close = closest_key(key, valid)
    hint = f" (did you mean '{close}'?)" if close else "; see --print-config for the valid keys"
    raise ConfigError(f"{COMMAND_LINE}: unknown key '{key}'{hint}")


def closest_key(key: str, valid: list[str]) -> str | None:
    """The valid dotted key `key` most likely meant, or None when none is close.

    Spelling alone (difflib) misses how keys are really mistyped: the long form of an abbreviated name
    (`optim.learning_rate` for `optim.lr`, `optim.wd` for `optim.weight_decay`: one name is the initials of the
    other's words) and a name without its underscores (`train.totalsteps`). So a key of the typed section whose
    last part matches the typed last part in one of those ways wins; else the closest by spelling, of the typed
    section's keys by their last part, or the only one that begins with it (`optim.warm`); when the section is
    no section, the closest whole key (`optm.lr`). A key close to none gets no suggestion."""
    section, _, leaf = key.rpartition(".")
    leaves = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    if not leaves:  # the section itself is mistyped (or the key has none): spell the whole key
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        return close[0] if close else None
    same = [k for name, k in leaves.items() if _same_name(leaf, name)]
    starting = [k for name, k in leaves.items() if len(leaf) >= 3 and name.startswith(leaf)]
    if same or len(starting) == 1:
        return (same or starting)[0]
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None


def _same_name(typed: str, name: str) -> bool:
    """`typed` names `name` in other words: the same letters without underscores or case (`totalsteps`,
    `Total_Steps`), the same words in another order (`lr_min`), or one is the initials of the other's words
    (`learning_rate` ~ `lr`, `wd` ~ `weight_decay`)."""
    def squash(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    def initials(text: str) -> str:
        words = [w for w in re.split(r"[_\-]", text.lower()) if w]
        return "".join(w[0] for w in words) if len(words) > 1 else ""

    return (squash(typed) == squash(name)
            or sorted(re.split(r"[_\-]", typed.lower())) == sorted(re.split(r"[_\-]", name.lower()))
            or initials(typed) == squash(name) != ""
            or initials(name) == squash(typed) != "")


def describe(schema: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, one-line help) for every key. The help is a field's `metadata["help"]`, else
    the comment after the field in its class (`batch_size: int = 64  # per device`), else the first line of the
    section's docstring."""
    rows = []
    hints = typing.get_type_hints(schema)
    section_help = (schema.__doc__ or "").strip().splitlines()[0] if schema.__doc__ else ""
    comments = _field_comments(schema)
    for f in _recipe_fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = f.metadata.get("help") or comments.get(f.name) or section_help
        rows.append((f"{prefix}{f.name}", _type_name(hint), default, text))
    return rows


def _field_comments(schema: type) -> dict[str, str]:
    """{field: its trailing comment} from the source of `schema` and its dataclass bases (none when unavailable)."""
    out: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # generated (make_dataclass) or no source file
            continue
        for match in re.finditer(r"^\s+(\w+): [^\n#]*#\s*(.+)$", source, flags=re.M):
            out[match[1]] = match[2].strip()
    return out


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _recipe_fields(schema: type) -> list[dataclasses.Field]:
    """The fields a recipe sets: `init=False` fields are derived while loading, not keys."""
    return [f for f in dataclasses.fields(schema) if f.init]


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{COMMAND_LINE}: '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _key_sources(raw: dict, where: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        out[name] = where
        if isinstance(value, dict):
            out.update(_key_sources(value, where, name + "."))
    return out


def source_of(sources: dict[str, str], where: str, *keys: str) -> str:
    """Where the first of `keys` (or a key below one) was set: the command line wins over the file `where`."""
    hits = [src for k, src in sources.items() if any(k == key or k.startswith(key + ".") for key in keys)]
    return COMMAND_LINE if COMMAND_LINE in hits else where


# --------------------------------------------------------------------------------------------- type checks
def build_section(cls: type, raw: Any, prefix: str, where: str, sources: dict[str, str]):
    """Build dataclass `cls` from `raw`, checking keys and types (errors name `where` or a key's own source)."""
    origin = sources.get(prefix.rstrip("."), where) if prefix else where
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.')}' is a section; expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in _recipe_fields(cls)}
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{f}" for f in fields]
            close = closest_key(name, valid)
            hint = f" (did you mean '{close}'?)" if close else f"; valid keys here: {', '.join(sorted(valid))}"
            raise ConfigError(f"{sources.get(name, where)}: unknown key '{name}'{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build_section(hint, value, name + ".", where, sources)
        else:
            values[key] = _coerce(value, hint, name, sources.get(name, where))
    return cls(**values)


def _optional_inner(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0]
    return hint


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    """`value` as type `hint`, or a ConfigError naming key, expected type and what was given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, _optional_inner(hint), name, where)
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint_text = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: {name}: expected one of {', '.join(map(str, args))}, got {value!r}{hint_text}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            _type_error(value, f"a list of {len(args)} numbers", name, where)
        return tuple(_coerce(v, a, f"{name}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if value is None:
            return []
        if isinstance(value, str) and args[0] is str:
            return [value]  # `log_with: tensorboard` means a list of one
        if not isinstance(value, list):
            _type_error(value, "a list", name, where)
        return [_coerce(v, args[0], f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            _type_error(value, "a mapping", name, where)
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _type_error(value, "true or false", name, where)
        return value
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # PyYAML reads `1e5` (no dot) as a string
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # 1e5 in YAML is a float
            else:
                _type_error(value, "an integer", name, where)
        if name == "seed" or name.endswith(".seed"):
            check_seed(value, name, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _type_error(value, "a number", name, where)
        if not math.isfinite(value):  # YAML's .nan/.inf, or 1e999: no setting means it, and it fails steps later
            raise ConfigError(f"{where}: {name}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _type_error(value, "a string", name, where)
        return value
    raise TypeError(f"config field {name} has an unsupported type {hint}")


SEED_RANGE = range(2**32)  # what numpy's, torch's and Python's generators all take


def check_seed(value: int, name: str, where: str) -> None:
    """A seed outside [0, 2**32) fails in numpy (negative) or is silently reduced elsewhere: refuse it here."""
    if value not in SEED_RANGE:
        raise ConfigError(f"{where}: {name} must be an integer in [0, 2**32), got {value}")


def check_output_dir(path: str, name: str, where: str) -> None:
    """An output directory that is a file (or lies under one) would fail at the first write, after the model
    was built and data opened: refuse it at start-up."""
    node = Path(path)
    while not node.exists() and node != node.parent:
        node = node.parent
    if node.exists() and not node.is_dir():
        what = "is a file" if node == Path(path) else f"lies under {node}, which is a file"
        raise ConfigError(f"{where}: {name} {path!r} {what}; choose a folder for the run")


def _number(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def _type_error(value: Any, expected: str, name: str, where: str) -> None:
    raise ConfigError(f"{where}: {name}: expected {expected}, got {value!r} ({type(value).__name__})")


# ------------------------------------------------------------------------------------------------ helpers
def plain(value: Any) -> Any:
    """Plain YAML-safe data: dataclasses become dicts, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def first_line(err: BaseException) -> str:
    text = str(err.args[0]) if err.args else str(err)
    return " ".join(text.split())
