"""A name registry shared by every kind of pluggable piece (timm-style ``create_*`` / ``list_*``).

Kinds are free-form strings: ``"regularizer"``, ``"objective"``, ``"diagnostic"``. A registered entry is a
factory (usually a class) plus an optional config dataclass whose field names equal the factory's keyword
arguments, so ``create(kind, name, **cfg)`` and ``create(kind, name, **asdict(Config(...)))`` agree.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import GentuneError

_REGISTRY: dict[str, dict[str, "Entry"]] = {}

# Modules whose import registers the built-in methods. Imported lazily, so ``import gentune`` stays cheap.
_BUILTIN_MODULES = {
    "regularizer": ["gentune.regularizers"],
    "objective": ["gentune.objectives"],
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    summary: str


def register(kind: str, name: str, config: type | None = None) -> Callable:
    """Decorator: register ``factory`` under ``(kind, name)``, with its config dataclass."""

    def wrap(factory: Callable) -> Callable:
        doc = (factory.__doc__ or "").strip().splitlines()
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name].factory is not factory:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = Entry(kind, name, factory, config, doc[0] if doc else "")
        return factory

    return wrap


def _load_builtins(kind: str) -> None:
    for module in _BUILTIN_MODULES.get(kind, []):
        importlib.import_module(module)


def get(kind: str, name: str) -> Entry:
    _load_builtins(kind)
    table = _REGISTRY.get(kind, {})
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise GentuneError(f"unknown {kind} {name!r} (known: {known})")
    return table[name]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build the registered ``name`` of ``kind``; unknown keyword arguments are a user error."""
    entry = get(kind, name)
    if entry.config is not None:
        fields = {f.name for f in dataclasses.fields(entry.config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise GentuneError(
                f"unknown option {name}.{unknown[0]} for {kind} {name!r} (options: {', '.join(sorted(fields))})"
            )
        kwargs = dataclasses.asdict(entry.config(**kwargs))
    try:
        return entry.factory(**kwargs)
    except ValueError as e:  # a bad option value (a factory validates its own arguments): a user error
        raise GentuneError(f"{kind} {name!r}: {e}") from e


def list_methods(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _load_builtins(kind)
    return sorted(_REGISTRY.get(kind, {}))


def entries(kind: str) -> list[Entry]:
    _load_builtins(kind)
    return [_REGISTRY[kind][n] for n in sorted(_REGISTRY.get(kind, {}))]
