"""``gentune kernel``: the empirical NTK of a model on a task's training examples, and what its solvers predict on
held-out examples (Malladi et al., ICML 2023). See ``docs/methods/kernel.md``.

Writes into ``--out``:

- ``kernel.json``: the options (written first; a rerun with the same options resumes);
- ``train_train.safetensors`` / ``eval_train.safetensors``: the kernels, (n, C, n, C) and (m, C, n, C) float64
  (``flipped`` beside ``kernel`` for asym-signgd), with the labels and the initial outputs ``f0``;
- ``blocks/``: the finished panels (resume by blocks);
- ``predictions.json``: per held-out example its gold label, the solver's prediction and outputs;
- ``metrics.json``: the task's metrics of the kernel solver and of the model as it stands (its own argmax, the
  zero-shot score for a prompt), the trivial predictor's on the same file, sizes and seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import opt
from .errors import GentuneError

OBJECTIVES = ("prompt", "classification")
HEAD_INITS = ("probe", "random")


@dataclass
class KernelConfig:
    """What ``gentune kernel`` takes (flags, ``--config FILE.yaml`` and ``--set key=value`` alike)."""

    model: str = opt("", "a Hugging Face model (a masked LM for the prompt objective)")
    checkpoint: str = opt("", "a fine-tuned gentune run's best/ (instead of --model): the kernel after training")
    task: str = opt("", "a text task (sst2, sst5, mr, cr, mpqa, subj, trec, rte, qnli, mrpc, ...)")
    train: str = opt("", "the training examples (any file of the task's formats)")
    eval: str = opt("", "the held-out examples the solvers predict")
    out: str = opt("", "output folder")
    objective: str = opt("prompt", "prompt (label-word logits at the [MASK]) or classification (head logits)")
    kernel: str = opt("sgd", "sgd, signgd or asym-signgd")
    solver: str = opt("", "lstsq, logistic, svm or asym (default: asym for asym-signgd, else lstsq)")
    params: str = opt("all", "all, no-embeddings, no-head, bitfit or lora")
    difference: bool | None = opt(None, "two classes: the kernel of the single logit f_1 - f_0 (default: only for "
                                        "the asym solver, which needs it)")
    adjust_for_init: bool = opt(False, "fit y - f0 and add the initial outputs f0 back (lstsq, logistic, asym)")
    reg: float = opt(0.0, "lstsq: relative regularisation, K + reg ||K|| I")
    logistic_reg: float = opt(1e-3, "logistic: the penalty (reg / 2) alpha^T K alpha")
    svm_c: float = opt(1.0, "svm: scikit-learn's C")
    asym_gamma: float = opt(1.0, "asym: gamma of the least-squares SVM")
    asym_lambda: float = opt(0.5, "asym: weight of the kernel's side against the flipped one's")
    sign_eps: float = opt(0.0, "sign kernels: 0 is sign(g); > 0 is g / (|g| + sign_eps), Adam's first step")
    head: str = opt("probe", "classification objective from --model: probe (the head fitted by logistic "
                             "regression on the frozen features, as the paper's no-prompt kernels) or random")
    pooling: str = opt("cls", "classification objective: cls or mean")
    lora_r: int = opt(8, "--params lora: the LoRA rank (query and value; B starts at 0, as PEFT's)")
    template: str | None = opt(None, "prompt objective: the template (default: the task's packaged one)")
    label_words: list[str] | None = opt(None, "prompt objective: one word per label")
    max_length: int = opt(128, "tokens per example")
    max_eval: int = opt(0, "held-out examples used, the first ones (0: all)")
    chunk: int = opt(8, "examples per vmapped Jacobian")
    panel: int = opt(64, "training examples whose Jacobians are held at once (sets the memory)")
    progress: bool = opt(True, "a progress bar (plain lines off a terminal) with the time left")
    seed: int = opt(0, "seeds the random head and LoRA initialisation")

    def validate(self) -> None:
        from .diagnostics.kernels import SOLVERS
        from .diagnostics.ntk import KERNELS, PARAM_SETS

        for key in ("task", "train", "eval", "out"):
            if not getattr(self, key):
                raise GentuneError(f"kernel: {key} is required (--{key})")
        if bool(self.model) == bool(self.checkpoint):
            raise GentuneError("kernel: give exactly one of --model and --checkpoint")
        for key, allowed in (("objective", OBJECTIVES), ("kernel", KERNELS), ("params", PARAM_SETS),
                             ("head", HEAD_INITS)):
            if getattr(self, key) not in allowed:
                raise GentuneError(f"kernel: {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.solver and self.solver not in SOLVERS:
            raise GentuneError(f"kernel: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.chosen_solver == "asym" and self.kernel != "asym-signgd":
            raise GentuneError("kernel: the asym solver is for --kernel asym-signgd")
        if self.chunk < 1 or self.panel < 1 or self.max_length < 8 or self.max_eval < 0 or self.lora_r < 1:
            raise GentuneError("kernel: chunk, panel and lora_r must be >= 1, max_length >= 8, max_eval >= 0")

    @property
    def chosen_solver(self) -> str:
        return self.solver or ("asym" if self.kernel == "asym-signgd" else "lstsq")

    @property
    def use_difference(self) -> bool:
        return self.chosen_solver == "asym" if self.difference is None else bool(self.difference)


def encode_examples(tokenizer, task, data, prompt=None, max_length: int = 128) -> dict:
    """Padded tensors of every example of ``data`` (text_a, text_b columns): through ``prompt`` (a
    :class:`~gentune.data.prompts.Prompt`) when given, else as the classifier's inputs."""
    from transformers import DataCollatorWithPadding

    texts_b = list(data["text_b"]) if task.text_pair else None
    if prompt is not None:
        from .data.prompts import encode

        enc = encode(prompt, tokenizer, list(data["text_a"]), texts_b, max_length)
    else:
        enc = tokenizer(list(data["text_a"]), texts_b, truncation=True, max_length=max_length)
        enc = {k: enc[k] for k in enc}
    rows = [{k: enc[k][i] for k in enc} for i in range(len(enc["input_ids"]))]
    return dict(DataCollatorWithPadding(tokenizer)(rows))


