"""The ``gentune`` command line: ``finetune``, ``pretrain``, ``evaluate``, ``predict``, ``diagnose``, ``kernel``,
``compare``, ``list``, ``recipes``.

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
from pathlib import Path

from .errors import GentuneError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors follow the same one-line contract
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _config_flags(p: argparse.ArgumentParser, options: str) -> None:
    p.add_argument("--config", help="YAML file of config keys, or a packaged recipe's name (gentune recipes); "
                                    "flags and --set override it")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override any config key (listed below), or {options}; several after one --set")


def _run_flags(p: argparse.ArgumentParser, defaults, options: str) -> None:
    """The flags every training command shares, with the defaults of its config class in the help."""
    p.add_argument("--epochs", type=float, help=f"training epochs (default {defaults.epochs:g})")
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--seed", type=int)
    p.add_argument("--regularizer", action="extend", nargs="+", metavar="NAME", help="regularizer(s) to add")
    p.add_argument("--report-to", action="extend", nargs="+", metavar="TRACKER",
                   help="log to experiment trackers: tensorboard, wandb, mlflow, trackio (several allowed; "
                        "default none)")
    _config_flags(p, options)


FINETUNE_FLAGS = ("task", "out", "data_dir", "train", "dev", "model", "epochs", "max_steps", "batch_size", "lr",
                  "max_length", "train_size", "seed", "regularizer", "data", "init", "classes", "labels_per_class",
                  "linear_probe", "report_to", "test", "dataset", "dataset_config", "text_column",
                  "text_pair_column", "label_column", "labels", "peft", "objective")
PRETRAIN_FLAGS = ("objective", "data", "out", "model", "epochs", "max_steps", "batch_size", "lr", "seed",
                  "regularizer", "report_to")
KERNEL_FLAGS = ("model", "checkpoint", "task", "train", "eval", "out", "objective", "kernel", "solver", "params",
                "seed")
DIAGNOSE_FLAGS = ("checkpoint", "task", "data", "pretrain_data", "out", "max_examples", "n_sigma", "bound", "mlp",
                  "seed")


def _finetune_arguments(ft: argparse.ArgumentParser) -> None:
    """The flags of `gentune finetune` (and of `gentune search`, whose episodes are fine-tuning runs)."""
    from .tasks.text_classification import TextClassificationConfig

    ft.add_argument("--task", help="task name (gentune list)")
    ft.add_argument("--out", help="run directory (config, metrics, plots, best model, summary)")
    src = ft.add_argument_group("data (default: --data-dir, else $GENTUNE_DATA, else the Hugging Face Hub)")
    src.add_argument("--data-dir", help="a GLUE/LM-BFF tree (full/<TASK>/...) or a folder with train/dev files")
    src.add_argument("--train", help="training file: .json, .tsv or .csv in the task's layout, or your own "
                                     "CSV/TSV/JSON/JSONL with a header")
    src.add_argument("--dev", help="dev file, in the format of --train; images: a validation image folder or "
                                   "archive")
    src.add_argument("--test", help="a labelled file (text tasks) scored with the best model at the end "
                                    "(OUT/test.json)")
    own = ft.add_argument_group("your own text data (task text-classification, the default with --train or "
                                "--dataset and no --task)")
    own.add_argument("--dataset", help="a datasets name (the Hub when online; a local dataset folder) or a "
                                       "save_to_disk DatasetDict folder, with train and validation splits")
    own.add_argument("--dataset-config", help="the dataset's configuration name")
    own.add_argument("--text-column", help="column of the text (default text)")
    own.add_argument("--text-pair-column", help="column of a second text, used when present (default text_pair)")
    own.add_argument("--label-column", help="column of the label (default label)")
    own.add_argument("--labels", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                     help="comma-separated label set in index order (default: the training labels, sorted); "
                          "--set regression=true for scores")
    ft.add_argument("--objective", choices=["sequence-classification", "prompt", "token-classification", "fffner",
                                            "entlm"],
                    help="text tasks: sequence-classification (default: a classification head) or prompt (LM-BFF: the "
                         "masked LM's label-word logits at a template's [MASK]; --set prompt.template=... "
                         "prompt.label_words=...); --task ner: token-classification (default), fffner (FFF-NER "
                         "spans) or entlm (EntLM label words)")
    ft.add_argument("--peft", metavar="METHOD", help="train a PEFT adapter (lora, ia3, ...) instead of the whole "
                                                     "model; its options: --set peft.r=8 peft.alpha=16")
    img = ft.add_argument_group("image-classification")
    img.add_argument("--data", help="an image folder <root>/<class>/<file>, or a .tar.gz of one")
    img.add_argument("--init", help="a pretrained encoder: a `gentune pretrain` run folder or its encoder/, imagenet "
                                     "(the packaged weights of --model efficientnet-lite0), or none")
    img.add_argument("--classes", type=lambda v: [c for c in v.split(",") if c],
                     help="comma-separated class folders to use, in label order (default: all)")
    img.add_argument("--labels-per-class", type=int, help="label budget: seeded training images per class")
    img.add_argument("--linear-probe", action="store_const", const=True,
                     help="freeze the encoder, train the head (text tasks too)")
    ft.add_argument("--model", help="Hugging Face model name or path (default: all-MiniLM-L6-v2); images without "
                                    "--init: an encoder name (default vit-tiny-p4)")
    ft.add_argument("--max-length", type=int, help="maximum tokens per example (default 128)")
    ft.add_argument("--train-size", type=int, help="seeded, label-stratified subsample of the training set")
    _run_flags(ft, TextClassificationConfig(), "a regularizer option as NAME.OPTION=VALUE")


def _parser() -> argparse.ArgumentParser:
    from .tasks.image_pretraining import ImagePretrainingConfig
    from .tasks.text_classification import TextClassificationConfig

    from .version import __version__

    p = _Parser(prog="gentune", description="Generalization-aware pretraining and fine-tuning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--version", action="version", version=f"gentune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ft = sub.add_parser("finetune", help="fine-tune on a text-classification task or an image folder",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_keys_epilog("finetune"),
                        description="Fine-tune a Hugging Face sequence classifier (text tasks) or an image encoder "
                                    "(--task image-classification). Rerunning with the same --out resumes "
                                    "from the last checkpoint (or returns the finished run's summary). A task's "
                                    "other options: --set KEY=VALUE (gentune list).")
    _finetune_arguments(ft)

    se = sub.add_parser("search", help="search a neuron grouping (k-shot image fine-tuning): an LSTM controller "
                                       "(REINFORCE) or random search, each episode a fine-tuning run",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_keys_epilog("finetune"),
                        description="Search the number of neuron groups per layer (Yoo et al., AAAI 2018) for an "
                                    "image-classification run given with the flags of gentune finetune: each episode "
                                    "fine-tunes in process with one grouping and is rewarded with validation accuracy "
                                    "(hold the reported images out: --set exclude_split_seed=0 split_seed=1). "
                                    "Writes OUT/trace.jsonl, trace.png, summary.json and best.yaml (a recipe for "
                                    "gentune finetune --config); rerunning the same command continues after the last "
                                    "finished episode.")
    se.add_argument("--space", default="neuron-grouping", choices=["neuron-grouping"], help="what is searched")
    se.add_argument("--episodes", type=int, default=30, help="fine-tuning runs (default 30)")
    se.add_argument("--strategy", default="controller", choices=["controller", "random"],
                    help="controller: an LSTM trained with REINFORCE (default); random: uniform choices, the baseline")
    se.add_argument("--choices", type=lambda v: [float(c) for c in v.split(",") if c.strip()],
                    help="comma-separated fractions of a layer's filters that may become its groups "
                         "(default 1,0.5,0.25,0.125; 1 is no grouping)")
    se.add_argument("--search-seed", type=int, default=0, help="the policy's initialisation and draws (default 0)")
    _finetune_arguments(se)

    pt = sub.add_parser("pretrain", help="unsupervised pretraining: an image encoder (mae, context-encoder) or a text "
                                         "encoder (mlm)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_keys_epilog("pretrain"),
                        description="Pretrain an image encoder on an image folder or archive (labels ignored; saves "
                                    "OUT/encoder for `gentune finetune --task image-classification --init`), or a "
                                    "text encoder with masked-LM on unlabeled text (--objective mlm; saves OUT/model "
                                    "for `gentune finetune --model`). Rerunning with the same --out resumes.")
    pt.add_argument("--objective", help="mae (default), context-encoder, mlm (text), or point-contrast, "
                                        "hardest-contrastive (point clouds)")
    pt.add_argument("--data", help="an image folder <root>/<class>/<file> or a .tar.gz of one; mlm: a text file (.txt "
                                   "one example a line, CSV/TSV/JSON/JSONL with a text column) or a folder of them")
    pt.add_argument("--out", help="run directory (config, metrics, plots, encoder/ or model/)")
    pt.add_argument("--model", help="encoder name (default vit-tiny-p4 for mae, conv-small for context-encoder); "
                                    "mlm: a Hugging Face model name or path (default all-MiniLM-L6-v2)")
    # kept for commands written before RadReg's data became its option: --regularizer radreg --set radreg.data=PATH
    pt.add_argument("--radreg-data", metavar="PATH", help=argparse.SUPPRESS)
    _run_flags(pt, ImagePretrainingConfig(), "an objective/regularizer option as NAME.OPTION=VALUE "
                                             "(RadReg's downstream images: --regularizer radreg --set radreg.data=PATH)")

    dg = sub.add_parser("diagnose", help="generalization diagnostics of checkpoints (JSON and an HTML report)",
                        description="Representation-induced Rademacher complexity (with intervals, the bound and "
                                    "its curve over n), heterogeneity to pretraining data, and the generalization "
                                    "gap of fine-tuned checkpoints; writes OUT/diagnostics.json and OUT/report.html.")
    dg.add_argument("--checkpoint", action="append", metavar="DIR",
                    help="a Hugging Face model or run best/, a gentune image or point encoder or classifier "
                         "(repeatable)")
    dg.add_argument("--task", help="a text task, image-classification or point-classification")
    dg.add_argument("--data", help="downstream data: a file of the task's formats, an image folder, or point data")
    dg.add_argument("--pretrain-data", help="pretraining-distribution data, for heterogeneity")
    dg.add_argument("--out", help="output directory")
    dg.add_argument("--max-examples", type=int, help="examples drawn from each data set (seeded; default 2000)")
    dg.add_argument("--n-sigma", type=int, help="sign vectors of the Monte Carlo estimate (default 200)")
    dg.add_argument("--bound", type=float, help="the heads' norm bound B (default 1)")
    dg.add_argument("--no-mlp", dest="mlp", action="store_const", const=False,
                    help="skip the MLP-head estimate (the slow one)")
    dg.add_argument("--seed", type=int)
    _config_flags(dg, "e.g. --set n_sigma=500")

    kn = sub.add_parser("kernel", help="the empirical NTK of (prompt-based) fine-tuning and its solvers' predictions",
                        description="The empirical neural tangent kernel (SGD, SignGD or Adam's asymmetric SignGD\n"
                                    "kernel) of a model's outputs on a task's training examples, and the kernel\n"
                                    "solvers' predictions on held-out examples (Malladi et al., ICML 2023). Writes\n"
                                    "OUT/metrics.json, OUT/predictions.json and the kernels (safetensors); a rerun\n"
                                    "resumes from the finished blocks.",
                        epilog="examples:\n  gentune kernel --model ../shared/models/splade_tiny_bert_mlm --task sst2 "
                               "--train k-shot/SST-2/16-13/train.tsv --eval SST-2/dev.tsv --out runs/k\n"
                               "  gentune kernel ... --kernel asym-signgd   (solver asym, logit difference)\n\n"
                               "keys (--set key=value): reg, logistic_reg, svm_c, asym_gamma, asym_lambda, "
                               "adjust_for_init, difference, sign_eps, head, pooling, lora_r, template, label_words, "
                               "max_length, max_eval, chunk, panel, progress",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    kn.add_argument("--model", help="a Hugging Face model (a masked LM for the prompt objective)")
    kn.add_argument("--checkpoint", help="a fine-tuned gentune run's best/ instead of --model")
    kn.add_argument("--task", help="a text task (sst2, sst5, mr, cr, mpqa, subj, trec, rte, qnli, mrpc, ...)")
    kn.add_argument("--train", help="training examples: any file of the task's formats")
    kn.add_argument("--eval", help="held-out examples the solvers predict")
    kn.add_argument("--out", help="output folder")
    kn.add_argument("--objective", choices=["prompt", "classification"], help="default prompt")
    kn.add_argument("--kernel", choices=["sgd", "signgd", "asym-signgd"], help="default sgd")
    kn.add_argument("--solver", choices=["lstsq", "logistic", "svm", "asym"],
                    help="default lstsq (asym for --kernel asym-signgd)")
    kn.add_argument("--params", choices=["all", "no-embeddings", "no-head", "bitfit", "lora"], help="default all")
    kn.add_argument("--seed", type=int)
    _config_flags(kn, "e.g. --set reg=1e-3 adjust_for_init=true")

    ev = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint on a data file (JSON on stdout)")
    ev.add_argument("--checkpoint", required=True, help="a run's best/ directory (or any save_pretrained dir)")
    ev.add_argument("--task", required=True)
    ev.add_argument("--data", required=True, help="a labelled file in the task's formats (e.g. a GLUE dev TSV), or "
                                                  "an image folder/archive for image-classification")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--objective", choices=["prompt"],
                    help="prompt: score a masked LM (any model with a masked-LM head) through the task's LM-BFF prompt "
                         "with no training (zero-shot); a trained prompt checkpoint needs no flag")
    ev.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="with --objective prompt: prompt.template='{text_a} It was {mask} .' "
                         "prompt.label_words=terrible,great")

    ev.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="--task ner: inference precision (default auto: bf16 on a GPU that has it, else fp32)")

    pr = sub.add_parser("predict", help="the entities a NER checkpoint finds in text (JSON lines on stdout)",
                        description="Run a fine-tuned NER checkpoint (gentune finetune --task ner) on raw text or a "
                                    "file; one JSON line per entity: sentence, text, type, start, end (character "
                                    "offsets), token_start, token_end, score.")
    pr.add_argument("--checkpoint", required=True, help="a NER run's best/ directory")
    given = pr.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="a sentence of raw text (repeat for more)")
    given.add_argument("--lines", help="a text file, one raw sentence per line")
    given.add_argument("--data", help="a tokenized CoNLL or EntLM JSON file (its tags are ignored; offsets are into "
                                      "the words joined by single spaces)")
    pr.add_argument("--out", help="write the JSON lines to this file instead of stdout")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 on a GPU that has it, else fp32")

    ls = sub.add_parser("list", help="tasks, models, objectives and regularizers; `gentune list NAME`: one with its "
                                     "options")
    ls.add_argument("name", nargs="?", help="a task (or --task name), objective or regularizer; `run`: every run's "
                                            "options")

    cp = sub.add_parser("compare", help="runs side by side: a table of their summaries and their dev curves overlaid",
                        description="A table of the runs' summaries (task, model, regularizers, seed, metrics, "
                                    "time) and one plot of their dev curves; with --out, OUT/compare.md and "
                                    "OUT/compare.png.")
    cp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="gentune run folders (finished or not)")
    cp.add_argument("--out", help="folder for compare.md and compare.png (default: print the table only)")

    rc = sub.add_parser("recipes", help="the packaged YAML recipes; `gentune recipes cp NAME FILE` copies one")
    rc.add_argument("action", nargs="?", choices=["list", "cp"], default="list")
    rc.add_argument("recipe", nargs="?", help="the recipe to copy")
    rc.add_argument("dest", nargs="?", help="where to copy it (a file or folder)")
    return p


def _keys_epilog(stage: str) -> str:
    """Every config key of the command's tasks, grouped, with its default and help (what --set takes)."""
    import dataclasses
    import textwrap

    from .catalog import type_name
    from .config import RunConfig, help_of
    from .tasks import tasks

    def block(title: str, cls, skip: set[str]) -> list[str]:
        import typing

        hints, helps = typing.get_type_hints(cls), help_of(cls)
        lines = [f"{title}:"]
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            head = f"  {f.name} ({type_name(hints[f.name])}, default {value!r}): "
            lines += textwrap.wrap(helps.get(f.name, ""), width=118, initial_indent=head,
                                   subsequent_indent=" " * 6) or [head]
        return lines

    run = {f.name for f in dataclasses.fields(RunConfig)}
    out = ["config keys (--set KEY=VALUE, or KEY: VALUE in --config FILE.yaml):", ""]
    for task in tasks(stage):
        mine = {f.name for f in dataclasses.fields(task.config)}
        redefined = {n for n in run & mine if task.config.__dataclass_fields__[n].default
                     != RunConfig.__dataclass_fields__[n].default}
        out += block(f"{task.name}", task.config, run - redefined) + [""]
    out += block("every run", RunConfig, {"regularizer_options"})
    out += ["", "A method's options: gentune list NAME (gentune list smart); --set NAME.OPTION=VALUE."]
    return "\n".join(out)


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

    from .tasks.text_classification import implied_task

    data = _yaml(args)
    name = implied_task(*(_chosen(k, args, data, None) for k in ("task", "data_dir", "train", "dataset")))
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
        saved = "model" if summary["objective"] == "mlm" else "encoder"
        unit = {"mlm": "examples", "point-contrast": "shapes", "hardest-contrastive": "shapes"}.get(
            summary["objective"], "images")
        extra = f", masked-token accuracy {dev['accuracy']:.4f}" if "accuracy" in dev else ""
        print(f"{summary['objective']}: validation loss {dev.get('loss', float('nan')):.4f}{extra}; "
              f"{summary['train_steps']} steps in {summary['train_seconds']:.0f}s "
              f"({summary['examples_per_second']:.0f} {unit}/s) -> {cfg.out}/{saved}")
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


