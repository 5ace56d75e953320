"""Evaluators are plug-ins: a class registered by name whose `run(ctx)` returns flat metrics.

As in big_vision, a recipe lists evaluators by name with their settings, and whoever runs them (the
`ssl-vit eval` command, or the pretraining trainer every N steps) builds each with `build(name, **cfg)` and
calls `run(ctx)` without knowing what it computes. Metric names carry the evaluator's name as a prefix
(`fewshot/10shot`, `knn/k20_top1`), so results from several evaluators merge into one flat dict.
"""
from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from ssl_vit.lookup import check_options, lookup

if TYPE_CHECKING:
    from .context import EvalContext


class Evaluator(Protocol):
    """The one interface: settings go to the constructor, data and model come through `ctx`."""

    def run(self, ctx: "EvalContext") -> dict[str, float]: ...


_REGISTRY: dict[str, Callable[..., Evaluator]] = {}
T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: `@register("knn") class KNN: ...` makes `build("knn", k=[20])` construct it."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evaluator '{name}' is registered twice ({_REGISTRY[name]} and {cls})")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Callable[..., Evaluator]:
    """The evaluator class registered as `name`; an unknown name says which exist (and the closest)."""
    return lookup("evaluator", name, _REGISTRY)


def build(name: str, **cfg) -> Evaluator:
    """Construct a registered evaluator; an unknown name or option says what exists instead."""
    cls = get(name)
    check_options(f"evaluator '{name}'", cls, cfg)
    return cls(**cfg)


def describe(name: str) -> tuple[str, dict[str, Any]]:
    """What evaluator `name` does (its module's first paragraph) and its options with their defaults, read from
    its constructor, so `ssl-vit eval NAME --help` cannot drift from the code."""
    cls = lookup("evaluator", name, _REGISTRY)
    doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
    options = {p.name: (None if p.default is p.empty else p.default)
               for p in inspect.signature(cls).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return " ".join(doc.strip().split("\n\n")[0].split()), options
