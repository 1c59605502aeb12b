"""``gentune diagnose``: the seed paper's quantities for one or more checkpoints, as numbers and a report.

For every checkpoint the representation h(x) a downstream head sees is extracted once on the downstream data
(and on pretraining-distribution data when given) and cached; then :mod:`gentune.diagnostics` computes the
representation-induced Rademacher complexity (linear and MLP heads, with Monte Carlo intervals and the textbook
bound, and its curve over n), the heterogeneity between the two feature distributions, and, for a fine-tuned
checkpoint whose run directory is known, its generalization gap (training vs held-out metrics, recomputed).
Writes OUT/diagnostics.json and a self-contained OUT/report.html.

Checkpoints: a Hugging Face model (name or directory; a fine-tuned ``best/`` too), a gentune image encoder
(``gentune pretrain`` OUT/encoder) or a gentune image classifier (``best/`` of an image fine-tuning run).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import opt
from .errors import GentuneError
from .fs import write_json_atomic, write_text_atomic

IMAGE_TASK = "image-classification"
POINT_TASK = "point-classification"

FEATURES = "features"


@dataclass
class Representation:
    """How to get h(x) from a checkpoint: ``fn(batch) -> (B, d)``; ``kind`` is "text", "image" or "point"."""

    name: str
    kind: str
    fn: object
    meta: dict
    tokenizer: object = None
    prompt: object = None  # a prompt-based checkpoint: examples are encoded in its prompt, h(x) is the [MASK] state
    pooling: str = ""  # a text checkpoint's pooling when asked for (``cls``/``mean``); "" for the default


POOLINGS = ("cls", "mean")


def load_representation(checkpoint: str, pooling: str | None = None) -> Representation:
    """The representation of a text (Hugging Face) or image (gentune) checkpoint; errors name the path.

    ``pooling`` (text checkpoints other than prompt-based ones): ``cls`` (the [CLS] state) or ``mean`` (the mean
    of the last hidden states over the tokens, what a mean-pooled head or RadReg on text reads); None: what the
    checkpoint's own head reads (a mean-pooled classifier's mean, else the trained pooler, else [CLS])."""
    from .models.checkpoint import load_encoder, read_meta

    if pooling is not None and pooling not in POOLINGS:
        raise GentuneError(f"diagnose: pooling must be one of {POOLINGS}, got {pooling!r}")
    path = Path(checkpoint)
    meta = (read_meta(path) if path.is_dir() else None) or {}
    if pooling is not None and (meta.get("kind", "").startswith(("point-", "image-")) or
                                meta.get("objective") == "prompt"):
        raise GentuneError(f"{checkpoint}: pooling applies to text checkpoints with no prompt (this one has its "
                           "own representation)")
    if meta.get("kind") in ("point-encoder", "point-classifier"):  # the global feature (what a head reads)
        from .models.checkpoint import load_point_classifier, load_point_encoder

        if meta["kind"] == "point-encoder":
            encoder, meta = load_point_encoder(checkpoint)
        else:
            classifier, meta = load_point_classifier(checkpoint)
            encoder = classifier.encoder
        encoder.eval()
        return Representation(str(checkpoint), "point", lambda points: encoder(points)[1], meta)
    if meta.get("kind") in ("image-encoder", "image-classifier"):  # a classifier: its encoder is what the head sees
        encoder, meta = load_encoder(checkpoint)
        encoder.eval()
        return Representation(str(checkpoint), "image", encoder.forward_features, meta)
    from transformers import AutoModel

    from .models.hf import load_error, load_errors, load_tokenizer, quiet_transformers, resolve_model_path

    if meta.get("objective") == "prompt":  # what its label words read: the encoder's state at the [MASK]
        from .models.checkpoint import load_prompt_classifier

        model, prompt = load_prompt_classifier(path, meta)
        model.eval()
        return Representation(str(checkpoint), "text",
                              lambda batch: model.mask_hidden(**{k: v for k, v in batch.items() if k != "labels"}),
                              meta, load_tokenizer(str(path)), prompt)

    name = resolve_model_path(checkpoint)
    mean = meta.get("pooling") == "mean"  # a mean-pooled classifier: its head reads the mean of encoder/'s states
    if mean:
        name = str(path / "encoder")
    if not (Path(name) / "config.json").is_file() and path.exists():
        raise GentuneError(f"{checkpoint}: not a checkpoint (no gentune.json of an image model, no config.json)")
    try:
        with quiet_transformers():
            model, info = AutoModel.from_pretrained(name, output_loading_info=True)
    except load_errors() as e:
        raise load_error(f"{checkpoint}: cannot load a model", e) from None
    model.eval()
    # A pooler the checkpoint does not hold (RoBERTa-family classifiers have none) would be random: use [CLS].
    trained_pooler = not any(k.startswith("pooler.") for k in info.get("missing_keys", []))

    def features(batch: dict) -> torch.Tensor:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        if pooling == "mean" or (mean and pooling is None):
            from .models.pooling import masked_mean

            return masked_mean(out.last_hidden_state, batch.get("attention_mask"))
        if pooling == "cls":
            return out.last_hidden_state[:, 0]
        # what a BERT-style classifier's head reads: the (trained) pooler output, else the [CLS] state
        pooled = getattr(out, "pooler_output", None) if trained_pooler else None
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    return Representation(str(checkpoint), "text", features, meta, load_tokenizer(str(path) if mean else name),
                          pooling=pooling or "")


def _batches_text(rep: Representation, task: str, data: str, limit: int, seed: int):
    from .data import get_task, read_file
    from .objectives.classification import Collator, tokenize

    spec = get_task(task)
    if Path(data).suffix.lower() == ".txt":  # plain text, one example a line, no labels (e.g. pretraining text)
        import datasets

        try:
            lines = [l.strip() for l in Path(data).read_text().splitlines() if l.strip()]
        except UnicodeDecodeError as e:
            raise GentuneError(f"{data}: not UTF-8 text (byte {e.start})") from None
        if not lines:
            raise GentuneError(f"{data}: no text lines")
        ds = datasets.Dataset.from_dict({"text_a": lines, "text_b": [None] * len(lines), "label": [0] * len(lines)})
        pair, labelled = False, False
    else:
        pair, labelled = spec.text_pair, True
        try:
            ds = read_file(spec, data)
        except GentuneError as e:  # labels only colour the plots: a file without them (GLUE's test.tsv) works
            ds, labelled = read_file(spec, data, labelled=False), False
            print(f"note: read {data} without labels ({e})", file=sys.stderr)
    if len(ds) > limit:
        ds = ds.select(np.random.default_rng(seed).choice(len(ds), limit, replace=False).tolist())
    if rep.prompt is not None:
        from .objectives.prompt import tokenize_prompt

        if rep.prompt.pair and not pair:
            raise GentuneError(f"{data}: one text per line, but the checkpoint's prompt {rep.prompt.template!r} takes "
                               "two")
        tok = tokenize_prompt(ds, rep.tokenizer, rep.prompt, 128)
    else:
        tok = tokenize(ds, rep.tokenizer, 128, pair)
    dl = torch.utils.data.DataLoader(tok, batch_size=64, collate_fn=Collator(rep.tokenizer, spec.is_regression))
    return dl, (np.asarray(ds["label"], dtype=float) if labelled else np.full(len(ds), np.nan))


def _batches_image(rep: Representation, data: str, limit: int, seed: int):
    from .data.images import EvalTransform, ImageCollator, ImageDataset, load_images

    size = (rep.meta.get("config") or {}).get("image_size") \
        or rep.meta.get("image_size")  # conv encoders: the size they were trained on
    ds = load_images(data, image_size=size)
    if len(ds) > limit:
        ds = ds.select(np.sort(np.random.default_rng(seed).choice(len(ds), limit, replace=False)))
    mean, std = rep.meta.get("mean"), rep.meta.get("std")
    if mean is None:
        from .data.splits import pixel_stats

        mean, std = pixel_stats(ds.images)
    dl = torch.utils.data.DataLoader(ImageDataset(ds), batch_size=256,
                                     collate_fn=ImageCollator(EvalTransform(tuple(mean), tuple(std))))
    return dl, ds.labels


def _batches_points(rep: Representation, data: str, limit: int, seed: int):
    from .data.points import load_points

    ds = load_points(data, None, rep.meta.get("points", 1024))
    if len(ds) > limit:
        ds = ds.select(np.sort(np.random.default_rng(seed).choice(len(ds), limit, replace=False)))
    shapes = torch.from_numpy(ds.points)
    dl = torch.utils.data.DataLoader(shapes, batch_size=64, collate_fn=lambda b: {"points": torch.stack(b)})
    return dl, ds.labels


KINDS = {"image": "pixel_values", "point": "points"}  # the batch entry a representation reads; text: the batch


def extract(rep: Representation, task: str, data: str, cache: Path, limit: int = 2000, seed: int = 0):
    """(features (n, d) float32, labels (n,)) of ``data``, cached under ``cache`` by checkpoint, data and limit."""
    def stamp(path: Path) -> str:  # a retrained checkpoint or changed data (any of its files) gets a new key
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()) if path.exists() else []
        digest = hashlib.sha256()
        for f in files:
            st = f.stat()
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    key = hashlib.sha256(json.dumps([str(Path(rep.name).resolve()) if Path(rep.name).exists() else rep.name,
                                     stamp(Path(rep.name)), str(Path(data).resolve()), stamp(Path(data)), task,
                                     limit, seed] + ([rep.pooling] if rep.pooling else [])).encode()).hexdigest()[:16]
    file = cache / f"{key}.npz"
    if file.is_file():
        try:  # arrays only: a cache file is never unpickled; a damaged one is computed again
            with np.load(file, allow_pickle=False) as z:
                return z["features"], z["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            file.unlink(missing_ok=True)
    dl, labels = (_batches_image(rep, data, limit, seed) if rep.kind == "image" else
                  _batches_points(rep, data, limit, seed) if rep.kind == "point" else
                  _batches_text(rep, task, data, limit, seed))
    feats = []
    with torch.no_grad():
        for batch in dl:
            x = batch[KINDS[rep.kind]] if rep.kind in KINDS else batch
            feats.append(rep.fn(x).float().cpu())
    features = torch.cat(feats).numpy()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, labels=np.asarray(labels if labels is not None else []))
    tmp.replace(file)
    return features, labels


def run_gap(checkpoint: str) -> dict | None:
    """Training vs held-out metrics of a fine-tuned checkpoint, recomputed from its run's config.yaml (the parent
    of ``best/``) on the data its task assembles for training (``datasets(cfg)``, the same code); None when the
    checkpoint is not part of a gentune fine-tuning run, or the run had no held-out data."""
    import yaml

    from .config import load_saved
    from .diagnostics import generalization_gap
    from .tasks import for_name

    run = Path(checkpoint).parent
    if Path(checkpoint).name != "best" or not (run / "config.yaml").is_file():
        return None
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise GentuneError(f"{run / 'config.yaml'}: malformed ({type(e).__name__})") from None
    if not isinstance(saved, dict) or "task" not in saved:
        raise GentuneError(f"{run / 'config.yaml'}: not a fine-tuning run's config")
    task = for_name(str(saved["task"]))
    if task.load is None or task.score is None:
        return None
    cfg = load_saved(task.config, saved, str(run / "config.yaml"))
    data = task.datasets(cfg)
    if data.heldout is None:
        return None
    model = task.load(checkpoint, cfg.task)
    scores = [task.score(model, d) for d in (data.train, data.heldout)]  # at each task's own batch size
    # best/ is the best of the run's evaluations on this same held-out set: with more than one, the held-out score
    # was selected on itself and the gap is biased low (evaluate once, at the end, for an unbiased gap)
    metrics = run / "metrics.jsonl"
    evals = sum('"type": "eval"' in line for line in metrics.read_text().splitlines()) if metrics.is_file() else 0
    return {"train": scores[0], "heldout": scores[1], **generalization_gap(scores[0], scores[1]),
            "evaluations": evals, "selected_on_heldout": evals > 1}


def _short(checkpoint: str) -> str:
    """The last two path parts (runs/x/best -> x/best), or a model name as it is."""
    parts = Path(checkpoint).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else checkpoint


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # no label cut at the figure's edge
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def report_html(results: dict, projections: dict) -> str:
    """A self-contained HTML page: the ranking table, complexity curves with intervals, 2-D projections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["checkpoints"], key=lambda r: r["complexity"]["linear"]["estimate"])
    n_mlp = next((r["complexity"]["mlp"]["n"] for r in rows if r["complexity"].get("mlp")), None)
    cols = ["checkpoint", "R (linear)", "95% CI", "bound", "R (linear, scale-free)",
            f"R (mlp, n = {n_mlp})" if n_mlp else "R (mlp)", "MMD²", "p", "domain acc.", "gap"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        lin, mlp = r["complexity"]["linear"], r["complexity"].get("mlp") or {}
        het, gap = r.get("heterogeneity") or {}, r.get("gap") or {}
        gap_key = next((k for k in gap if k.endswith("_gap") and k != "loss_gap"), "loss_gap")
        norm = r["complexity"].get("linear_normalized") or {}
        cells = [html.escape(r["checkpoint"]), f"{lin['estimate']:.4f}", f"[{lin['ci_low']:.4f}, {lin['ci_high']:.4f}]",
                 f"{lin['bound']:.4f}", f"{norm['estimate']:.4f}" if norm else "-",
                 f"{mlp['estimate']:.4f}" if mlp else "-",
                 f"{het['mmd2']:.4f}" if het else "-", f"{het['p_value']:.3f}" if het else "-",
                 f"{het['domain_accuracy']:.3f}" if het else "-",
                 (f"{gap_key.removesuffix('_gap')} {gap[gap_key]:+.4f}"
                  + (" (best of several evaluations on the held-out set: optimistic)"
                     if gap.get("selected_on_heldout") else "") if gap_key in gap
                  else "<b>not computed</b> (see the warnings)") if gap else "-"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    figs = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers, styles = "osD^vP*X", ("-", "--", "-.", ":")
    for i, r in enumerate(rows):
        curve = r["complexity"]["curve"]
        # a small horizontal offset per checkpoint, so curves and intervals that coincide stay distinguishable
        shift = 1.0 + 0.025 * (i - (len(rows) - 1) / 2)
        n = [c["n"] * shift for c in curve]
        color = f"C{i % 10}"
        ax.errorbar(n, [c["estimate"] for c in curve],
                    yerr=[[c["estimate"] - c["ci_low"] for c in curve], [c["ci_high"] - c["estimate"] for c in curve]],
                    marker=markers[i % len(markers)], ms=5, mfc="white", lw=1.6, capsize=2,
                    ls=styles[(i // len(markers)) % len(styles)], color=color,
                    label=f"{_short(r['checkpoint'])} (95% CI)")
        ax.plot(n, [c["bound"] for c in curve], ls=":", lw=1.2, color=color,
                label=f"{_short(r['checkpoint'])}: bound")
    ax.set(xscale="log", yscale="log", xlabel="n (downstream examples)",
           ylabel="Rademacher complexity\n(linear heads, norm <= B)", title="complexity vs n (dotted: the bound)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figs.append(_png(fig))
    for name, (xy, labels, domain, explained) in projections.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        labels = np.asarray(labels, dtype=float)
        down = domain == 0
        for k, value in enumerate(np.unique(labels[down & ~np.isnan(labels)])):
            pick = down & (labels == value)
            axes[0].scatter(xy[pick, 0], xy[pick, 1], s=6, color=f"C{k % 10}", label=f"label {value:g}")
        axes[0].set_title(f"{_short(name)}: downstream examples, by label")
        for value, color, what in ((0, "tab:blue", "downstream"), (1, "tab:red", "pretraining")):
            pick = domain == value
            if pick.any():
                axes[1].scatter(xy[pick, 0], xy[pick, 1], s=6, color=color, alpha=0.6, label=what)
        axes[1].set_title("by data set")
        for ax in axes:
            ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of the variance)",
                   ylabel=f"PC 2 ({explained[1]:.0%} of the variance)")
            if ax.get_legend_handles_labels()[0]:  # unlabelled data: no label legend
                ax.legend(fontsize=7, markerscale=2, loc="best")
        axes[0].set(xlim=axes[1].get_xlim(), ylim=axes[1].get_ylim())  # one projection, the same frame
        figs.append(_png(fig))
    imgs = "".join(f'<p><img src="{src}"></p>' for src in figs)
    warned = ("<div style='border:2px solid #c60;background:#fff4e5;padding:6px 10px'><b>Warnings</b> (parts of "
              "this report that failed):<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in results.get("warnings", []))
              + "</ul></div>") if results.get("warnings") else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gentune diagnose</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>gentune diagnose</h1><p>task {html.escape(results['task'])}, data "
            f"{html.escape(results['data'])}; n = {results['n']} downstream examples; checkpoints ranked by "
            f"the linear-head complexity (lowest first).</p>{warned}<table><tr>{head}</tr>{''.join(body)}</table>"
            f"{imgs}</body></html>")


@dataclass
class DiagnoseConfig:
    """What ``gentune diagnose`` takes (flags, ``--config FILE.yaml`` and ``--set key=value`` alike)."""

    checkpoint: list[str] = opt(factory=list, help='checkpoints to diagnose (repeatable --checkpoint)')
    task: str = opt("", 'a text task, image-classification or point-classification')
    data: str = opt("", "downstream data: a file of the task's formats, an image folder, or point data (.npz)")
    pretrain_data: str | None = opt(None, 'pretraining-distribution data, for heterogeneity')
    out: str = opt("", 'output folder: diagnostics.json, report.html, the feature cache')
    max_examples: int = opt(2000, 'examples drawn from each data set (seeded)')
    n_sigma: int = opt(200, 'sign vectors of the Monte Carlo estimate')
    bound: float = opt(1.0, "the heads' norm bound B")
    mlp: bool = opt(True, 'the MLP-head estimate (the slow one)')
    seed: int = opt(0, 'seeds the subsamples, the signs and the MLP heads')
    pooling: str | None = opt(None, "text checkpoints: cls or mean (the masked mean of the last hidden states, what "
                                    "a mean-pooled head or RadReg on text reads); default: what the checkpoint's "
                                    "head reads")

    def validate(self) -> None:
        for key in ("task", "data", "out"):
            if not getattr(self, key):
                raise GentuneError(f"diagnose: {key} is required (--{key})")


def diagnose(checkpoints: list[str], task: str, data: str, out: str, pretrain_data: str | None = None,
             max_examples: int = 2000, n_sigma: int = 200, bound: float = 1.0, mlp: bool = True,
             seed: int = 0, pooling: str | None = None) -> dict:
    """Every diagnostic for every checkpoint; writes OUT/diagnostics.json and OUT/report.html (``pooling``: see
    :func:`load_representation`)."""
    from sklearn.decomposition import PCA

    from .diagnostics import complexity_curve, feature_spread, heterogeneity, rademacher_complexity

    if not checkpoints:
        raise GentuneError("diagnose: give at least one --checkpoint")
    if not Path(data).exists():
        raise GentuneError(f"{data}: no such file or folder")
    if max_examples < 2 or n_sigma < 2:
        raise GentuneError(f"diagnose: max_examples and n_sigma must be at least 2, got {max_examples} and {n_sigma}")
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise GentuneError(f"--out {outdir}: exists and is not a folder")
    cache = outdir / FEATURES
    results = {"task": task, "data": str(data), "pretrain_data": pretrain_data, "n": None, "checkpoints": [],
               "warnings": []}
    projections = {}
    for ckpt in checkpoints:
        rep = load_representation(ckpt, pooling)
        wanted = {IMAGE_TASK: "image", POINT_TASK: "point"}.get(task, "text")
        if rep.kind != wanted:
            article = "an" if rep.kind == "image" else "a"
            raise GentuneError(f"{ckpt}: {article} {rep.kind} checkpoint cannot be diagnosed on task {task!r}")
        feats, labels = extract(rep, task, data, cache, max_examples, seed)
        results["n"] = len(feats)
        complexity = {"linear": rademacher_complexity(feats, "linear", bound, n_sigma, seed),
                      # scale taken out (what RadReg penalises): comparable across models of different feature norms
                      "linear_normalized": rademacher_complexity(feats, "linear", bound, n_sigma, seed,
                                                                 normalize=True),
                      "curve": complexity_curve(feats, seed=seed, head="linear", bound=bound, n_sigma=n_sigma)}
        if mlp:  # the slow one, on a seeded sample (images are stored class by class)
            pick = np.random.default_rng(seed).permutation(len(feats))[:512]
            complexity["mlp"] = rademacher_complexity(feats[pick], "mlp", bound, min(n_sigma, 32), seed)
        row = {"checkpoint": ckpt, "kind": rep.kind, "pooling": rep.pooling or None, "dim": int(feats.shape[1]),
               "complexity": complexity,
               "mean_norm": float(np.linalg.norm(feats, axis=1).mean()), "spread": feature_spread(feats)}
        domain = np.zeros(len(feats))
        both = feats
        if pretrain_data:
            other, _ = extract(rep, task, pretrain_data, cache, max_examples, seed)
            row["heterogeneity"] = heterogeneity(feats, other, seed=seed)
            both = np.concatenate([feats, other])
            domain = np.concatenate([domain, np.ones(len(other))])
            labels = np.concatenate([np.asarray(labels, dtype=float), np.full(len(other), np.nan)])
        try:
            row["gap"] = run_gap(ckpt)
        except GentuneError as e:  # e.g. the run's data not found from here: keep every other number
            row["gap"] = {"error": str(e)}
            results["warnings"].append(f"{ckpt}: generalization gap not computed: {e}")
        results["checkpoints"].append(row)
        pca = PCA(2, random_state=seed)
        projections[ckpt] = (pca.fit_transform(both), labels, domain, pca.explained_variance_ratio_)
    outdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(outdir / "diagnostics.json", results)
    write_text_atomic(outdir / "report.html", report_html(results, projections))
    return results


__all__ = ["DiagnoseConfig", "diagnose", "extract", "load_representation", "report_html", "run_gap"]
