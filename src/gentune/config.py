"""Run configuration: typed dataclass schemas filled from YAML files, mappings and dotted ``key=value``
overrides, all through one typed path (OmegaConf structured configs); config exists at the edge only.

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit CLI flags < ``--set key=value``. A method's
options live under its registered name: ``--set l2sp.alpha=0.1`` or, in YAML, ``regularizer_options: {l2sp:
{alpha: 0.1}}`` (``objective_options`` likewise), and are checked against that method's own option schema. An
unknown key or a value of the wrong type is a :class:`GentuneError` naming the key and where it came from.

YAML is read with YAML 1.2's scalars, not PyYAML's 1.1 ones: ``1e-4`` is a number and ``no``/``off`` stay text,
so ``lr: 1e-4`` and ``mixed_precision: no`` mean in a file what they mean after ``--set`` (OmegaConf's own loader
reads ``no`` as false, which a text field would then store as "False").
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GentuneError

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "aim", "comet_ml", "clearml", "dvclive", "swanlab")

# the option mappings of a config, by the registry kind of their keys
OPTION_FIELDS = {"regularizer_options": "regularizer", "objective_options": "objective"}
_NULLS = ("null", "none", "~", "")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A config field with its help text (shown by ``--help`` and ``gentune list``): ``opt(3.0, "epochs")``, or
    ``opt(factory=list, help=...)`` for a mutable default."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def help_of(cls) -> dict[str, str]:
    """The help text of every field of a config class."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass
