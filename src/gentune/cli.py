"""The ``gentune`` command line: ``finetune``, ``pretrain``, ``evaluate``, ``diagnose``, ``list``.

Every training command takes its task's config (:mod:`gentune.tasks`) from, in order of precedence, the config's
defaults < ``--config FILE.yaml`` < explicit flags < ``--set key=value``, all through one typed path
(:mod:`gentune.config`). The CLI knows no task: ``finetune --task NAME`` finds the task that claims NAME,
``pretrain --objective NAME`` the one that trains that objective.

User errors print one line ``error: ...`` on stderr and exit with status 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import GentuneError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors follow the same one-line contract
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _config_flags(p: argparse.ArgumentParser, options: str) -> None:
    p.add_argument("--config", help="YAML file of config keys (flags and --set override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any config key, or {options}")


def _run_flags(p: argparse.ArgumentParser, defaults, options: str) -> None:
    """The flags every training command shares, with the defaults of its config class in the help."""
    p.add_argument("--epochs", type=float, help=f"training epochs (default {defaults.epochs:g})")
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--seed", type=int)
    p.add_argument("--regularizer", action="extend", nargs="+", metavar="NAME", help="regularizer(s) to add")
    _config_flags(p, options)


FINETUNE_FLAGS = ("task", "out", "data_dir", "train", "dev", "model", "epochs", "max_steps", "batch_size", "lr",
                  "max_length", "train_size", "seed", "regularizer", "data", "init", "classes", "labels_per_class",
                  "linear_probe")
PRETRAIN_FLAGS = ("objective", "data", "out", "model", "epochs", "max_steps", "batch_size", "lr", "seed",
                  "regularizer")
DIAGNOSE_FLAGS = ("checkpoint", "task", "data", "pretrain_data", "out", "max_examples", "n_sigma", "bound", "mlp",
                  "seed")


def _parser() -> argparse.ArgumentParser:
    from .tasks.image_pretraining import ImagePretrainingConfig
    from .tasks.text_classification import TextClassificationConfig

    p = _Parser(prog="gentune", description="Generalization-aware pretraining and fine-tuning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune on a text-classification task or an image folder",
                        description="Fine-tune a Hugging Face sequence classifier (text tasks) or an image encoder "
                                    "(--task image-classification). Rerunning with the same --out resumes "
                                    "from the last checkpoint (or returns the finished run's summary). A task's "
                                    "other options: --set KEY=VALUE (gentune list).")
    ft.add_argument("--task", help="task name (gentune list)")
    ft.add_argument("--out", help="run directory (config, metrics, plots, best model, summary)")
    src = ft.add_argument_group("data (default: --data-dir, else $GENTUNE_DATA, else the Hugging Face Hub)")
    src.add_argument("--data-dir", help="a GLUE/LM-BFF tree (full/<TASK>/...) or a folder with train/dev files")
    src.add_argument("--train", help="training file (.json, .tsv or .csv in the task's layout)")
    src.add_argument("--dev", help="dev file (.json, .tsv or .csv in the task's layout); images: a validation "
                                   "image folder or archive")
    img = ft.add_argument_group("image-classification")
    img.add_argument("--data", help="an image folder <root>/<class>/<file>, or a .tar.gz of one")
    img.add_argument("--init", help="a pretrained encoder: a `gentune pretrain` run folder or its encoder/, or none")
    img.add_argument("--classes", type=lambda v: [c for c in v.split(",") if c],
                     help="comma-separated class folders to use, in label order (default: all)")
    img.add_argument("--labels-per-class", type=int, help="label budget: seeded training images per class")
    img.add_argument("--linear-probe", action="store_const", const=True, help="freeze the encoder, train the head")
    ft.add_argument("--model", help="Hugging Face model name or path (default: all-MiniLM-L6-v2); images without "
                                    "--init: an encoder name (default vit-tiny-p4)")
    ft.add_argument("--max-length", type=int, help="maximum tokens per example (default 128)")
    ft.add_argument("--train-size", type=int, help="seeded, label-stratified subsample of the training set")
    _run_flags(ft, TextClassificationConfig(), "a regularizer option as NAME.OPTION=VALUE")

    pt = sub.add_parser("pretrain", help="unsupervised pretraining of an image encoder (mae, context-encoder)",
                        description="Pretrain an image encoder on an image folder or archive (labels ignored); "
                                    "saves OUT/encoder for `gentune finetune --task image-classification --init`. "
                                    "Rerunning with the same --out resumes.")
    pt.add_argument("--objective", help="mae (default) or context-encoder")
    pt.add_argument("--data", help="an image folder <root>/<class>/<file>, or a .tar.gz of one")
    pt.add_argument("--out", help="run directory (config, metrics, plots, encoder/, reconstructions.png)")
    pt.add_argument("--model", help="encoder name (default vit-tiny-p4 for mae, conv-small for context-encoder)")
    # kept for commands written before RadReg's data became its option: --regularizer radreg --set radreg.data=PATH
    pt.add_argument("--radreg-data", metavar="PATH", help=argparse.SUPPRESS)
    _run_flags(pt, ImagePretrainingConfig(), "an objective/regularizer option as NAME.OPTION=VALUE "
                                             "(RadReg's downstream images: --regularizer radreg --set radreg.data=PATH)")

    dg = sub.add_parser("diagnose", help="generalization diagnostics of checkpoints (JSON and an HTML report)",
                        description="Representation-induced Rademacher complexity (with intervals, the bound and "
                                    "its curve over n), heterogeneity to pretraining data, and the generalization "
                                    "gap of fine-tuned checkpoints; writes OUT/diagnostics.json and OUT/report.html.")
    dg.add_argument("--checkpoint", action="append", metavar="DIR",
                    help="a Hugging Face model or run best/, a gentune image encoder or classifier (repeatable)")
    dg.add_argument("--task", help="a text task, or image-classification")
    dg.add_argument("--data", help="downstream data: a file of the task's formats, or an image folder")
    dg.add_argument("--pretrain-data", help="pretraining-distribution data, for heterogeneity")
    dg.add_argument("--out", help="output directory")
    dg.add_argument("--max-examples", type=int, help="examples drawn from each data set (seeded; default 2000)")
    dg.add_argument("--n-sigma", type=int, help="sign vectors of the Monte Carlo estimate (default 200)")
    dg.add_argument("--bound", type=float, help="the heads' norm bound B (default 1)")
    dg.add_argument("--no-mlp", dest="mlp", action="store_const", const=False,
                    help="skip the MLP-head estimate (the slow one)")
    dg.add_argument("--seed", type=int)
    _config_flags(dg, "e.g. --set n_sigma=500")

    ev = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint on a data file (JSON on stdout)")
    ev.add_argument("--checkpoint", required=True, help="a run's best/ directory (or any save_pretrained dir)")
    ev.add_argument("--task", required=True)
    ev.add_argument("--data", required=True, help="a labelled file in the task's formats (e.g. a GLUE dev TSV), or "
                                                  "an image folder/archive for image-classification")
    ev.add_argument("--batch-size", type=int, default=64)

    sub.add_parser("list", help="tasks, models, objectives and regularizers")
    return p


def _given(args, flags: tuple[str, ...]) -> dict:
    return {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}


def _chosen(key: str, args, yaml_data: dict, default):
    """The value of ``key`` as the config will end up with it (flag, else ``--set key=``, else YAML, else the
    default): which task's schema to fill is decided by it."""
    value = getattr(args, key, None)
    for item in args.set:
        k, _, v = item.partition("=")
        if k.strip().replace("-", "_") == key:
            value = v.strip()
    if value is None:
        value = yaml_data.get(key, default)
    return value