def _cmd_search(args) -> int:
    from .search import SearchConfig, search
    from .tasks import for_name

    extra = [item for item in args.set if item.strip().startswith("search.")]  # the search's own options
    args.set = [item for item in args.set if item not in extra]
    cfg = finetune_config(args)
    if cfg.task != "image-classification":
        raise GentuneError(f"search: neuron grouping searches image-classification runs, not task {cfg.task!r}")
    cfg.validate()
    from .config import apply_overrides

    search_cfg = apply_overrides(SearchConfig(space=args.space, episodes=args.episodes, strategy=args.strategy,
                                              seed=args.search_seed, **({"choices": args.choices} if args.choices
                                                                        else {})),
                                 [item.strip()[len("search."):] for item in extra])
    summary = search(cfg, search_cfg, for_name(cfg.task).build)
    best = summary["best"]
    print(f"search ({summary['strategy']}, {summary['episodes']} episodes, {summary['seconds']:.0f}s): best "
          f"validation accuracy {best['reward']:.4f} at episode {best['episode']}; groups per layer "
          f"{best['groups']} of {summary['filters']} -> {summary['recipe']}")
    return 0


def _cmd_diagnose(args) -> int:
    from .diagnose import DiagnoseConfig, diagnose

    cfg = _fill(DiagnoseConfig, args, _given(args, DIAGNOSE_FLAGS), _yaml(args), args.config, "diagnose")
    cfg.validate()
    res = diagnose(cfg.checkpoint, cfg.task, cfg.data, cfg.out, cfg.pretrain_data, cfg.max_examples, cfg.n_sigma,
                   cfg.bound, cfg.mlp, cfg.seed, cfg.pooling)
    for row in res["checkpoints"]:
        lin = row["complexity"]["linear"]
        print(f"{row['checkpoint']}: R_linear {lin['estimate']:.4f} [{lin['ci_low']:.4f}, {lin['ci_high']:.4f}], "
              f"bound {lin['bound']:.4f}")
    for warning in res.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"-> {cfg.out}/diagnostics.json, {cfg.out}/report.html"
          + (f" ({len(res['warnings'])} warning(s): see above and the report)" if res.get("warnings") else ""))
    return 0


