"""Run configuration: a dataclass, YAML files and dotted ``key=value`` overrides (config at the edge only).

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit CLI flags < ``--set key=value``.
Regularizer options live under their registered name: ``--set l2sp.alpha=0.1`` or, in YAML,
``regularizer_options: {l2sp: {alpha: 0.1}}``. An unknown key is a user error that names it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GentuneError
from .models.hf import DEFAULT_MODEL


@dataclass
class RunConfig:
    """What every run of the training loop has: schedule, optimizer, checkpoints, regularizers. Field names equal
    the CLI flags (``--batch-size`` -> ``batch_size``)."""

    out: str = ""
    epochs: float = 3.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 16  # global batch per optimizer micro-step, split across processes
    eval_batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    adam_beta2: float = 0.999
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    grad_accum: int = 1
    seed: int = 42
    regularizer: list[str] = field(default_factory=list)
    regularizer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    eval_steps: int = 0  # > 0: also evaluate every N optimizer steps
    eval_every_epochs: int = 1  # evaluate at the end of every N-th epoch (0: never; the end of the run always)
    save_steps: int = 50  # resume checkpoint every N optimizer steps (and at each epoch end)
    save_model: bool = True  # write the best (fine-tuning) or final (pretraining) model
    keep_checkpoint: bool = False  # keep OUT/checkpoint (optimizer state) after a finished run

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.out), "out is required (--out)"),
            (self.epochs > 0 or self.max_steps > 0, "epochs must be positive (or set max_steps)"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.eval_batch_size > 0, "eval_batch_size must be positive"),
            (self.lr > 0, "lr must be positive"),
            (self.adam_eps > 0, "adam_eps must be positive"),
            (0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.eval_every_epochs >= 0, "eval_every_epochs must be >= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16"),
        ]

    def validate(self) -> None:
        for ok, msg in self._checks():
            if not ok:
                raise GentuneError(f"config: {msg}")
        for name in self.regularizer_options:
            if name not in self.regularizer:
                raise GentuneError(f"config: options given for regularizer {name!r}, which is not in regularizer "
                                   f"{self.regularizer}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IMAGE_TASK = "image-classification"


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run: a text task (GLUE family) or ``image-classification`` on an image folder."""

    task: str = ""
    data_dir: str | None = None
    train: str | None = None
    dev: str | None = None  # text: a dev file; images: a validation image folder/archive (else split from data)
    model: str = DEFAULT_MODEL  # text: a HF model; images without init: a backbone name (vit-tiny-p4, ...)
    max_length: int = 128
    train_size: int | None = None
    # image-classification
    data: str | None = None  # an image folder <root>/<class>/<file>, or a .tar.gz of one
    init: str | None = None  # a pretrained encoder directory (gentune pretrain OUT/encoder), or none
    classes: list[str] | None = None  # a subset of the class folders, in this order (labels 0..k-1)
    labels_per_class: int | None = None  # label budget: this many seeded training images per class
    val_size: int = 5000  # images held out of data for validation (when no dev is given)
    split_seed: int = 0  # the held-out split; fixed, so pretraining and fine-tuning hold out the same images
    # images held out with this seed (val_size of them) are removed first, then split_seed splits the rest: a
    # tuning split that never touches the reported validation images (exclude_split_seed=0, split_seed=1)
    exclude_split_seed: int | None = None
    linear_probe: bool = False  # freeze the encoder, train the head only
    head: str = "linear"  # linear | mlp | bn-linear (MAE's linear-probe head)
    pool: str | None = None  # ViT encoders: cls | mean (MAE fine-tunes with mean); None: the encoder's own (cls)
    layer_decay: float = 1.0  # layer-wise lr decay (1: off)
    augment: bool = True  # random resized crop and flip on training images
    image_size: int | None = None  # resize every image to this size (default: the images' own, one size)

    _TEXT_ONLY = {"data_dir": None, "train": None, "train_size": None}
    _IMAGE_ONLY = {"data": None, "init": None, "classes": None, "labels_per_class": None, "linear_probe": False,
                   "image_size": None, "exclude_split_seed": None, "pool": None}

    def _checks(self) -> list[tuple[bool, str]]:
        image = self.task == IMAGE_TASK
        foreign = self._TEXT_ONLY if image else self._IMAGE_ONLY
        for key, default in foreign.items():
            if getattr(self, key) != default:
                kind = "text" if image else "image-classification"
                return [(False, f"{key} applies to {kind} tasks only, not to task {self.task!r}")]
        return [
            (bool(self.task), "task is required (--task)"),
            *super()._checks(),
            (self.max_length >= 8, "max_length must be at least 8"),
            (self.train_size is None or self.train_size > 0, "train_size must be positive"),
            (not image or bool(self.data), "image-classification needs --data (an image folder or archive)"),
            (self.labels_per_class is None or self.labels_per_class > 0, "labels_per_class must be positive"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.exclude_split_seed is None or type(self.exclude_split_seed) is int,
             "exclude_split_seed must be an integer"),
            (self.head in ("linear", "mlp", "bn-linear"), "head must be linear, mlp or bn-linear"),
            (self.pool in (None, "cls", "mean"), "pool must be cls or mean"),
            (0 < self.layer_decay <= 1, "layer_decay must be in (0, 1]"),
        ]