def _fill(cls, args, flags: dict, yaml_data: dict, source: str | None, owner: str):
    """``cls()`` < YAML < flags < --set, through one typed path; a flag the schema does not have is named with the
    tasks it belongs to."""
    from .config import apply_mapping, apply_overrides, known_fields

    fields = known_fields(cls)
    for key in flags:
        if key not in fields:
            from .tasks import tasks

            others = [t.name for t in tasks() if key in known_fields(t.config)]
            where = f"applies to {', '.join(others)} only" if others else "is not an option here"
            raise GentuneError(f"--{key.replace('_', '-')} {where}, not to {owner}")
    cfg = cls()
    if source:
        cfg = apply_mapping(cfg, yaml_data, source)
    cfg = apply_mapping(cfg, flags, "command line")
    return apply_overrides(cfg, args.set)


def _yaml(args) -> dict:
    from .config import read_yaml

    return read_yaml(args.config) if args.config else {}


def finetune_config(args):
    """The task config a ``gentune finetune`` command line asks for."""
    from .tasks import for_name

    data = _yaml(args)
    name = _chosen("task", args, data, "")
    task = for_name(str(name) if name is not None else "")
    return _fill(task.config, args, _given(args, FINETUNE_FLAGS), data, args.config,
                 f"task {name!r} ({task.name})")


