"""Run configuration: a dataclass, YAML files and dotted ``key=value`` overrides (config at the edge only).

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit CLI flags < ``--set key=value``.
Regularizer options live under their registered name: ``--set l2sp.alpha=0.1`` or, in YAML,
``regularizer_options: {l2sp: {alpha: 0.1}}``. An unknown key is a user error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GentuneError
from .models.hf import DEFAULT_MODEL


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run. Field names equal the CLI flags (``--train-size`` ->
    ``train_size``)."""

    task: str = ""
    out: str = ""
    data_dir: str | None = None
    train: str | None = None
    dev: str | None = None
    model: str = DEFAULT_MODEL
    epochs: float = 3.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 16  # global batch per optimizer micro-step, split across processes
    eval_batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    grad_accum: int = 1
    max_length: int = 128
    train_size: int | None = None
    seed: int = 42
    regularizer: list[str] = field(default_factory=list)
    regularizer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    eval_steps: int = 0  # > 0: also evaluate every N optimizer steps
    save_steps: int = 50  # resume checkpoint every N optimizer steps (and at each epoch end)
    save_model: bool = True  # write the best model to OUT/best
    keep_checkpoint: bool = False  # keep OUT/checkpoint (optimizer state) after a finished run

    def validate(self) -> None:
        checks = [
            (bool(self.task), "task is required (--task)"),
            (bool(self.out), "out is required (--out)"),
            (self.epochs > 0 or self.max_steps > 0, "epochs must be positive (or set max_steps)"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.eval_batch_size > 0, "eval_batch_size must be positive"),
            (self.lr > 0, "lr must be positive"),
            (self.adam_eps > 0, "adam_eps must be positive"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.max_length >= 8, "max_length must be at least 8"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.train_size is None or self.train_size > 0, "train_size must be positive"),
            (self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GentuneError(f"config: {msg}")
        for name in self.regularizer_options:
            if name not in self.regularizer:
                raise GentuneError(f"config: options given for regularizer {name!r}, which is not in regularizer "
                                   f"{self.regularizer}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: str, like: Any, key: str):
    """Parse a ``--set`` string with YAML rules, then check it against the field's current type."""
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(like, bool) and not isinstance(parsed, bool):
        raise GentuneError(f"--set {key}: expected true/false, got {value!r}")
    if isinstance(like, (int, float)) and not isinstance(like, bool):
        try:  # YAML 1.1 reads "3e-5" as a string, so numbers are parsed by Python's rules
            return int(value) if isinstance(like, int) else float(value)
        except ValueError:
            kind = "an integer" if isinstance(like, int) else "a number"
            raise GentuneError(f"--set {key}: expected {kind}, got {value!r}") from None
    if isinstance(like, (list, tuple)) and isinstance(parsed, str):
        return type(like)(s for s in parsed.split(",") if s)
    return parsed


def apply_mapping(cfg: FinetuneConfig, data: dict, source: str) -> FinetuneConfig:
    fields = {f.name for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        if key not in fields:
            raise GentuneError(f"{source}: unknown config key {key!r}")
        if key == "regularizer" and isinstance(value, str):
            value = [value]
        setattr(cfg, key, value)
    return cfg


def load_yaml(cfg: FinetuneConfig, path: str) -> FinetuneConfig:
    p = Path(path)
    if not p.is_file():
        raise GentuneError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise GentuneError(f"{p}{line}: malformed YAML") from None
    if not isinstance(data, dict):
        raise GentuneError(f"{p}: expected a mapping of config keys")
    return apply_mapping(cfg, data, str(p))


def apply_overrides(cfg: FinetuneConfig, overrides: list[str]) -> FinetuneConfig:
    """Apply ``key=value`` strings; ``name.option=value`` sets an option of regularizer ``name``."""
    from . import registry

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in overrides:
        if "=" not in item:
            raise GentuneError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        parts = key.split(".")
        if parts[0] == "regularizer_options":
            parts = parts[1:]
        if len(parts) == 1 and parts[0] in fields:
            like = getattr(cfg, parts[0])
            if like is None:  # an optional field: check against its annotation ("int | None" -> int)
                like = {"int": 0, "float": 0.0}.get(str(fields[parts[0]].type).split(" ")[0], None)
            setattr(cfg, parts[0], _coerce(value, like, key) if value.lower() not in ("null", "none", "") else None)
            continue
        if len(parts) == 2 and parts[0] in registry.list_methods("regularizer"):
            name, option = parts
            entry = registry.get("regularizer", name)
            options = {f.name: f for f in dataclasses.fields(entry.config)} if entry.config else {}
            if option not in options:
                raise GentuneError(f"--set {key}: regularizer {name!r} has no option {option!r} "
                                   f"(options: {', '.join(options) or 'none'})")
            default = options[option].default
            cfg.regularizer_options.setdefault(name, {})[option] = _coerce(value, default, key)
            continue
        raise GentuneError(f"--set {key}: unknown config key {key!r}")
    return cfg


def dump_yaml(cfg: FinetuneConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