@dataclass
class PretrainConfig(RunConfig):
    """An unsupervised pretraining run of an image encoder (``mae`` or ``context-encoder``)."""

    objective: str = "mae"
    objective_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: str = ""  # an image folder or archive; labels are ignored
    model: str = ""  # backbone name; empty: vit-tiny-p4 for mae, conv-small for context-encoder
    val_size: int = 5000  # held out (the same split as fine-tuning's), for the validation loss
    split_seed: int = 0
    exclude_split_seed: int | None = None  # as in fine-tuning: these held-out images are removed first
    augment: bool = True
    crop_scale: float = 0.2  # random resized crop: smallest area fraction
    image_size: int | None = None  # resize every image to this size (default: the images' own, one size)
    epochs: float = 10.0
    batch_size: int = 256
    eval_batch_size: int = 256
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    adam_beta2: float = 0.95
    warmup_ratio: float = 0.05
    max_grad_norm: float = 0.0
    save_steps: int = 200

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.data), "data is required (--data: an image folder or archive)"),
            *super()._checks(),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.exclude_split_seed is None or type(self.exclude_split_seed) is int,
             "exclude_split_seed must be an integer"),
            (0 < self.crop_scale <= 1, "crop_scale must be in (0, 1]"),
        ]

    def validate(self) -> None:
        super().validate()
        for name in self.objective_options:
            if name != self.objective:
                raise GentuneError(f"config: options given for objective {name!r}, but the objective is "
                                   f"{self.objective!r}")


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
    if isinstance(like, str):  # a text field keeps the text as given (YAML would read "no" as false, "1" as 1)
        return value
    return parsed


def _fits(value, hint) -> bool:
    """Whether ``value`` has the type of a config annotation (int, float, bool, str, lists, dicts, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(k, args[0]) and _fits(v, args[1])
                                                            for k, v in value.items()))
    return True  # an annotation this check does not know: left to the consumer


def check_type(value, hint, where: str) -> None:
    """A one-line error naming ``where`` when ``value`` does not fit the annotation ``hint``."""
    if not _fits(value, hint):
        kind = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
        raise GentuneError(f"{where}: expected {kind}, got {value!r}")


def hints(cls) -> dict[str, Any]:
    """The resolved field annotations of a config dataclass."""
    return typing.get_type_hints(cls)


def apply_mapping(cfg: RunConfig, data: dict, source: str) -> RunConfig:
    """Set config keys from a mapping (a YAML file, the Python API); every value is checked against its field's
    type, and an unknown key or a wrong type is a one-line error naming ``source`` and the key."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    types_ = hints(type(cfg))
    for key, value in data.items():
        if key not in fields:
            raise GentuneError(f"{source}: unknown config key {key!r}")
        if key == "regularizer" and isinstance(value, str):
            value = [value]
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        check_type(value, types_[key], f"{source}: {key}")
        setattr(cfg, key, value)
    return cfg


def load_yaml(cfg: RunConfig, path: str) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise GentuneError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError as e:
        raise GentuneError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise GentuneError(f"{p}{line}: malformed YAML") from None
    if not isinstance(data, dict):
        raise GentuneError(f"{p}: expected a mapping of config keys")
    return apply_mapping(cfg, data, str(p))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings; ``name.option=value`` sets an option of regularizer (or objective) ``name``."""
    from . import registry

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in overrides:
        if "=" not in item:
            raise GentuneError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        # field and option names take - or _; registry names (context-encoder, smart-adv) keep their hyphens
        parts = key.split(".")
        parts[-1] = parts[-1].replace("-", "_")
        if len(parts) == 1:
            key = parts[0]
        if parts[0] in ("regularizer_options", "objective_options"):
            parts = parts[1:]
        if len(parts) == 1 and parts[0] in fields:
            like = getattr(cfg, parts[0])
            if like is None:  # an optional field: check against its annotation ("int | None" -> int)
                base = str(fields[parts[0]].type).split(" ")[0]
                like = [] if base.startswith("list") else {"int": 0, "float": 0.0, "str": ""}.get(base, None)
            new = _coerce(value, like, key) if value.lower() not in ("null", "none", "") else None
            check_type(new, hints(type(cfg))[parts[0]], f"--set {key}")
            setattr(cfg, parts[0], new)
            continue
        kinds = ["regularizer"] + (["objective"] if hasattr(cfg, "objective_options") else [])
        if len(parts) == 2:
            parts[0] = next((n for k in kinds for n in registry.list_methods(k)
                             if n.replace("-", "_") == parts[0].replace("-", "_")), parts[0])
        kind = next((k for k in kinds if len(parts) == 2 and parts[0] in registry.list_methods(k)), None)
        if kind:
            name, option = parts
            entry = registry.get(kind, name)
            options = {f.name: f for f in dataclasses.fields(entry.config)} if entry.config else {}
            if option not in options:
                raise GentuneError(f"--set {key}: {kind} {name!r} has no option {option!r} "
                                   f"(options: {', '.join(options) or 'none'})")
            default = options[option].default
            hint = hints(entry.config)[option]
            if default is None:  # an optional option: parse by its annotation ("bool | None" -> bool)
                base = next((h for h in typing.get_args(hint) if h is not type(None)), None)
                default = {bool: False, int: 0, float: 0.0, str: ""}.get(base)
            new = _coerce(value, default, key) if value.lower() not in ("null", "none") else None
            check_type(new, hint, f"--set {key}")
            getattr(cfg, f"{kind}_options").setdefault(name, {})[option] = new
            continue
        raise GentuneError(f"--set {key}: unknown config key {key!r}")
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
