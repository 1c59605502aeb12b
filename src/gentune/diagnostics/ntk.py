"""Empirical neural tangent kernels of a model's outputs (Malladi, Wettig, Yu, Chen, Arora, "A Kernel-Based View of
Language Model Fine-Tuning", ICML 2023).

For outputs f_c(x; theta) (the label-word logits at the [MASK] of a prompt-based classifier, a classifier's head
logits, or for two classes optionally the single difference f_1 - f_0) and a chosen set of parameters theta,

    K_sgd(i, c; j, c')        = < grad f_c(x_i), grad f_c'(x_j) >                    (the eNTK: SGD's kernel)
    K_signgd(i, c; j, c')     = < sign grad f_c(x_i), sign grad f_c'(x_j) >
    K_asym-signgd(i, c; j, c') = < grad f_c(x_i), sign grad f_c'(x_j) >              (Adam's, through SignGD)

K_asym-signgd is not symmetric: a SignGD step on example j moves f(x_i) by -eta < grad f(x_i), sign grad L_j >, so
the sign belongs to the training side, the columns. :func:`kernel` also returns the flipped kernel
< sign grad f_c(x_i), grad f_c'(x_j) > for it, which the asymmetric solver needs (for X = Y it is the transpose).

How it is computed (the cost bound: one per-example Jacobian of every example, n x C backward passes, plus the
GEMM of 2 (nC)^2 P multiply-adds for P parameters):

- per-example Jacobians with ``torch.func`` (``functional_call`` + ``vmap(jacrev)``), ``chunk`` examples at a time,
  in the model's dtype; examples are sorted by length so a chunk pads only to its own longest row;
- each kernel block is a GEMM of two chunks' flattened Jacobians in the model's dtype, ``slab`` columns at a time,
  accumulated in float64;
- embedding tables (of at least 512 rows) are kept row-sparse: a chunk touches only the rows of
  its tokens (and, for a tied decoder, of its label words), and two chunks meet only on the rows both touch;
- memory is bounded by ``panel`` (examples whose Jacobians are held while the others stream past in chunks), not
  by n: a panel's Jacobians are computed once, every column chunk once per panel (for a symmetric kernel only the
  chunks at or after the panel);
- panels are shared out across processes, balanced by their work (``torch.distributed``: ``torchrun`` or
  ``accelerate launch``) and summed
  onto every rank; with ``block_dir`` each finished panel is saved (safetensors) and skipped when the computation
  is run again.

The model is put in eval mode (no dropout): the kernel is that of the deterministic network at theta.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import GentuneError
from ..progress import WorkProgress

KERNELS = ("sgd", "signgd", "asym-signgd")
PARAM_SETS = ("all", "no-embeddings", "no-head", "bitfit", "lora")
SPARSE_ROWS = 512  # embedding tables with at least this many rows (position embeddings) are kept row-sparse
_FORMAT = "gentune-kernel-panel/1"


# ----------------------------------------------------------------------------------------------- outputs


def output_fn(model, difference: bool = False) -> Callable[[torch.nn.Module, dict], torch.Tensor]:
    """f(module, batch) -> (batch, C): the label-word logits of a
    :class:`~gentune.models.prompting.PromptClassifier` (its ``label_logits``: for a regression prompt the two
    poles), else the ``logits`` of the model's output; with ``difference`` (two outputs only) the single logit
    f_1 - f_0, shape (batch, 1), for labels in {-1, +1}."""
    from ..models.prompting import PromptClassifier

    prompt = isinstance(_core(model), PromptClassifier)

    def f(module, batch):
        out = module(**batch)
        z = out.label_logits if prompt else out.logits
        if difference:
            if z.shape[-1] != 2:
                raise GentuneError(f"kernel: the logit difference needs two outputs, the model has {z.shape[-1]}")
            z = z[:, 1:] - z[:, :1]
        return z

    return f


def _core(model):
    """The model under a PEFT wrapper (``PeftModel.base_model.model``), else the model."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None) if base is not None and type(model).__name__.startswith("Peft") else None
    return inner if inner is not None else model


