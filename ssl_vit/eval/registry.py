"""Evaluators are plug-ins: a class registered by name whose `run(ctx)` returns flat metrics.

As in big_vision, a recipe lists evaluators by name with their settings, and whoever runs them (the
`ssl-vit eval` command, or the pretraining trainer every N steps) builds each with `build(name, **cfg)` and
calls `run(ctx)` without knowing what it computes. Metric names carry the evaluator's name as a prefix
(`fewshot/10shot`, `knn/k20_top1`), so results from several evaluators merge into one flat dict.
"""
from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Callable, Protocol, TypeVar

from ssl_vit.errors import ConfigError

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


def build(name: str, **cfg) -> Evaluator:
    """Construct a registered evaluator; an unknown name or option says what exists instead."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown evaluator '{name}'{hint}; registered: {', '.join(names())}")
    cls = _REGISTRY[name]
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in cfg:
            if key not in params:
                close = difflib.get_close_matches(key, params, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"evaluator '{name}' has no option '{key}'{hint}; options: {', '.join(params) or 'none'}"
                )
    return cls(**cfg)
