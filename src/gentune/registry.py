"""A name registry shared by every kind of pluggable piece (timm-style ``create_*`` / ``list_*``).

Kinds: ``"task"``, ``"objective"``, ``"regularizer"`` (free-form strings; the built-in ones load lazily). An entry is
a factory (usually a class) plus its config dataclass, whose fields are the factory's options: the
positional-or-keyword parameters of its ``__init__`` (name, annotation, default), derived at :func:`register`
so that every default is written once; a registered class gets it as its ``Config`` attribute. Keyword-only
parameters (after ``*``) are code a caller passes in Python (``embed_fn``, a ``generator``), not configuration.
``create(kind, name, **options)`` checks the options against that dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from .errors import GentuneError

_REGISTRY: dict[str, dict[str, "Entry"]] = {}

# Modules whose import registers the built-in pieces. Imported lazily, so ``import gentune`` stays cheap.
_BUILTIN_MODULES = {
    "regularizer": ["gentune.regularizers"],
    "objective": ["gentune.objectives"],
    "task": ["gentune.tasks"],
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    summary: str


def options_dataclass(factory: Callable, name: str | None = None) -> type | None:
    """A dataclass whose fields are ``factory``'s options: its positional-or-keyword parameters with defaults
    (annotations resolved); None when it has none."""
    init = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that does not resolve: fields fall back to Any
        hints = {}
    fields = []
    for p in inspect.signature(init).parameters.values():
        if p.name == "self" or p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{getattr(factory, '__qualname__', factory)}: option {p.name!r} needs a default "
                            "(options are config; make code arguments keyword-only, after *)")
        default = p.default
        spec = (dataclasses.field(default_factory=lambda d=default: type(d)(d))
                if isinstance(default, (list, dict, set)) else dataclasses.field(default=default))
        fields.append((p.name, hints.get(p.name, Any), spec))
    if not fields:
        return None
    base = name or getattr(factory, "__name__", "factory")
    cls = dataclasses.make_dataclass(f"{base}Config", fields)
    cls.__module__ = getattr(factory, "__module__", cls.__module__)
    cls.__doc__ = f"The options of {base} (derived from its signature: same names, types and defaults)."
    return cls


def _check_agrees(config: type, derived: type | None, where: str) -> None:
    """A config dataclass given to :func:`register` must list the factory's options with the same defaults."""
    given = {f.name: f for f in dataclasses.fields(config)}
    found = {f.name: f for f in dataclasses.fields(derived)} if derived else {}
    if set(given) != set(found):
        raise TypeError(f"{where}: config {config.__name__} has fields {sorted(given)}, the factory's options are "
                        f"{sorted(found)}")
    for key, f in given.items():
        a, b = _default(f), _default(found[key])
        if a != b:
            raise TypeError(f"{where}: option {key!r} defaults to {a!r} in {config.__name__} but {b!r} in the factory")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def register(kind: str, name: str, config: type | None = None) -> Callable:
    """Decorator: register ``factory`` under ``(kind, name)``.

    Its config dataclass is derived from its signature (:func:`options_dataclass`); a ``config`` given here is
    checked against that (same fields, same defaults) and used instead. Registering a different factory under a
    taken name is an error.
    """

    def wrap(factory: Callable) -> Callable:
        doc = (factory.__doc__ or "").strip().splitlines()
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name].factory is not factory:
            raise ValueError(f"{kind} {name!r} is registered twice")
        cfg = config
        if inspect.isclass(factory) or inspect.isfunction(factory):  # a task registers a record, not a factory
            derived = options_dataclass(factory)
            if cfg is None:
                cfg = derived
            else:
                _check_agrees(cfg, derived, f"{kind} {name!r}")
        table[name] = Entry(kind, name, factory, cfg, doc[0] if doc else "")
        if inspect.isclass(factory) and cfg is not None and "Config" not in vars(factory):
            factory.Config = cfg  # the options as a dataclass: ``Smart.Config(adv_weight=3)``
        return factory

    return wrap


def unregister(kind: str, name: str) -> None:
    """Remove ``(kind, name)`` (tests that register a piece of their own clean up with it)."""
    _REGISTRY.get(kind, {}).pop(name, None)


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


def options(kind: str, name: str) -> dict[str, dataclasses.Field]:
    """The options of a registered piece by name (empty when it has none)."""
    config = get(kind, name).config
    return {f.name: f for f in dataclasses.fields(config)} if config else {}


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build the registered ``name`` of ``kind``; unknown keyword arguments are a user error.

    A ``ValueError`` from the factory (it validates its own option values) is a user error naming the piece;
    any other exception is a bug and keeps its traceback.
    """
    entry = get(kind, name)
    if entry.config is not None:
        fields = {f.name for f in dataclasses.fields(entry.config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise GentuneError(
                f"unknown option {name}.{unknown[0]} for {kind} {name!r} (options: {', '.join(sorted(fields))})"
            )
    elif kwargs:
        raise GentuneError(f"{kind} {name!r} takes no options, got {', '.join(sorted(kwargs))}")
    try:
        return entry.factory(**kwargs)
    except ValueError as e:
        raise GentuneError(f"{kind} {name!r}: {e}") from e


def plain(text: str) -> str:
    """Docstring markup (``:class:`X```, double backquotes) as plain text, for the terminal."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "")


def option_help(entry: Entry) -> dict[str, str]:
    """Each option's help: its lines in the factory's Google-style ``Args:`` section (``a, b: text`` covers both
    names), as plain text."""
    doc = inspect.getdoc(entry.factory) or ""
    lines = doc.splitlines()
    if "Args:" not in [l.strip() for l in lines]:
        return {}
    start = [l.strip() for l in lines].index("Args:") + 1
    found: dict[str, str] = {}
    current: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):  # the next section
            break
        m = re.match(r"^ {4}([A-Za-z_][\w, ]*?):\s*(.*)$", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for name in current:
                found[name] = m.group(2).strip()
        elif current and line.strip():
            for name in current:
                found[name] = (found[name] + " " + line.strip()).strip()
    return {k: plain(v) for k, v in found.items()}


def list_methods(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _load_builtins(kind)
    return sorted(_REGISTRY.get(kind, {}))


def entries(kind: str) -> list[Entry]:
    _load_builtins(kind)
    return [_REGISTRY[kind][n] for n in sorted(_REGISTRY.get(kind, {}))]