def prompt_inputs(model, inputs: dict) -> dict:
    """``inputs`` with ``mask_pos`` (each row's [MASK]) for a prompt-based classifier, found here once, so that the
    vmapped forward reads no tensor value; other models' inputs are returned as they are."""
    from ..models.prompting import PromptClassifier

    core = _core(model)
    if isinstance(core, PromptClassifier) and "mask_pos" not in inputs:
        return {**inputs, "mask_pos": core.mask_positions(inputs["input_ids"])}
    return inputs


# ----------------------------------------------------------------------------------------------- parameters


def encoder_of(model):
    """The encoder under the head: a masked LM's or classifier's ``base_model``, a mean-pooled classifier's
    ``encoder``; None when the model has no such part."""
    from ..models.pooling import MeanPooledClassifier
    from ..models.prompting import PromptClassifier

    core = _core(model)
    if isinstance(core, PromptClassifier):
        return core.mlm.base_model
    if isinstance(core, MeanPooledClassifier):
        return core.encoder
    base = getattr(core, "base_model", None)
    return base if base is not None and base is not core else None


def select_parameters(model, which: str = "all") -> dict[str, torch.nn.Parameter]:
    """The parameters a kernel is taken over, by name (tied weights once):

    - ``all``: every parameter;
    - ``no-embeddings``: all but the embedding layers (word, position, token type and their LayerNorm: every name
      with ``embeddings`` in it; a decoder tied to the word embeddings goes with them);
    - ``no-head``: the encoder only (the masked-LM head, or the classifier and what lies outside the base model);
    - ``bitfit``: the biases (BitFit);
    - ``lora``: what a PEFT-wrapped model trains (its LoRA matrices, and the head PEFT keeps trainable): the kernel
      of subspace fine-tuning. The model must be a ``peft`` model (``gentune kernel --params lora`` wraps it).
    """
    if which not in PARAM_SETS:
        raise GentuneError(f"kernel params must be one of {', '.join(PARAM_SETS)}, got {which!r}")
    named = dict(model.named_parameters())
    if which == "lora":
        if not any("lora_" in n for n in named):
            raise GentuneError("kernel params lora: the model has no LoRA parameters (wrap it with "
                               "peft.get_peft_model, or give --params lora to gentune kernel)")
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif which == "all":
        chosen = named
    elif which == "no-embeddings":
        chosen = {n: p for n, p in named.items() if "embeddings" not in n}
    elif which == "bitfit":
        chosen = {n: p for n, p in named.items() if n.endswith("bias")}
    else:
        base = encoder_of(model)
        if base is None:
            raise GentuneError(f"kernel params no-head: cannot tell the head of a {type(_core(model)).__name__} "
                               "from its encoder")
        inside = {id(p) for p in base.parameters()}
        chosen = {n: p for n, p in named.items() if id(p) in inside}
    if not chosen:
        raise GentuneError(f"kernel params {which}: no parameter of the model qualifies")
    return chosen


# ----------------------------------------------------------------------------------------------- Jacobians


@contextlib.contextmanager
def _vmappable(model):
    """Run ``model`` so that ``vmap`` can pass through it, and fast: eval mode; transformers' attention masks built
    in full instead of being skipped when a padding mask is all ones (that test reads a tensor's value, which vmap
    cannot; building the mask gives the same attention); eager attention. Restores all three."""
    was_training = model.training
    model.eval()
    patched = []
    try:
        from transformers import masking_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        masking_utils = None
    for name in ("_ignore_bidirectional_mask_sdpa", "_can_skip_bidirectional_mask_xpu"):
        if masking_utils is not None and hasattr(masking_utils, name):
            patched.append((name, getattr(masking_utils, name)))
            setattr(masking_utils, name, lambda *a, **k: False)
    attention = []  # eager attention: SDPA's backward has no vmap batching rule (a slow per-example fallback)
    for m in model.modules():
        config = getattr(m, "config", None)
        if hasattr(m, "set_attn_implementation") and getattr(config, "_attn_implementation", "eager") != "eager":
            attention.append((m, config._attn_implementation))
    try:
        for m, _ in attention:
            m.set_attn_implementation("eager")
        yield
    finally:
        for m, impl in attention:
            m.set_attn_implementation(impl)
        for name, fn in patched:
            setattr(masking_utils, name, fn)
        model.train(was_training)