def _head_layer(model):
    """The classifier's output layer (the last Linear outside the encoder)."""
    from .diagnostics.ntk import encoder_of

    base = encoder_of(model)
    inside = {id(m) for m in base.modules()} if base is not None else set()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside]
    if not layers:
        raise GentuneError(f"kernel: cannot find the output layer of a {type(model).__name__}")
    return layers[-1]


def probe_head(model, inputs: dict, labels: np.ndarray, regression: bool, batch_size: int = 32) -> None:
    """Set the classifier's output layer to the logistic regression (its L2 penalty chosen by scikit-learn's 5-fold
    cross-validation on these examples; least squares for regression) on the features it reads, frozen: the
    reference code's initialisation of its no-prompt kernels."""
    from sklearn.linear_model import LinearRegression, LogisticRegressionCV

    from .diagnostics.ntk import take_rows

    layer = _head_layer(model)
    seen = []
    hook = layer.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().double()))
    n = len(labels)
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, n, batch_size):
                model(**take_rows(inputs, torch.arange(s, min(s + batch_size, n))))
    finally:
        hook.remove()
    h = torch.cat(seen).numpy()
    if regression:
        fit = LinearRegression().fit(h, labels.astype(float))
        w, b = fit.coef_[None, :], np.atleast_1d(fit.intercept_)
    else:
        fit = LogisticRegressionCV(max_iter=5000, random_state=0).fit(h, labels)
        w, b = fit.coef_, fit.intercept_
        if w.shape[0] == 1:  # binary: scikit-learn's one logit is f_1 - f_0
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        if w.shape[0] != layer.out_features:
            raise GentuneError("kernel: head=probe needs every class in the training examples")
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))


def _model(cfg: KernelConfig, task):
    """(model, tokenizer, prompt or None)."""
    from .models.hf import load_tokenizer
    from .tasks.text_classification import load, prompt_model, prompt_of

    if cfg.checkpoint:
        loaded = load(cfg.checkpoint, cfg.task)
        if (loaded.prompt is not None) != (cfg.objective == "prompt"):
            raise GentuneError(f"--checkpoint {cfg.checkpoint}: a {'prompt' if loaded.prompt else 'classification'}"
                               f" checkpoint; give --objective {'prompt' if loaded.prompt else 'classification'}")
        return loaded.model, loaded.tokenizer, loaded.prompt
    tokenizer = load_tokenizer(cfg.model)
    if cfg.objective == "prompt":
        options = {k: v for k, v in (("template", cfg.template), ("label_words", cfg.label_words)) if v}
        prompt = prompt_of(task, options)
        model, _ = prompt_model(cfg.model, tokenizer, prompt)
        return model, tokenizer, prompt
    from .models.hf import load_for_task

    return load_for_task(cfg.model, task, cfg.pooling), tokenizer, None


def _lora(cfg: KernelConfig, model):
    import peft

    from .models.hf import quiet_transformers

    task_type = None if cfg.objective == "prompt" else "SEQ_CLS"
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                             target_modules=["query", "value"], task_type=task_type)
    with quiet_transformers():
        return peft.get_peft_model(model, config)