def _cmd_kernel(args) -> int:
    from .kernel import KernelConfig, run_kernel

    cfg = _fill(KernelConfig, args, _given(args, KERNEL_FLAGS), _yaml(args), args.config, "kernel")
    res = run_kernel(cfg)
    solver = ", ".join(f"{k} {v:.4f}" for k, v in res["solver_metrics"].items())
    model = ", ".join(f"{k} {v:.4f}" for k, v in res["model_metrics"].items())
    trivial = ", ".join(f"{k} {v:.4f}" for k, v in res["trivial_metrics"].items())
    print(f"kernel {res['kernel']} over {res['parameters']:,} parameters ({res['params']}), {res['n_train']} x "
          f"{res['n_train']} and {res['n_eval']} x {res['n_train']} examples in "
          f"{sum(res['seconds'].values()):.1f} s")
    print(f"solver {res['solver']}: {solver}\nthe model itself: {model}\ntrivial predictor: {trivial}")
    print(f"-> {cfg.out}/metrics.json, {cfg.out}/predictions.json")
    return 0


def _cmd_evaluate(args) -> int:
    from .fs import dumps_strict
    from .tasks import evaluate

    options = None
    if args.set:
        from .config import apply_overrides
        from .tasks.text_classification import TextClassificationConfig

        bad = [s for s in args.set if not s.split("=", 1)[0].strip().startswith("prompt.")]
        if bad or args.objective != "prompt":
            raise GentuneError(f"--set {(bad or args.set)[0]}: evaluate takes only prompt.OPTION=VALUE, with "
                               "--objective prompt")
        cfg = apply_overrides(TextClassificationConfig(task="sst2", objective="prompt"), args.set)
        options = cfg.objective_options.get("prompt", {})
    print(dumps_strict(evaluate(args.checkpoint, args.task, args.data, batch_size=args.batch_size,
                                objective=args.objective, objective_options=options, precision=args.precision)))
    return 0