@dataclass
class _Grads:
    """The flattened per-example Jacobians of a chunk: rows are (example, output) pairs, row = example * C + c.
    ``dense``: the concatenated non-sparse parameters, (rows, P_dense); ``sparse``: per row-sparse parameter the
    rows it touches and their values, ((k,), (rows, k, width))."""

    dense: torch.Tensor
    sparse: list[tuple[torch.Tensor, torch.Tensor]]
    outputs: int


class Jacobians:
    """Per-example Jacobians of ``fn(model, batch)`` with respect to ``params``, a chunk of examples at a time.

    The word-embedding table (and a prompt classifier's output embedding, tied to it or not) is differentiated
    through the rows a chunk uses only: a forward hook on the input embedding reads its tokens from those rows, and
    one on the output embedding recomputes the label words' logits from their rows (the full-vocabulary logits it
    computed are kept, without gradient). Their Jacobians never take the table's size (for splade-tiny 3.9M of its
    4.4M parameters). Any other embedding table of at least 512 rows (position embeddings) is kept row-sparse
    after the fact; dense weights stay dense, whatever their shape."""

    def __init__(self, model, fn, params: dict[str, torch.nn.Parameter]):
        from torch.func import functional_call, jacrev, vmap

        from ..models.prompting import PromptClassifier

        self.model, self.fn = model, fn
        ids = {id(p): n for n, p in params.items()}
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.input_table = ids.get(id(emb.weight)) if isinstance(emb, torch.nn.Embedding) else None
        self.emb, self.out = emb, None
        self.output_table, self.labels = None, None
        core = _core(model)
        if isinstance(core, PromptClassifier):
            out = core.mlm.get_output_embeddings()
            if isinstance(out, torch.nn.Linear) and id(out.weight) in ids:
                self.out, self.labels = out, torch.tensor(sorted(core.label_ids), dtype=torch.long)
                self.output_table = None if out.weight is getattr(emb, "weight", None) else ids[id(out.weight)]
        tables = {self.input_table, self.output_table} - {None}
        self.names = [n for n in params if n not in tables]
        tables_of = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        self.sparse_names = [n for n in self.names if id(params[n]) in tables_of and params[n].shape[0] >= SPARSE_ROWS]
        self.dense_names = [n for n in self.names if n not in self.sparse_names]
        self.weights = {n: p.detach() for n, p in params.items()}
        self.params = {n: self.weights[n] for n in self.names}
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in self.params}
        self.frozen.update(dict(model.named_buffers()))
        self.dim = sum(p.numel() for p in params.values())
        self._rows: dict[str, torch.Tensor] = {}  # this chunk's table rows (sorted vocabulary ids)
        self._where: torch.Tensor | None = None  # vocabulary id -> its row among the input table's rows
        self._current: dict[str, torch.Tensor] = {}  # the table rows being differentiated, inside the vmap

        def one(p, example):
            self._current = {k: p[k] for k in tables}
            batch = {k: v.unsqueeze(0) for k, v in example.items()}
            rest = {k: v for k, v in p.items() if k not in tables}
            return fn(_Bound(functional_call, model, {**self.frozen, **rest}), batch)[0]

        self._jac = vmap(jacrev(one), in_dims=(None, 0))

    def _input_hook(self, module, args, output):
        return self._current[self.input_table][self._where[args[0]]]

    def _output_hook(self, module, args, output):
        if self.output_table is not None:
            rows = self._current[self.output_table]
        elif self.input_table is not None:
            rows = self._current[self.input_table][self._where[self.labels]]
        else:
            return output
        label_logits = args[0] @ rows.T
        if module.bias is not None:
            label_logits = label_logits + module.bias[self.labels]
        return output.detach().index_copy(-1, self.labels, label_logits)

    def __call__(self, batch: dict) -> _Grads:
        p = dict(self.params)
        hooks = []
        if self.input_table is not None:
            used = torch.unique(batch["input_ids"])
            if self.out is not None and self.output_table is None:
                used = torch.unique(torch.cat([used, self.labels]))
            table = self.weights[self.input_table]
            self._where = torch.zeros(table.shape[0], dtype=torch.long)
            self._where[used] = torch.arange(len(used))
            self._rows[self.input_table] = used
            p[self.input_table] = table[used]
            hooks.append(self.emb.register_forward_hook(self._input_hook))
        if self.output_table is not None:
            self._rows[self.output_table] = self.labels
            p[self.output_table] = self.weights[self.output_table][self.labels]
        if self.out is not None:
            hooks.append(self.out.register_forward_hook(self._output_hook))
        try:
            with torch.no_grad():
                jac = self._jac(p, batch)
        except RuntimeError as e:
            if "vmap" in str(e):
                raise GentuneError(f"kernel: {type(_core(self.model)).__name__}'s forward reads tensor values "
                                   f"(data-dependent control flow), which per-example gradients by vmap cannot "
                                   f"pass: {str(e).splitlines()[0][:200]}") from None
            raise
        finally:
            for h in hooks:
                h.remove()
            self._current = {}
        first = next(iter(jac.values()))
        b, c = first.shape[0], first.shape[1]
        rows = b * c
        dense = torch.cat([jac[n].reshape(rows, -1) for n in self.dense_names], 1) if self.dense_names else \
            first.new_zeros(rows, 0)
        sparse = []
        for n in self.sparse_names:
            g = jac[n].reshape(rows, jac[n].shape[2], -1)
            touched = g.abs().amax(dim=(0, 2)).nonzero().squeeze(1)
            sparse.append((touched, g[:, touched].contiguous()))
        for n in (self.input_table, self.output_table):
            if n is not None:
                sparse.append((self._rows[n], jac[n].reshape(rows, len(self._rows[n]), -1)))
        return _Grads(dense, sparse, c)


