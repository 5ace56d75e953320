"""Name lookups for the registries (models, objectives, targets, evaluators): one clear line on a typo.

Each registry stays a plain dict keyed by name in its own module; this is only how they all say "no such
name" or "no such option", with the closest valid spelling.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Iterable, Mapping, TypeVar

from .errors import ConfigError

V = TypeVar("V")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def lookup(kind: str, name: str, table: Mapping[str, V]) -> V:
    """`table[name]`, or a ConfigError naming the closest name and every registered one."""
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}'{did_you_mean(name, table)}; registered: {', '.join(sorted(table))}")
    return table[name]


def check_options(what: str, factory: Callable, options: Iterable[str], skip: tuple[str, ...] = ()) -> None:
    """Every option must be a keyword of `factory` (unless it takes **kwargs); else a ConfigError listing them."""
    params = {k: p for k, p in inspect.signature(factory).parameters.items() if k not in skip}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in params:
            raise ConfigError(f"{what} has no option '{key}'{did_you_mean(key, params)}; "
                              f"its options: {', '.join(params) or 'none'}")