def _cmd_predict(args) -> int:
    import json

    from .data.ner import read
    from .fs import write_text_atomic
    from .tasks.ner import load, predict_entities

    bundle = load(args.checkpoint)
    if args.lines:
        try:
            texts = Path(args.lines).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise GentuneError(f"{args.lines}: cannot read ({e})") from None
        found = predict_entities(bundle, texts=texts, batch_size=args.batch_size, precision=args.precision,
                                 progress=True)
    elif args.data:
        found = predict_entities(bundle, sentences=read(args.data), batch_size=args.batch_size,
                                 precision=args.precision, progress=True)
    else:
        found = predict_entities(bundle, texts=args.text, batch_size=args.batch_size, precision=args.precision)
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in found)
    speed = bundle.speed
    print(f"{len(found)} entities in {speed['sentences']} sentences, {speed['seconds']:.1f} s "
          f"({speed['sentences_per_second']:.1f} sentences/s, {speed['inputs_per_second']:.0f} inputs/s, "
          f"{speed['precision']})" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    if args.out:
        write_text_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_list(args) -> int:
    from .catalog import describe, overview

    print(describe(args.name) if args.name else overview())
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare

    print(compare(args.runs, args.out))
    return 0


def _cmd_recipes(args) -> int:
    from .catalog import copy_recipe, recipes_table

    if args.action == "cp":
        if not (args.recipe and args.dest):
            raise GentuneError("gentune recipes cp NAME FILE: give the recipe and where to copy it")
        target = copy_recipe(args.recipe, args.dest)
        print(f"copied {args.recipe} to {target}; run it with --config {target}")
        return 0
    print(recipes_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"finetune": _cmd_finetune, "pretrain": _cmd_pretrain, "evaluate": _cmd_evaluate,
                "diagnose": _cmd_diagnose, "kernel": _cmd_kernel, "predict": _cmd_predict, "list": _cmd_list,
                "recipes": _cmd_recipes, "search": _cmd_search,
                "compare": _cmd_compare}
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