class _Bound:
    """``model`` called with ``params`` substituted (``functional_call``), so that ``fn(module, batch)`` works the
    same on the real model and under ``torch.func``."""

    def __init__(self, functional_call, model, params):
        self.call, self.model, self.params = functional_call, model, params

    def __call__(self, **batch):
        return self.call(self.model, self.params, (), batch)


def _sign(x: torch.Tensor, eps: float) -> torch.Tensor:
    """sign(x), or with ``eps`` > 0 Adam's first step x / (|x| + eps), which is sign(x) wherever |x| >> eps and
    ignores rounding noise in gradients that are zero in exact arithmetic (an attention key bias's, for one)."""
    return x.sign() if eps == 0 else x / (x.abs() + eps)


def _mm(a: torch.Tensor, b: torch.Tensor, sign_a: bool, sign_b: bool, slab: int, eps: float = 0.0) -> torch.Tensor:
    """sum over column slabs of (a[:, s] (signed) @ b[:, s]^T (signed)), each slab's GEMM in the inputs' dtype,
    accumulated in float64."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for s in range(0, a.shape[1], slab):
        x, y = a[:, s:s + slab], b[:, s:s + slab]
        if sign_a:
            x = _sign(x, eps)
        if sign_b:
            y = _sign(y, eps)
        out += (x @ y.T).double()
    return out


def _block(a: _Grads, b: _Grads, sign_a: bool, sign_b: bool, slab: int, eps: float = 0.0) -> torch.Tensor:
    """< a's rows (signed if sign_a), b's rows (signed if sign_b) >: (rows_a, rows_b), float64."""
    out = _mm(a.dense, b.dense, sign_a, sign_b, slab, eps)
    for (ia, va), (ib, vb) in zip(a.sparse, b.sparse):
        if not len(ia) or not len(ib):
            continue
        x = va[:, torch.isin(ia, ib)]  # both index lists are sorted, so the shared rows line up
        y = vb[:, torch.isin(ib, ia)]
        if x.shape[1]:
            out += _mm(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1), sign_a, sign_b, slab, eps)
    return out


# ----------------------------------------------------------------------------------------------- the kernel


@dataclass
class Kernel:
    """A kernel between examples X (rows) and Y (columns), float64, shape (n_x, C, n_y, C); ``flipped`` (for
    asym-signgd) the kernel with the sign on the rows' side; ``dim``: how many parameters it is taken over."""

    values: torch.Tensor
    kind: str
    params: str
    dim: int
    flipped: torch.Tensor | None = None
    seconds: float = 0.0

    def matrix(self, flipped: bool = False) -> torch.Tensor:
        """The kernel as an (n_x C, n_y C) matrix, row i * C + c."""
        k = self.flipped if flipped else self.values
        return k.reshape(k.shape[0] * k.shape[1], k.shape[2] * k.shape[3])