def pretrain_config(args):
    from .tasks import for_objective

    data = _yaml(args)
    flags = _given(args, PRETRAIN_FLAGS)
    if args.radreg_data:
        print("note: --radreg-data is kept for old commands; it is --regularizer radreg --set radreg.data=PATH",
              file=sys.stderr)
        flags["regularizer"] = [*flags.get("regularizer", data.get("regularizer") or []), "radreg"]
        flags["regularizer"] = list(dict.fromkeys(flags["regularizer"]))
        args.set = [*args.set, f"radreg.data={args.radreg_data}"]
    objective = str(_chosen("objective", args, data, "mae"))
    task = for_objective(objective)
    return _fill(task.config, args, flags, data, args.config, f"objective {objective!r} ({task.name})")


def _cmd_pretrain(args) -> int:
    from .tasks import pretrain

    cfg = pretrain_config(args)
    summary = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        dev = summary["final_dev"] or {}
        print(f"{summary['objective']}: validation loss {dev.get('loss', float('nan')):.4f}; "
              f"{summary['train_steps']} steps in {summary['train_seconds']:.0f}s "
              f"({summary['examples_per_second']:.0f} images/s) -> {cfg.out}/encoder")
    return 0


def _cmd_finetune(args) -> int:
    from .tasks import finetune

    cfg = finetune_config(args)
    summary = finetune(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        dev, final = summary["best_dev"] or {}, summary["final_dev"] or {}
        main = summary["main_metric"]
        scores = (f"best dev {main} {dev.get(main, float('nan')):.4f} at step {summary['best_step']}, "
                  f"final {final.get(main, float('nan')):.4f}") if final else "no validation data"
        print(f"{summary['task']}: {scores}; {summary['train_steps']} steps in "
              f"{summary['train_seconds']:.0f}s -> {cfg.out}/summary.json")
    return 0


def _cmd_diagnose(args) -> int:
    from .diagnose import DiagnoseConfig, diagnose

    cfg = _fill(DiagnoseConfig, args, _given(args, DIAGNOSE_FLAGS), _yaml(args), args.config, "diagnose")
    cfg.validate()
    res = diagnose(cfg.checkpoint, cfg.task, cfg.data, cfg.out, cfg.pretrain_data, cfg.max_examples, cfg.n_sigma,
                   cfg.bound, cfg.mlp, cfg.seed)
    for row in res["checkpoints"]:
        lin = row["complexity"]["linear"]
        print(f"{row['checkpoint']}: R_linear {lin['estimate']:.4f} [{lin['ci_low']:.4f}, {lin['ci_high']:.4f}], "
              f"bound {lin['bound']:.4f}")
    print(f"-> {cfg.out}/diagnostics.json, {cfg.out}/report.html")
    return 0


def _cmd_evaluate(args) -> int:
    from .fs import dumps_strict
    from .tasks import evaluate

    print(dumps_strict(evaluate(args.checkpoint, args.task, args.data, batch_size=args.batch_size)))
    return 0


def _cmd_list(args) -> int:
    from . import registry
    from .tasks import tasks

    lines = {"tasks": [], "models": []}
    for task in tasks("finetune"):
        described = task.describe() if task.describe else ([f"{task.name}  {task.summary}"], [])
        lines["tasks"] += described[0]
        lines["models"] += described[1]
    for task in tasks("pretrain"):
        lines["tasks"].append(f"{task.name}  (gentune pretrain --objective {'|'.join(task.objectives)}) "
                              f"{task.summary}")
    for kind, rows in lines.items():
        print(f"{kind}:")
        for row in rows:
            print(f"  {row}")
    for kind in ("objective", "regularizer"):
        print(f"{kind}s:")
        for e in registry.entries(kind):
            print(f"  {e.name:<24} {e.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"finetune": _cmd_finetune, "pretrain": _cmd_pretrain, "evaluate": _cmd_evaluate,
                "diagnose": _cmd_diagnose, "list": _cmd_list}
    try:
        return commands[args.command](args)
    except GentuneError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (rerun the same command to resume from the last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