def run_kernel(cfg: KernelConfig) -> dict:
    """Compute the kernels, solve, score; write the folder described in the module. Returns the metrics."""
    from safetensors.torch import save_file

    from .data import get_task
    from .data.glue import read_file
    from .diagnostics import kernels as ks
    from .diagnostics.ntk import kernel, outputs
    from .fs import read_json, write_json_atomic
    from .metrics import compute

    cfg.validate()
    task = get_task(cfg.task)
    regression = task.is_regression
    if regression and cfg.chosen_solver != "lstsq":
        raise GentuneError(f"kernel: {task.name} is a regression task: only the lstsq solver applies")
    if regression and cfg.objective == "prompt":
        raise GentuneError(f"kernel: {task.name} is a regression task, whose prompt output is a softmax of its two "
                           "poles, not a logit: use --objective classification")
    out = Path(cfg.out)
    options = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("progress", "out")}
    if out.exists():
        if not out.is_dir():
            raise GentuneError(f"--out {out}: exists and is not a folder")
        marker = out / "kernel.json"
        if any(out.iterdir()) and not marker.is_file():
            raise GentuneError(f"--out {out}: a folder that holds no kernel computation; give an empty or new one")
        if marker.is_file() and read_json(marker, what="kernel options") != options:
            raise GentuneError(f"--out {out}: holds a kernel computation with other options ({marker}); give "
                               "another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "kernel.json", options)

    train, held = read_file(task, cfg.train), read_file(task, cfg.eval)
    if cfg.max_eval:
        held = held.select(range(min(cfg.max_eval, len(held))))
    torch.manual_seed(cfg.seed)
    model, tokenizer, prompt = _model(cfg, task)
    model.eval()
    x = encode_examples(tokenizer, task, train, prompt, cfg.max_length)
    y = encode_examples(tokenizer, task, held, prompt, cfg.max_length)
    labels_train, labels_eval = np.asarray(train["label"]), np.asarray(held["label"])
    if cfg.objective == "classification" and cfg.model and cfg.head == "probe":
        probe_head(model, x, labels_train, regression)
    if cfg.params == "lora":
        model = _lora(cfg, model)
    if cfg.use_difference and (regression or task.num_labels != 2):
        raise GentuneError(f"kernel: the logit difference is for two classes; {task.name} has "
                           f"{'a regression target' if regression else f'{task.num_labels} classes'}")
    common = {"kind": cfg.kernel, "params": cfg.params, "difference": cfg.use_difference, "sign_eps": cfg.sign_eps,
              "chunk": cfg.chunk, "panel": cfg.panel, "progress": cfg.progress}
    k_tt = kernel(model, x, block_dir=out / "blocks" / "train_train", **common)
    k_et = kernel(model, y, x, block_dir=out / "blocks" / "eval_train", **common)
    f0_train = outputs(model, x, cfg.use_difference)
    f0_eval = outputs(model, y, cfg.use_difference)
    for name, k, f0, labels in (("train_train", k_tt, f0_train, labels_train), ("eval_train", k_et, f0_eval,
                                                                                  labels_eval)):
        tensors = {"kernel": k.values, "f0": f0, "labels": torch.as_tensor(labels).double()}
        if k.flipped is not None:
            tensors["flipped"] = k.flipped
        path = out / f"{name}.safetensors"
        save_file(tensors, str(path.with_suffix(".tmp")), metadata={"kind": k.kind, "params": k.params})
        os.replace(path.with_suffix(".tmp"), path)  # a reader never sees half a file

    solver = cfg.chosen_solver
    solver_options = {"lstsq": {"reg": cfg.reg}, "logistic": {"reg": cfg.logistic_reg}, "svm": {"c_reg": cfg.svm_c},
                      "asym": {"gamma": cfg.asym_gamma, "lam": cfg.asym_lambda}}[solver]
    init = {"f0_train": f0_train, "f0_eval": f0_eval} if cfg.adjust_for_init else {}
    scores = ks.solve(solver, k_tt.values, labels_train, k_et.values, regression=regression,
                      difference=cfg.use_difference, k_eval_flipped=k_et.flipped, **init, **solver_options)
    pred = ks.predictions(scores, regression)
    own = ks.predictions(f0_eval, regression)
    metric_names = task.metrics
    result = {
        "task": task.name, "train": cfg.train, "eval": cfg.eval, "n_train": len(labels_train),
        "n_eval": len(labels_eval), "outputs": int(k_tt.values.shape[1]), "kernel": cfg.kernel, "solver": solver,
        "params": cfg.params, "parameters": k_tt.dim, "objective": cfg.objective,
        "solver_metrics": compute(metric_names, pred, labels_eval),
        "model_metrics": compute(metric_names, own, labels_eval),
        "trivial_metrics": _trivial(metric_names, labels_train, labels_eval, regression),
        "seconds": {"train_train": round(k_tt.seconds, 3), "eval_train": round(k_et.seconds, 3)},
    }
    write_json_atomic(out / "predictions.json", {"gold": labels_eval.tolist(), "prediction": pred.tolist(),
                                                 "outputs": scores.tolist()})
    write_json_atomic(out / "metrics.json", result)
    return result


def _trivial(names, train_labels, eval_labels, regression: bool) -> dict:
    """The best constant predictor scored on the held-out labels: the training majority class (the training mean
    for regression; MCC is 0 for any constant)."""
    from .metrics import compute

    if regression:
        mean = float(np.mean(train_labels))
        return {"mse": float(np.mean((eval_labels - mean) ** 2))}
    constant = np.full_like(eval_labels, np.bincount(train_labels).argmax())
    return {k: v for k, v in compute([n for n in names if n != "pearson" and n != "spearman"], constant,
                                     eval_labels).items()}


__all__ = ["KernelConfig", "encode_examples", "probe_head", "run_kernel"]