def _lengths(inputs: dict) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    if mask is not None:
        return mask.sum(1)
    first = next(iter(inputs.values()))
    return torch.full((first.shape[0],), first.shape[1] if first.dim() > 1 else 1)


def take_rows(inputs: dict, index: torch.Tensor) -> dict:
    """Rows ``index`` of every input, cut to the longest attention mask among them (rows are right-padded)."""
    out = {k: v[index] for k, v in inputs.items()}
    mask = out.get("attention_mask")
    if mask is not None and mask.dim() == 2 and len(index):
        width = int(mask.sum(1).max())
        out = {k: (v[:, :width] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v) for k, v in out.items()}
    return out


def _fingerprint(kind, params, weights: dict, chunk, panel, symmetric, x, y) -> str:
    """What a saved panel must match: the options, the examples, and the weights (each tensor's sum and sum of
    squares, enough to tell two checkpoints apart)."""
    stats = [[n, float(w.double().sum()), float(w.double().pow(2).sum())] for n, w in weights.items()]
    h = hashlib.sha256(json.dumps([kind, params, stats, chunk, panel, symmetric]).encode())
    for inputs in (x, y):
        for k in sorted(inputs or {}):
            h.update(k.encode())
            h.update(inputs[k].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def kernel(model, x: dict, y: dict | None = None, *, kind: str = "sgd", params: str = "all",
           difference: bool = False, sign_eps: float = 0.0, chunk: int = 8, panel: int = 64, slab: int = 1 << 16,
           block_dir: str | Path | None = None, progress: bool = False, fn=None) -> Kernel:
    """The kernel ``kind`` (sgd, signgd, asym-signgd) of ``model``'s outputs between the examples ``x`` (rows) and
    ``y`` (columns; None: ``x`` itself, computed as a symmetric kernel), over the parameters ``params`` (see
    :func:`select_parameters`).

    Args:
        x, y: model inputs of every example, tensors with one row per example (``input_ids``, ``attention_mask``,
            ...; right-padded); a prompt classifier's [MASK] positions are found here.
        difference: for two outputs, the kernel of the single logit f_1 - f_0 (C = 1).
        sign_eps: the sign kernels' sign; 0 (the paper's): sign(g), else g / (|g| + sign_eps), Adam's first step.
            Gradients that are zero in exact arithmetic (attention key biases: softmax ignores a shift) come out as
            rounding noise of either sign, so with 0 the sign kernels depend on rounding by those coordinates
            (a few in 10^4 of BERT's parameters, 4% of its biases); Adam's own eps (1e-8) removes that.
        chunk: examples per vmapped Jacobian; ``panel``: examples of ``x`` whose Jacobians are held at once (peak
            memory is about (panel + chunk) x C x P numbers, P the parameters, embeddings counted by the rows a
            chunk touches).
        slab: columns per GEMM (each accumulated in float64).
        block_dir: save each finished panel there and reuse the saved ones (resumable).
        progress: a progress bar (or plain lines off a terminal) with the time left.
        fn: the outputs, ``fn(module, batch) -> (batch, C)``; default :func:`output_fn`.
    Returns:
        a :class:`Kernel`; under ``torch.distributed`` every rank computes its share of the panels and every rank
        returns the whole kernel.
    """
    if kind not in KERNELS:
        raise GentuneError(f"kernel must be one of {', '.join(KERNELS)}, got {kind!r}")
    if sign_eps < 0:
        raise GentuneError(f"kernel: sign_eps must be >= 0, got {sign_eps}")
    if chunk < 1 or panel < 1 or slab < 1:
        raise GentuneError("kernel: chunk, panel and slab must be at least 1")
    panel = max(chunk, panel // chunk * chunk)
    symmetric = y is None
    if not symmetric and len(_lengths(y)) < len(_lengths(x)):
        # hold the smaller side's Jacobians (the training examples): the larger side's are computed once per
        # panel, so the fewer panels the better. K(x, y) is K(y, x) transposed (asym: with its flip).
        t = kernel(model, y, x, kind=kind, params=params, difference=difference, sign_eps=sign_eps, chunk=chunk,
                   panel=panel, slab=slab, block_dir=block_dir, progress=progress, fn=fn)
        swap = (lambda v: v.permute(2, 3, 0, 1).contiguous())
        if t.flipped is None:
            return Kernel(swap(t.values), kind, params, t.dim, None, t.seconds)
        return Kernel(swap(t.flipped), kind, params, t.dim, swap(t.values), t.seconds)
    x = prompt_inputs(model, x)
    y = x if symmetric else prompt_inputs(model, y)
    fn = fn or output_fn(model, difference)
    chosen = select_parameters(model, params)
    started = time.perf_counter()
    nx, ny = len(_lengths(x)), len(_lengths(y))
    # sort by length (longest first: a chunk pads to its own longest row); undone at the end
    ox = torch.argsort(_lengths(x), descending=True, stable=True)
    oy = ox if symmetric else torch.argsort(_lengths(y), descending=True, stable=True)
    x_chunks = [ox[s:s + chunk] for s in range(0, nx, chunk)]
    y_chunks = x_chunks if symmetric else [oy[s:s + chunk] for s in range(0, ny, chunk)]
    per_panel = panel // chunk
    panels = [list(range(p, min(p + per_panel, len(x_chunks)))) for p in range(0, len(x_chunks), per_panel)]
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    asym = kind == "asym-signgd"
    sign_rows, sign_cols = kind == "signgd", kind != "sgd"

    with _vmappable(model):
        jac = Jacobians(model, fn, chosen)
        probe = fn(model, take_rows(x, ox[:1]))
        c = probe.shape[-1]
        k = torch.zeros(nx * c, ny * c, dtype=torch.float64)  # in sorted order
        kf = torch.zeros_like(k) if asym else None
        key = _fingerprint([kind, sign_eps, difference], params, {**jac.weights, **jac.frozen}, chunk, panel,
                           symmetric, x, None if symmetric else y)
        out_dir = Path(block_dir) if block_dir is not None else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        work = [(len(y_chunks) - p[0]) if symmetric else len(y_chunks) for p in panels]
        owner = _share(work, world)
        bar = WorkProgress(sum(w for i, w in enumerate(work) if owner[i] == rank), progress and rank == 0,
                           "kernel", "block")
        for i, rows in enumerate(panels):
            if owner[i] != rank:
                continue
            r0, r1 = rows[0] * chunk * c, min((rows[-1] + 1) * chunk, nx) * c
            col0 = rows[0] * chunk * c if symmetric else 0
            saved = _load_panel(out_dir, i, key) if out_dir is not None else None
            if saved is not None:
                k[r0:r1, col0:] = saved["right"]
                if asym:
                    kf[r0:r1, col0:] = saved["right_flipped"]
                if symmetric:  # the columns' side, by the same transposes as when it was computed
                    k[col0:, r0:r1] = (saved["right_flipped"] if asym else saved["right"]).T
                    if asym:
                        kf[col0:, r0:r1] = saved["right"].T
                bar.update(work[i], skipped=True)
                continue
            held = None  # the last panel's Jacobians go before this one's come: never two panels at once
            held = {q: jac(take_rows(x, x_chunks[q])) for q in rows}
            cols = range(rows[0], len(y_chunks)) if symmetric else range(len(y_chunks))
            for q in cols:
                g = held[q] if symmetric and q in held else jac(take_rows(y, y_chunks[q]))
                q0 = q * chunk * c
                q1 = q0 + g.dense.shape[0]
                for p in rows:
                    a = held[p]
                    p0 = p * chunk * c
                    p1 = p0 + a.dense.shape[0]
                    if symmetric and q < p:
                        continue  # the lower triangle: filled from the upper one
                    value = _block(a, g, sign_rows, sign_cols, slab, sign_eps)
                    if symmetric and q == p and not asym:
                        value = (value + value.T) / 2  # a diagonal block: exactly symmetric, whatever the GEMM
                    k[p0:p1, q0:q1] = value
                    if asym:
                        kf[p0:p1, q0:q1] = value.T if symmetric and q == p else \
                            _block(a, g, True, False, slab, sign_eps)
                    if symmetric and q != p:  # K[q, p] = K[p, q]^T (asym: K[q, p] = K_flipped[p, q]^T)
                        k[q0:q1, p0:p1] = kf[p0:p1, q0:q1].T if asym else k[p0:p1, q0:q1].T
                        if asym:
                            kf[q0:q1, p0:p1] = k[p0:p1, q0:q1].T
                bar.update(1)
            if out_dir is not None:
                tensors = {"right": k[r0:r1, col0:].clone()}
                if asym:
                    tensors["right_flipped"] = kf[r0:r1, col0:].clone()
                _save_panel(out_dir, i, key, tensors)
        bar.close()
    if world > 1:
        for t in (k, kf):
            if t is not None:
                torch.distributed.all_reduce(t)  # each entry was written by exactly one rank, zero elsewhere
    inv_x, inv_y = torch.argsort(ox), torch.argsort(oy)

    def unsort(t):
        return t.reshape(nx, c, ny, c)[inv_x][:, :, inv_y].contiguous()

    return Kernel(unsort(k), kind, params, jac.dim, unsort(kf) if asym else None, time.perf_counter() - started)


def _share(work: list[int], world: int) -> list[int]:
    """The rank of each panel: the largest first, each to the least loaded rank (a symmetric kernel's panels
    shrink from the first to the last, so taking turns would leave rank 0 the most)."""
    load, owner = [0] * world, [0] * len(work)
    for i in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += work[i]
    return owner


def _panel_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"panel-{i:05d}.safetensors"


def _load_panel(out_dir: Path, i: int, key: str) -> dict | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = _panel_path(out_dir, i)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise GentuneError(f"{path}: not a kernel panel of gentune")
        if meta.get("key") != key:
            raise GentuneError(f"{path}: a panel of another kernel computation (other model, examples or options); "
                               "give another folder, or remove it")
        return load_file(str(path))
    except GentuneError:
        raise
    except Exception as e:  # a truncated or damaged file: say which
        raise GentuneError(f"{path}: cannot read the kernel panel ({type(e).__name__}: {e}); remove it to "
                           "recompute") from None


def _save_panel(out_dir: Path, i: int, key: str, tensors: dict) -> None:
    import os

    from safetensors.torch import save_file

    path = _panel_path(out_dir, i)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": _FORMAT, "key": key})
    os.replace(tmp, path)


def outputs(model, inputs: dict, difference: bool = False, batch_size: int = 32, fn=None) -> torch.Tensor:
    """f(x) of every example, (n, C), float64, in eval mode: the initial outputs that ``adjust_for_init`` fits
    around."""
    fn = fn or output_fn(model, difference)
    inputs = prompt_inputs(model, inputs)
    n = len(_lengths(inputs))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [fn(model, take_rows(inputs, torch.arange(s, min(s + batch_size, n)))).double()
                   for s in range(0, n, batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def linearization(model, finetuned, inputs: dict, difference: bool = False, batch_size: int = 16,
                  fn=None) -> dict:
    """The paper's linearization test: does fine-tuning move the outputs as the first-order Taylor expansion at the
    start predicts? With theta_0 = ``model``'s weights and theta_1 = ``finetuned``'s (the same architecture),
    per example

        actual = f(x; theta_1) - f(x; theta_0),      linear = <grad f(x; theta_0), theta_1 - theta_0>

    (the linear change by forward-mode AD, one ``jvp`` per batch). Returns the share of the actual change the
    linear one explains, ``explained`` = 1 - ||actual - linear||^2 / ||actual||^2 (1: the kernel regime; it can
    be negative), the outputs' relative change ||actual|| / ||f(theta_0)||, the cosine of the two changes, and
    the arrays (float64): ``f0``, ``f1``, ``linear``."""
    from torch.func import functional_call, jvp

    fn = fn or output_fn(model, difference)
    inputs = prompt_inputs(model, inputs)
    start = dict(model.named_parameters())
    end = dict(finetuned.named_parameters())
    if set(start) != set(end):
        raise GentuneError("linearization: the two models do not have the same parameters")
    params = {n: p.detach() for n, p in start.items()}
    delta = {n: (end[n].detach().to(p.dtype) - p) for n, p in params.items()}
    buffers = dict(model.named_buffers())
    n = len(_lengths(inputs))
    f0, lin = [], []
    with _vmappable(model):
        for s in range(0, n, batch_size):
            batch = take_rows(inputs, torch.arange(s, min(s + batch_size, n)))

            def f(p, batch=batch):
                return fn(_Bound(functional_call, model, {**buffers, **p}), batch)

            with torch.no_grad():
                out, tangent = jvp(f, (params,), (delta,))
            f0.append(out.double())
            lin.append(tangent.double())
    f1 = outputs(finetuned, inputs, difference, batch_size, fn)
    f0, lin = torch.cat(f0), torch.cat(lin)
    actual = f1 - f0
    sq = float(actual.pow(2).sum())
    return {"explained": 1.0 - float((actual - lin).pow(2).sum()) / sq if sq > 0 else float("nan"),
            "relative_change": float(actual.norm() / f0.norm().clamp_min(1e-300)),
            "cosine": float((actual * lin).sum() / (actual.norm() * lin.norm()).clamp_min(1e-300)),
            "f0": f0, "f1": f1, "linear": lin}


def kernel_change(before: Kernel, after: Kernel) -> float:
    """||K_after - K_before||_F / ||K_before||_F: how far the kernel moved over training (0: fixed, as the kernel
    regime assumes)."""
    return float((after.values - before.values).norm() / before.values.norm().clamp_min(1e-300))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error of a kernel ``a`` against a reference ``b``."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


__all__ = ["KERNELS", "PARAM_SETS", "Jacobians", "Kernel", "encoder_of", "kernel", "kernel_change", "linearization",
           "output_fn", "outputs",
           "prompt_inputs", "relative_error", "select_parameters", "take_rows"]
