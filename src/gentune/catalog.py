"""What ``gentune list`` and ``gentune recipes`` show: every registered task, objective and regularizer as a
table; one of them with its options (type, default, help, paper); the run's own options; the packaged recipes."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

from . import registry
from .config import RECIPES, RunConfig, help_of, recipe_path
from .errors import GentuneError


def type_name(hint) -> str:
    """An annotation as a user reads it: ``int``, ``list[str]``, ``float or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return "-" if value in ("", None, [], {}) else str(value)


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def options_table(cls, helps: dict[str, str], skip: set[str] = frozenset()) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = [[f.name, type_name(hints[f.name]), _default(f), helps.get(f.name, "")]
            for f in dataclasses.fields(cls) if f.name not in skip]
    return _table(rows, ["option", "type", "default", "help"]) if rows else ["  (no options)"]


def overview() -> str:
    """Every registered piece, a table per kind."""
    from .tasks import tasks

    out = ["tasks (gentune list NAME for a task's options; gentune list run for every run's):"]
    rows = []
    for task in tasks():
        command = "pretrain --objective " + "|".join(task.objectives) if task.stage == "pretrain" else "finetune"
        rows.append([task.name, command, registry.plain(task.summary)])
    out += _table(rows, ["task", "command", "what"])
    for task in tasks("finetune"):
        if task.describe:
            names, models = task.describe()
            out += ["", f"{task.name} --task names and models:", *[f"  {n}" for n in names],
                    *[f"  model: {m}" for m in models]]
    for kind in ("objective", "regularizer"):
        out += ["", f"{kind}s (gentune list NAME for options):"]
        out += _table([[e.name, registry.plain(e.summary)] for e in registry.entries(kind)], [kind, "what"])
    return "\n".join(out)


def _method_help(entry: registry.Entry) -> dict[str, str]:
    """An option's help from the method's docstring, else from another method with an option of that name (smart's
    sigma is smart-adv's)."""
    own = registry.option_help(entry)
    for other in registry.entries(entry.kind):
        for name, text in registry.option_help(other).items():
            own.setdefault(name, text)
    return own


def describe(name: str) -> str:
    """One task, objective or regularizer (or ``run``: the options every run has) with its options."""
    from .tasks import tasks

    if name == "run":
        return "\n".join(["options of every training run (--set KEY=VALUE, or a YAML key):",
                          *options_table(RunConfig, help_of(RunConfig), {"regularizer_options"})])
    for task in tasks():
        if task.name == name or (task.stage == "finetune" and task.is_for(name)):
            own = {f.name for f in dataclasses.fields(RunConfig)}
            fields = {f.name for f in dataclasses.fields(task.config)}
            changed = {f.name for f in dataclasses.fields(task.config)
                       if f.name in own and _default(f) != _default(RunConfig.__dataclass_fields__[f.name])}
            lines = [f"{task.name} (task, gentune {task.stage}): {registry.plain(task.summary)}",
                     *options_table(task.config, help_of(task.config), (own - changed) & fields),
                     "  (and every run's options: gentune list run)"]
            if name != task.name:
                lines.insert(0, f"{name}: a data set of the {task.name} task")
            return "\n".join(lines)
    for kind in ("regularizer", "objective"):
        if name in registry.list_methods(kind):
            entry = registry.get(kind, name)
            doc = (entry.factory.__doc__ or "").strip().splitlines()
            lines = [f"{name} ({kind}): {registry.plain(doc[0]) if doc else ''}"]
            if entry.config is not None:
                lines += options_table(entry.config, _method_help(entry))
            lines.append(f"  set with --set {name}.OPTION=VALUE, or in YAML {kind}_options: "
                         f"{{{name}: {{OPTION: VALUE}}}}")
            return "\n".join(lines)
    known = sorted({t.name for t in tasks()} | set(registry.list_methods("objective")) |
                   set(registry.list_methods("regularizer")) | {"run"})
    raise GentuneError(f"gentune list {name}: no task, objective or regularizer of that name (known: "
                       f"{', '.join(known)})")


def recipes() -> list[dict]:
    """The packaged recipes: name, stage, the command that runs it (its first line), what it is (its second)."""
    found = []
    for path in sorted(RECIPES.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        found.append({"name": path.stem, "stage": path.parent.name, "path": path,
                      "command": lines[0].lstrip("# ").strip() if lines else "",
                      "what": lines[1].lstrip("# ").strip() if len(lines) > 1 else ""})
    return found


def recipes_table() -> str:
    out = []
    for r in recipes():
        out += [f"  {r['name']}", f"      {r['what']}", f"      $ {r['command']}"]
    out += ["", "copy one to edit it: gentune recipes cp NAME FILE (then --config FILE)"]
    return "\n".join(["packaged recipes (gentune finetune|pretrain --config NAME):", *out])


def copy_recipe(name: str, dest: str) -> Path:
    src = recipe_path(name)
    if src is None:
        raise GentuneError(f"no recipe {name!r} (recipes: {', '.join(r['name'] for r in recipes())})")
    target = Path(dest)
    if target.is_dir():
        target = target / src.name
    if target.exists():
        raise GentuneError(f"{target}: exists; give another file name")
    try:
        shutil.copyfile(src, target)
    except OSError as e:
        raise GentuneError(f"{target}: cannot write it ({e.strerror or e})") from None
    return target


__all__ = ["copy_recipe", "describe", "overview", "recipes", "recipes_table", "type_name"]