class RunConfig:
    """What every run of the training loop has: schedule, optimizer, checkpoints, regularizers. Field names equal
    the CLI flags (``--batch-size`` -> ``batch_size``)."""

    out: str = opt("", "run folder: config, metrics, plots, best model, summary (required)")
    epochs: float = opt(3.0, "training epochs (fractions allowed)")
    max_steps: int = opt(0, "optimizer steps; > 0 overrides epochs")
    batch_size: int = opt(16, "global batch per optimizer micro-step, split across processes")
    eval_batch_size: int = opt(64, "batch size of evaluation")
    optimizer: str = opt("adamw", "adamw, or sgd (plain SGD, no momentum: the dynamics the eNTK describes; "
                                  "gentune kernel)")
    lr: float = opt(1e-4, "peak learning rate (linear warm-up then linear decay)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and norms)")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    warmup_ratio: float = opt(0.1, "share of the steps with a linear warm-up")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; <= 0 disables clipping")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    seed: int = opt(42, "seeds the model's initialisation, the data order, dropout, noise and masks")
    regularizer: list[str] = opt(factory=list, help="regularizers added to the loss (gentune list)")
    regularizer_options: dict[str, dict[str, Any]] = opt(
        factory=dict, help="a regularizer's options: {name: {option: value}}, or --set NAME.OPTION=VALUE")
    mixed_precision: str = opt("auto", "auto (bf16 where a GPU supports it) | no | bf16 | fp16")
    eval_steps: int = opt(0, "> 0: also evaluate every N optimizer steps")
    eval_every_epochs: int = opt(1, "evaluate at the end of every N-th epoch (0: never; the end of the run always)")
    save_steps: int = opt(50, "resume checkpoint every N optimizer steps (and at each epoch end)")
    group_by_length: bool = opt(False, "batches of similar length (text tasks): less padding, a less random "
                                       "order (each window of 50 batches sorted by length)")
    eval_train: bool = opt(False, "at the end, also score the final model on its training examples (evaluation "
                                  "transforms): final_train and generalization_gap (positive: worse on dev) in "
                                  "summary.json")
    save_model: bool = opt(True, "write the best (fine-tuning) or final (pretraining) model")
    keep_checkpoint: bool = opt(False, "keep OUT/checkpoint after a finished run, to train it further")
    nonfinite_steps: int = opt(5, "stop after this many optimizer steps in a row with a non-finite loss or "
                                  "gradient (0: never)")
    overwrite: bool = opt(False, "allow an --out folder that holds files of something else than a gentune run")
    report_to: list[str] = opt(factory=list, help="experiment trackers: tensorboard, wandb, mlflow, trackio "
                                                  "(Accelerate's); several allowed")
    log_every: int = opt(0, "when stderr is not a terminal, a progress line every N optimizer steps (0: about "
                            "every 30 seconds)")

    def __post_init__(self):
        if "none" in self.report_to:  # --report-to none: the explicit default
            self.report_to = [t for t in self.report_to if t != "none"]

    def _checks(self) -> list[tuple[bool, str]]:
        finite = [k for k in ("epochs", "lr", "weight_decay", "adam_eps", "adam_beta2", "warmup_ratio",
                              "max_grad_norm") if not math.isfinite(getattr(self, k))]
        return [
            (bool(self.out), "out is required (--out)"),
            (not finite, f"{finite[0]} must be a finite number, got {getattr(self, finite[0])}" if finite else ""),
            (self.max_steps >= 0, f"max_steps must be >= 0 (0: train for epochs), got {self.max_steps}"),
            (self.epochs > 0 or self.max_steps > 0, "epochs must be positive (or set max_steps)"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.eval_batch_size > 0, "eval_batch_size must be positive"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.adam_eps > 0, "adam_eps must be positive"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {self.optimizer!r}"),
            (0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.eval_every_epochs >= 0, "eval_every_epochs must be >= 0"),
            (self.eval_steps >= 0, f"eval_steps must be >= 0 (0: only at epoch ends), got {self.eval_steps}"),
            (self.save_steps >= 0, f"save_steps must be >= 0 (0: only at epoch ends), got {self.save_steps}"),
            (self.nonfinite_steps >= 0, f"nonfinite_steps must be >= 0 (0: never stop), got {self.nonfinite_steps}"),
            (self.log_every >= 0, f"log_every must be >= 0 (0: about every 30 seconds), got {self.log_every}"),
            (not set(self.report_to) - set(TRACKERS), f"report_to: unknown tracker "
             f"{sorted(set(self.report_to) - set(TRACKERS))[0] if set(self.report_to) - set(TRACKERS) else ''} "
             f"(known: {', '.join(TRACKERS)}, none)"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16"),
        ]

    def validate(self) -> None:
        """Value checks (types are checked when the config is filled); a user error names the key."""
        for ok, msg in self._checks():
            if not ok:
                raise GentuneError(f"config: {msg}")
        for name in self.regularizer_options:
            if name not in self.regularizer:
                raise GentuneError(f"config: options given for regularizer {name!r}, which is not in regularizer "
                                   f"{self.regularizer}")
        objective = getattr(self, "objective", None)  # the families with a choice of objective
        for name in getattr(self, "objective_options", {}):
            if name != objective:
                raise GentuneError(f"config: options given for objective {name!r}, but the objective is "
                                   f"{objective!r} (--objective {name})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans and numbers (see the module docstring)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    """A YAML document with the loader above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


RECIPES = Path(__file__).parent / "recipes"


def recipe_path(name: str) -> Path | None:
    """The packaged recipe called ``name`` (``rte_smart``, ``finetune/rte_smart``, with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    found = sorted(p for p in RECIPES.rglob("*.yaml") if stem in (p.stem, f"{p.parent.name}/{p.stem}"))
    return found[0] if found else None


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file's mapping (a file, else a packaged recipe of that name: ``gentune recipes``); a missing,
    non-UTF-8, malformed or non-mapping file is a one-line error."""
    p = Path(path)
    if not p.is_file() and recipe_path(str(path)) is not None:
        p = recipe_path(str(path))
    if not p.is_file():
        raise GentuneError(f"{p}: no such config file (nor a recipe of that name: gentune recipes)")
    try:
        data = parse_yaml(p.read_text()) or {}
    except UnicodeDecodeError as e:
        raise GentuneError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise GentuneError(f"{p}{line}: malformed YAML") from None
    if not isinstance(data, dict):
        raise GentuneError(f"{p}: expected a mapping of config keys")
    return data


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------------------------- typing


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _kind(hint) -> str:
    """A type annotation in words, for error messages."""
    base = _strip_optional(hint)
    origin = typing.get_origin(base) or base
    words = {bool: "true/false", int: "an integer", float: "a number", str: "text", list: "a list",
             tuple: "a list", dict: "a mapping"}
    kind = words.get(origin, str(base).replace("typing.", ""))
    return kind + (" or null" if base is not hint else "")


def _precheck(value, hint, where: str) -> None:
    """What OmegaConf would quietly convert but is a mistake: a number other than 0/1 for a boolean, a number for
    a text field's list (``classes: 5``)."""
    base = _strip_optional(hint)
    if base is bool and isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
        raise GentuneError(f"{where}: expected {_kind(hint)}, got {value!r}")


def _structured(schema, values: dict | None = None):
    """The OmegaConf node of a dataclass schema (or instance), with ``values`` merged in."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(schema)
    if values:
        node = OmegaConf.merge(node, values)
    return node


def _typed(schema, data: dict, source: str, prefix: str | None = "") -> Any:
    """``data`` merged into ``schema`` (a dataclass or an instance) through OmegaConf: converted values, or a
    one-line error naming ``source`` and the key (``prefix`` None: ``source`` names the key already)."""
    from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

    cls = schema if isinstance(schema, type) else type(schema)
    hints = _hints(cls)

    def where(key) -> str:
        return source if prefix is None else f"{source}: {prefix}{key}"

    for key, value in data.items():
        if key in hints:
            _precheck(value, hints[key], where(key))
    try:
        return _to_object(_structured(schema, data))
    except ConfigKeyError as e:
        key = str(getattr(e, "key", None) or getattr(e, "full_key", "?"))
        raise GentuneError(f"{source}: unknown config key {(prefix or '') + key!r}") from None
    except InterpolationResolutionError as e:  # ${oc.env:NAME} of a variable that is not set
        key = str(getattr(e, "full_key", "") or "").split(".")[0] or "?"
        raise GentuneError(f"{where(key)}: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "").split(".")[0] or "?"
        raise GentuneError(f"{where(key)}: expected {_kind(hints.get(key, Any))}, got {data.get(key, '?')!r}") \
            from None


def _to_object(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_object(node)


def method_options(kind: str, name: str, options: dict, source: str, prefix: str | None = "") -> dict:
    """``options`` of registered ``name`` checked against its schema: the given keys, values converted."""
    from . import registry

    if not isinstance(options, dict):
        raise GentuneError(f"{source}: {prefix or ''}{name}: expected a mapping of options, got {options!r}")
    entry = registry.get(kind, name)
    known = [f.name for f in dataclasses.fields(entry.config)] if entry.config else []
    unknown = [k for k in options if k not in known]
    if unknown:
        raise GentuneError(f"{source}: {kind} {name!r} has no option {unknown[0]!r} "
                           f"(options: {', '.join(known) or 'none'})")
    if not options:
        return {}
    typed = _typed(entry.config, options, source, None if prefix is None else f"{prefix}{name}.")
    return {k: getattr(typed, k) for k in options}


def apply_mapping(cfg, data: dict, source: str, prefix: str | None = ""):
    """Set config keys from a mapping (a YAML file, the Python API, the command line); returns a new config of
    the same class. Every value is checked against its field's type and every method option against its method's
    schema; an unknown key or a wrong type is a one-line error naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise GentuneError(f"{source}: expected a mapping of config keys")
    clean = {}
    for key, value in data.items():
        if key == "regularizer" and isinstance(value, str):
            value = [value]
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        clean[key] = value
    for key, kind in OPTION_FIELDS.items():
        if key in clean and isinstance(clean[key], dict) and hasattr(cfg, key):
            merged = {name: dict(opts) for name, opts in getattr(cfg, key).items()}
            for name, opts in clean[key].items():
                name = _registered(kind, name, source, key)
                checked = method_options(kind, name, opts, source, None if prefix is None else f"{key}.")
                merged[name] = {**merged.get(name, {}), **checked}
            clean[key] = merged
    return _typed(cfg, clean, source, prefix)


def _registered(kind: str, name, source: str, where: str) -> str:
    from . import registry

    if not isinstance(name, str) or name not in registry.list_methods(kind):
        raise GentuneError(f"{source}: {where}: unknown {kind} {name!r} (known: "
                           f"{', '.join(registry.list_methods(kind))})")
    return name


def load_yaml(cfg, path: str):
    """``cfg`` updated from a YAML file (see :func:`apply_mapping`)."""
    return apply_mapping(cfg, read_yaml(path), str(path))


def _parse_value(text: str, hint):
    """A ``--set`` value by its field's type: text fields keep the text, lists take ``a,b,c``, everything else is
    read as YAML (``3e-5``, ``true``, ``[1, 2]``)."""
    if text.strip().lower() in _NULLS:
        return None
    base = _strip_optional(hint)
    origin = typing.get_origin(base) or base
    if base is str:
        return text
    if origin in (list, tuple) and not text.lstrip().startswith("["):
        return [s for s in text.split(",") if s]
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text


def _method_name(kinds: list[str], name: str) -> tuple[str, str] | None:
    from . import registry

    for kind in kinds:
        for known in registry.list_methods(kind):
            if known.replace("-", "_") == name.replace("-", "_"):
                return kind, known
    return None


def apply_overrides(cfg, overrides: list[str]):
    """Apply ``key=value`` strings; ``name.option=value`` sets an option of regularizer (or objective) ``name``.
    Returns a new config of the same class."""
    from . import registry

    fields = _hints(type(cfg))
    kinds = [kind for key, kind in OPTION_FIELDS.items() if key in fields]
    for item in overrides:
        if "=" not in item:
            raise GentuneError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        # field and option names take - or _; registry names (context-encoder, smart-adv) keep their hyphens
        parts = key.split(".")
        parts[-1] = parts[-1].replace("-", "_")
        if parts[0] in OPTION_FIELDS:
            parts = parts[1:]
        if len(parts) == 1 and parts[0] in fields:
            cfg = apply_mapping(cfg, {parts[0]: _parse_value(text, fields[parts[0]])}, f"--set {key}", None)
            continue
        if len(parts) == 2 and f"{parts[0]}_options" in fields and parts[0] not in kinds:
            # a free mapping (peft.r=8): checked by what reads it, values read as YAML ([query,value] is a list)
            options = dict(getattr(cfg, f"{parts[0]}_options"))
            options[parts[1]] = _parse_value(text, Any)
            cfg = apply_mapping(cfg, {f"{parts[0]}_options": options}, f"--set {key}", None)
            continue
        found = _method_name(kinds, parts[0]) if len(parts) == 2 else None
        if found is None:
            raise GentuneError(f"--set {key}: unknown config key {key!r}")
        kind, name = found
        schema = registry.options(kind, name)
        option = parts[1]
        if option not in schema:
            raise GentuneError(f"--set {key}: {kind} {name!r} has no option {option!r} "
                               f"(options: {', '.join(schema) or 'none'})")
        value = _parse_value(text, _hints(registry.get(kind, name).config)[option])
        cfg = apply_mapping(cfg, {f"{kind}_options": {name: {option: value}}}, f"--set {key}", None)
    return cfg


def known_fields(cls) -> set[str]:
    """The keys of a config class."""
    return {f.name for f in dataclasses.fields(cls)}


def load_saved(cls, data: dict, source: str):
    """A config of ``cls`` from what a run wrote (its config.yaml): keys ``cls`` does not have (written by an
    earlier version, whose fine-tuning config held every task's keys) are left out, the rest typed as usual."""
    keep = {k: v for k, v in data.items() if k in known_fields(cls)}
    return apply_mapping(cls(), keep, source)
