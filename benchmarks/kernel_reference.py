"""A literal eNTK computation written the way the reference code (princeton-nlp/LM-Kernel-FT, src/kernel_trainer.py)
does it, for checks and timing only; it shares no code with gentune.diagnostics.ntk.

The model in float64; for each outer batch the Jacobian of its outputs with respect to every parameter by
``jacrev`` (shape (B_out, C, *param) per parameter); for each inner batch every kernel entry by a forward-mode
``jvp`` of the inner batch's outputs along each outer (example, output) gradient, ``vmap``-ed over both; SignGD's
kernel by signs of both Jacobians (an einsum per parameter), asymmetric SignGD's by the jvp along the outer signs.
Batches of one example (the reference's per-device batch), so no padding is involved.

    from kernel_reference import reference_kernel
    k = reference_kernel(model, examples, kind="sgd")      # (n, C, n, C), float64
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, jacrev, jvp, vmap


def _label_logits(model, params, buffers, example):
    """The outputs of one example: a prompt classifier's label-word logits, else the logits."""
    out = functional_call(model, (params, buffers), (), example)
    return out.label_logits if hasattr(out, "label_logits") and out.label_logits is not None else out.logits


def reference_kernel(model, examples: list[dict], kind: str = "sgd", outer: list[int] | None = None,
                     inner: list[int] | None = None) -> tuple[torch.Tensor, dict]:
    """K[outer rows, :, inner cols, :] in float64 (all rows and columns by default) and the time spent in Jacobians
    and jvps. ``examples``: one dict of (1, T) tensors per example (a prompt classifier's with ``mask_pos``)."""
    model = copy.deepcopy(model).double().eval()
    for m in model.modules():  # transformers 4.4's attention: SDPA has no forward-mode AD on CPU
        if hasattr(m, "set_attn_implementation"):
            m.set_attn_implementation("eager")
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    outer = list(range(len(examples))) if outer is None else outer
    inner = list(range(len(examples))) if inner is None else inner

    def f(p, example):
        return _label_logits(model, p, buffers, example)  # (1, C)

    jac_seconds = jvp_seconds = 0.0
    rows = []
    for i in outer:
        t = time.perf_counter()
        grads_outer = jacrev(f)(params, examples[i])  # name -> (1, C, *param)
        if kind == "asym-signgd":
            grads_outer = {n: g.sign() for n, g in grads_outer.items()}
        jac_seconds += time.perf_counter() - t
        t = time.perf_counter()
        row = []
        for j in inner:
            if kind == "signgd":
                grads_inner = jacrev(f)(params, examples[j])
                block = sum(torch.einsum("olw,ikw->olik", grads_outer[n].sign().flatten(2),
                                         grads_inner[n].sign().flatten(2)) for n in params)
            else:
                def slice_(tangent, j=j):
                    return jvp(lambda p: f(p, examples[j]), (params,), (tangent,))[1]

                block = vmap(vmap(slice_))(grads_outer)  # (1, C, 1, C)
            row.append(block.double())
        rows.append(torch.cat(row, 2))
        jvp_seconds += time.perf_counter() - t
    return torch.cat(rows, 0), {"jacobian_s": jac_seconds, "entries_s": jvp_seconds}


def examples_of(inputs: dict, mask_pos: torch.Tensor | None = None) -> list[dict]:
    """Per-example (1, T) tensors without padding, from right-padded ``inputs``."""
    out = []
    for i in range(len(inputs["input_ids"])):
        n = int(inputs["attention_mask"][i].sum())
        row = {k: v[i:i + 1, :n] for k, v in inputs.items() if k != "mask_pos"}
        if mask_pos is not None:
            row["mask_pos"] = mask_pos[i:i + 1]
        out.append(row)
    return out
