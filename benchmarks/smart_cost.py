"""What does a SMART training step cost next to a vanilla one? MiniLM on SST-2, one process, arms interleaved.

Not run by CI. Times one training step (forward, backward, gradient clipping, AdamW step, ``zero_grad``, then the
regularizer's ``after_step``) of all-MiniLM-L6-v2 as an SST-2 sequence classifier in train mode (dropout on), for
these arms (``--arms``):

- ``vanilla``: the task loss only.
- ``smart``: ``registry.create("regularizer", "smart", total_steps=1000)``: R_s with K=1 ascent step plus the
  Bregman momentum teacher R_B (one extra no-grad teacher forward and a parameter-wise momentum update per step).
- ``smart-no-teacher``: ``create("regularizer", "smart", mu=0)``: R_s only (the same as ``smart-adv``).
- ``r3f``: ``create("regularizer", "r3f")``: one noisy forward, no ascent.
- ``smart-pytorch``: the PyPI package smart-pytorch 0.0.4 (``SMARTLoss``), configured as in its README (KL between
  log-softmax outputs, ``log_target=True``; default ``num_steps=1``, ``step_size=1e-3``, ``epsilon=1e-6``,
  ``noise_var=1e-5``), but perturbing the *word* embeddings (``model.get_input_embeddings()`` output) and running
  the model on them through ``inputs_embeds``, which adds position/type embeddings and LayerNorm itself (the
  README feeds ``model.bert.embeddings(...)`` back in, which embeds twice). Loss: task loss + weight * SMARTLoss.

Every arm has its own deep copy of the same initial model and its own AdamW (the settings of ``gentune
finetune``: lr 1e-4, weight decay 0.01 except biases/norms, eps 1e-8, gradient clipping at 1.0). Batches are
real SST-2 training sentences, padded/truncated to ``--length`` tokens (``padding="max_length"``) so every step
has the same shape; round r gives every arm the same batch. After ``--warmup`` untimed steps per arm (which also
creates SMART's teacher and AdamW's state), each of ``--rounds`` rounds runs every arm once in a freshly shuffled
order, each step timed with ``time.perf_counter()`` (CUDA synchronised before and after). Reported per arm: median
seconds per step, IQR, ratio to vanilla (ratio of medians, and the median of the per-round ratios).

Peak memory is measured in a separate pass, one fresh subprocess per arm (so arms never share an allocator):
the subprocess loads the model and batches, then runs ``--memory-steps`` steps. On CUDA it reports
``torch.cuda.max_memory_allocated`` (absolute: weights, gradients, AdamW state, teacher, activations). On CPU it
reports the growth of the peak resident set size over the RSS right after setup (Linux: VmHWM reset through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` deltas, a lower bound): gradients, AdamW state, teacher copy
and activations, plus one-time library/allocator set-up on the first step that is the same for every arm, so
compare arms by their difference to vanilla (shown in the table); not the weights or the libraries' code.

smart-pytorch is not a project dependency: on first use this script runs ``pip install --no-deps --target
runs/bench-deps/smart-pytorch-0.0.4 smart-pytorch==0.0.4`` (runs/ is git-ignored; see
benchmarks/requirements-smart-pytorch.txt) and puts that folder first on ``sys.path``.

    HF_HUB_OFFLINE=1 python benchmarks/smart_cost.py                      # batch 32, length 128, 20 rounds
    python benchmarks/smart_cost.py --device cuda --rounds 50
    python benchmarks/smart_cost.py --batch-size 4 --length 32 --rounds 2 --warmup 1 --out /tmp/s.json  # smoke
    python benchmarks/smart_cost.py --markdown                           # only print the docs section

Run it on an otherwise idle machine: the load average at start and end is recorded in the JSON.
docs/results.md shows every benchmarks/results/smart_cost*.json (`sections()`, through benchmarks/render_results.py).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import importlib
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _lib import cells, tables
from _lib.paths import RESULTS, ROOT
from _lib.provenance import commit, machine

DEFAULT_OUT = RESULTS / "smart_cost.json"
DEFAULT_DEPS = ROOT / "runs" / "bench-deps"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "glue"
SMART_PYTORCH = ("smart-pytorch", "0.0.4")
MODEL = "all-MiniLM-L6-v2"
ARMS = {
    "vanilla": "task loss only",
    "smart": "gentune smart: R_s (K=1) + Bregman teacher R_B (total_steps=1000)",
    "smart-no-teacher": "gentune smart with mu=0: R_s (K=1) only",
    "r3f": "gentune r3f: one noisy forward, symmetric KL",
    "bregman": "gentune bregman alone: the momentum teacher's no-grad forward and its update",
    "rdrop": "gentune rdrop: a second dropout forward, symmetric KL (and its task loss)",
    "l2sp": "gentune l2sp: the distance to the starting weights",
    "smart-pytorch": "PyPI smart-pytorch 0.0.4 SMARTLoss (README defaults) on word embeddings via inputs_embeds",
}
# The pass-count bound, in forward-equivalents per step (a forward pass 1, a backward with weight gradients 2, a
# backward to the inputs only 1): vanilla 1 + 2 = 3; smart-adv (K = 1) adds a noisy forward (1), the ascent's
# backward to the noise (1), the adversarial forward (1) and its backward (2): 8; smart adds the teacher's no-grad
# forward: 9; r3f and rdrop add one forward and its backward: 6; bregman adds the teacher's forward: 4; l2sp adds a
# pass over the weights, negligible next to a forward: 3. smart-pytorch's SMARTLoss does what smart-adv does: 8.
PASSES = {"vanilla": 3, "smart": 9, "smart-no-teacher": 8, "r3f": 6, "bregman": 4, "rdrop": 6, "l2sp": 3,
          "smart-pytorch": 8}
# The optimizer and clipping of `gentune finetune` (FinetuneConfig defaults).
LR, WEIGHT_DECAY, ADAM_EPS, MAX_GRAD_NORM = 1e-4, 0.01, 1e-8, 1.0
MEMORY_TAG = "SMART_COST_MEMORY "
HEADING = "## SMART step cost (benchmarks/smart_cost.py)"


# ---------------------------------------------------------------------------------------------------- smart-pytorch


def ensure_smart_pytorch(deps_dir: Path = DEFAULT_DEPS, install: bool = True):
    """Import smart-pytorch 0.0.4, installing it into ``deps_dir`` (not the project environment) if missing.

    The package is installed with ``pip install --no-deps --target`` into a temporary folder that is renamed into
    place only when pip succeeded, so an interrupted install never leaves a half-written copy. Its one declared
    dependency besides torch, ``data-science-types``, is type stubs only and is not needed.

    Args:
        deps_dir: parent folder of the ``smart-pytorch-0.0.4`` install folder.
        install: whether to run pip when the package cannot be imported.

    Returns:
        (the ``smart_pytorch`` module, its version, the folder it was imported from).

    Raises:
        SystemExit: the package cannot be installed or imported, or a different version is on ``sys.path``.
    """
    name, version = SMART_PYTORCH
    target = Path(deps_dir) / f"{name}-{version}"
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    manual = (f"install it by hand with:\n  {sys.executable} -m pip install --no-deps --target {target} "
              f"{name}=={version}\nor drop the arm with --arms vanilla smart smart-no-teacher r3f")
    try:
        module = importlib.import_module("smart_pytorch")
    except ImportError:
        if not install:
            raise SystemExit(f"smart-pytorch is not installed; {manual}") from None
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(tmp), f"{name}=={version}"]
        print(f"[deps] {shlex.join(cmd)}", file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"could not pip-install {name}=={version}; {manual}") from None
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        importlib.invalidate_caches()
        module = importlib.import_module("smart_pytorch")
    import importlib.metadata as md

    found = next((d.version for d in md.distributions(name=name, path=sys.path)), None)
    if found != version:
        raise SystemExit(f"smart-pytorch {found} imported from {module.__file__}, this benchmark pins {version}; "
                         f"{manual}")
    return module, found, str(Path(module.__file__).parent.parent)


# ------------------------------------------------------------------------------------------------------------- arms


class Arm:
    """One arm: a model copy, its AdamW, and a training step in the shape of gentune's loop (train.py).

    Args:
        name: the arm's name (a key of :data:`ARMS`).
        model: this arm's own model, already on its device and in train mode.
        regularizers: gentune regularizer objects, called as ``reg(model, batch, outputs)``.
        bf16: run forward passes (and regularizer forwards) under bf16 autocast.
    """

    def __init__(self, name: str, model, regularizers: list, bf16: bool = False):
        from gentune import registry
        from gentune.train import adamw

        self.name, self.model, self.regularizers, self.bf16 = name, model, regularizers, bf16
        self.objective = registry.create("objective", "sequence-classification", regression=False)
        self.optimizer = adamw(model, LR, WEIGHT_DECAY, ADAM_EPS)
        self.device_type = next(model.parameters()).device.type

    def terms(self, batch: dict) -> dict:
        """The named loss terms of one batch (task loss first), as the training loop sums them."""
        result = self.objective(self.model, batch)
        terms = {"task": result["loss"]}
        for reg in self.regularizers:
            terms.update(reg(self.model, batch, result["output"]))
        return terms

    def step(self, batch: dict) -> dict:
        """One optimizer step on ``batch``; returns the loss terms (detached)."""
        import torch

        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.terms(batch)
        loss = sum(terms.values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad()
        for reg in self.regularizers:
            if hasattr(reg, "after_step"):
                reg.after_step(self.model)
        return {k: v.detach() for k, v in terms.items()}


class SmartPytorchArm(Arm):
    """smart-pytorch's ``SMARTLoss`` as its README wires it, on the word embeddings (no double embedding).

    The clean forward runs on ``inputs_embeds = model.get_input_embeddings()(input_ids)``; the model adds position
    and token-type embeddings and LayerNorm to it, exactly as for ``input_ids``. ``SMARTLoss(embed, state)``
    perturbs ``embed`` and re-runs the same model through ``eval_fn``. Unlike the README's ``eval`` this passes
    the attention mask, so padding is handled as in the clean forward.

    Args:
        model: this arm's own model.
        smart_pytorch: the imported ``smart_pytorch`` module.
        weight: multiplies the SMART loss (the README adds it unweighted, i.e. 1).
        bf16: bf16 autocast for the forwards.
    """

    def __init__(self, model, smart_pytorch, weight: float = 1.0, bf16: bool = False):
        super().__init__("smart-pytorch", model, [], bf16)
        self.weight = weight
        self._inputs: dict = {}
        # README: eval returns log_softmax(logits); loss F.kl_div(x, y, reduction="batchmean", log_target=True);
        # num_steps, step_size, epsilon, noise_var and norm_fn left at the package defaults.
        self.smart = smart_pytorch.SMARTLoss(eval_fn=self._eval, loss_fn=self._loss)

    @staticmethod
    def _loss(x, y):
        import torch.nn.functional as F

        return F.kl_div(x, y, reduction="batchmean", log_target=True)

    def _logits(self, embed):
        return self.model(inputs_embeds=embed, **self._inputs).logits

    def _eval(self, embed):
        import torch.nn.functional as F

        return F.log_softmax(self._logits(embed).float(), dim=-1)

    def terms(self, batch: dict) -> dict:
        import torch.nn.functional as F

        from gentune.objectives.classification import classification_loss

        self._inputs = {k: v for k, v in batch.items() if k not in ("labels", "input_ids")}
        embed = self.model.get_input_embeddings()(batch["input_ids"])
        logits = self._logits(embed)
        state = F.log_softmax(logits.float(), dim=-1)
        return {"task": classification_loss(logits, batch["labels"], False),
                "smart_pytorch": self.weight * self.smart(embed, state)}


def make_arm(name: str, model, args) -> Arm:
    """The arm ``name`` around ``model`` (which it then owns)."""
    from gentune import registry

    bf16 = getattr(args, "bf16", False)
    if name == "vanilla":
        return Arm(name, model, [], bf16)
    if name == "smart":
        return Arm(name, model, [registry.create("regularizer", "smart", total_steps=1000)], bf16)
    if name == "smart-no-teacher":
        return Arm(name, model, [registry.create("regularizer", "smart", mu=0, total_steps=1000)], bf16)
    if name == "r3f":
        return Arm(name, model, [registry.create("regularizer", "r3f")], bf16)
    if name == "bregman":
        return Arm(name, model, [registry.create("regularizer", "bregman", total_steps=1000)], bf16)
    if name == "rdrop":
        return Arm(name, model, [registry.create("regularizer", "rdrop")], bf16)
    if name == "l2sp":
        return Arm(name, model, [registry.create("regularizer", "l2sp")], bf16)
    if name == "smart-pytorch":
        module, _, _ = ensure_smart_pytorch(Path(args.deps_dir))
        return SmartPytorchArm(model, module, args.smart_pytorch_weight, bf16)
    raise ValueError(f"unknown arm {name!r} (known: {', '.join(ARMS)})")


# -------------------------------------------------------------------------------------------------- model and data


def load_model(args, device):
    """The SST-2 classifier, with the classifier head seeded by ``args.seed``, in train mode on ``device``."""
    import torch

    from gentune.data import get_task
    from gentune.models.hf import load_for_task

    torch.manual_seed(args.seed)
    if getattr(args, "random_init", False):  # the architecture alone (config.json): timing needs no weights
        from transformers import AutoConfig, AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(args.model, num_labels=2))
    else:
        model = load_for_task(args.model, get_task("sst2"))
    return model.to(device).train()


def make_batches(args, n: int) -> list[dict]:
    """``n`` batches of ``args.batch_size`` seeded-random SST-2 training sentences, padded to ``args.length``."""
    import numpy as np
    import torch

    from gentune.data import get_task, load_splits
    from gentune.models.hf import load_tokenizer

    need = n * args.batch_size
    rng = np.random.default_rng(args.seed)
    if getattr(args, "sentences", None):  # one sentence a line (no datasets library needed), random labels
        lines = [l.strip() for l in Path(args.sentences).read_text().splitlines() if l.strip()]
        texts = [lines[i] for i in rng.choice(len(lines), size=need, replace=need > len(lines))]
        labels = torch.tensor(rng.integers(0, 2, need), dtype=torch.long)
    else:
        train, _ = load_splits(get_task("sst2"), args.data_dir)
        idx = rng.choice(len(train), size=need, replace=need > len(train))
        rows = train.select(idx.tolist())
        texts, labels = list(rows["text_a"]), torch.tensor(list(rows["label"]), dtype=torch.long)
    enc = load_tokenizer(args.model)(texts, padding="max_length", truncation=True, max_length=args.length,
                                     return_tensors="pt")
    b = args.batch_size
    return [{**{k: v[i * b:(i + 1) * b] for k, v in enc.items()}, "labels": labels[i * b:(i + 1) * b]}
            for i in range(n)]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def check_inputs_embeds(model, batch: dict) -> float:
    """Max |logit difference| between ``input_ids`` and ``inputs_embeds=word embeddings`` (eval mode, no grad).

    Guards the smart-pytorch arm against the double-embedding bug: the two must agree to float precision.
    """
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model(**inputs).logits
            b = model(inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]), **rest).logits
    finally:
        model.train(was_training)
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def memory_child(args) -> dict:
    """Run in a fresh process: peak memory of ``args.memory_child``'s first ``args.memory_steps`` steps."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = [to_device(b, device) for b in torch.load(args.batches_file, weights_only=True)]
    arm = make_arm(args.memory_child, load_model(args, device), args)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        method = "torch.cuda.max_memory_allocated (absolute)"
    else:
        try:  # Linux: "5" resets this process's peak RSS (VmHWM) to its current RSS
            Path("/proc/self/clear_refs").write_text("5")
            base = _proc_status_kib("VmRSS") * 1024
            method = "VmHWM - VmRSS after setup (peak reset via /proc/self/clear_refs)"
        except (OSError, TypeError):
            base = _maxrss_bytes()
            method = "ru_maxrss delta over setup (lower bound: setup may have peaked higher)"
    for i in range(args.memory_steps):
        arm.step(batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    elif method.startswith("VmHWM"):
        peak = _proc_status_kib("VmHWM") * 1024
    else:
        peak = _maxrss_bytes()
    return {"method": method, "steps": args.memory_steps, "baseline_bytes": base, "peak_bytes": peak,
            "growth_bytes": max(peak - base, 0), "device": str(device)}


def measure_memory(args, arms: list[str], batches: list[dict]) -> dict[str, dict]:
    """Peak memory per arm, each in a fresh subprocess (``--memory-child``) so no arm sees another's allocations."""
    import torch

    out = {}
    with tempfile.TemporaryDirectory(prefix="smart_cost_") as tmp:
        path = Path(tmp) / "batches.pt"
        torch.save(batches[:max(args.memory_steps, 1)], path)
        for name in arms:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--batches-file", str(path),
                   "--device", args.device, "--model", args.model, "--seed", str(args.seed),
                   "--memory-steps", str(args.memory_steps), "--deps-dir", str(args.deps_dir),
                   "--smart-pytorch-weight", str(args.smart_pytorch_weight), "--threads", str(args.threads)]
            if args.bf16:
                cmd.append("--bf16")
            if args.random_init:
                cmd.append("--random-init")
            print(f"[mem ] {name}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [l for l in proc.stdout.splitlines() if l.startswith(MEMORY_TAG)]
            if proc.returncode or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                out[name] = {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
            else:
                out[name] = json.loads(lines[-1][len(MEMORY_TAG):])
    return out


# ---------------------------------------------------------------------------------------------------------- timing


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def time_arms(args, arms: dict[str, Arm], batches: list[dict], device) -> dict:
    """Warm-up, then ``args.rounds`` interleaved rounds in shuffled order; per-step times and loss terms."""
    import torch

    cuda = device.type == "cuda"
    times = {n: [] for n in arms}
    transient = {n: [] for n in arms}  # CUDA: peak allocated during the step minus allocated before it
    sums: dict[str, dict[str, float]] = {n: {} for n in arms}
    nonfinite = {n: 0 for n in arms}
    for name, arm in arms.items():
        for i in range(args.warmup):
            arm.step(batches[i % len(batches)])
        print(f"[warm] {name}: {args.warmup} step(s)", file=sys.stderr, flush=True)
    rng = random.Random(args.seed)
    orders = []
    for r in range(args.rounds):
        batch = batches[(args.warmup + r) % len(batches)]
        order = list(arms)
        rng.shuffle(order)
        orders.append(order)
        gc.collect()
        for name in order:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            _sync(device)
            t0 = time.perf_counter()
            terms = arms[name].step(batch)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if cuda:
                transient[name].append(torch.cuda.max_memory_allocated(device) - before)
            for k, v in terms.items():
                value = float(v)
                if not math.isfinite(value):
                    nonfinite[name] += 1
                sums[name][k] = sums[name].get(k, 0.0) + value
        print(f"[time] round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in order),
              file=sys.stderr, flush=True)
    results = {}
    for name in arms:
        q1, med, q3 = _quartiles(times[name])
        results[name] = {
            "description": ARMS[name],
            "times_s": times[name],
            "median_s": med, "q25_s": q1, "q75_s": q3, "iqr_s": q3 - q1,
            "mean_s": statistics.fmean(times[name]), "min_s": min(times[name]),
            "mean_terms": {k: v / args.rounds for k, v in sums[name].items()},
            "nonfinite_terms": nonfinite[name],
        }
        if cuda:
            results[name]["cuda_step_transient_peak_bytes"] = int(statistics.median(transient[name]))
    if "vanilla" in arms:
        base = results["vanilla"]["median_s"]
        for name in arms:
            per_round = [a / b for a, b in zip(times[name], times["vanilla"])]
            results[name]["ratio_of_medians"] = results[name]["median_s"] / base
            results[name]["median_round_ratio"] = statistics.median(per_round)
    return {"arms": results, "orders": orders}


# ------------------------------------------------------------------------------------------------------- reporting


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def _seconds(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.3f}"


def _memory_value(mem: dict | None, device_type: str) -> int | None:
    if not mem or "error" in mem:
        return None
    return mem["peak_bytes"] if device_type == "cuda" else mem["growth_bytes"]


def _memory_cell(memory: dict, name: str, device_type: str) -> str:
    """Peak memory of arm ``name``, with its difference to vanilla when both were measured."""
    mem = memory.get(name)
    value = _memory_value(mem, device_type)
    if value is None:
        return "error" if mem else "-"
    base = _memory_value(memory.get("vanilla"), device_type)
    if base is None or name == "vanilla":
        return _mib(value)
    return f"{_mib(value)} ({(value - base) / 2**20:+,.0f})"


def table(results: dict) -> str:
    """The markdown table: arm | median s/step | IQR | ratio to vanilla | pass bound | ratio over bound | memory."""
    device_type = results["device"].split(":")[0]
    lines = tables.header(["arm", "median s/step", "IQR", "ratio to vanilla", "pass-count bound",
                           "ratio / bound", "peak memory"], ["---", "---:", "---:", "---:", "---:", "---:", "---:"])
    for name, a in results["arms"].items():
        ratio = (f"{a['ratio_of_medians']:.2f} ({a['median_round_ratio']:.2f})" if "ratio_of_medians" in a else "-")
        bound = PASSES.get(name, 0) / PASSES["vanilla"] if name in PASSES else None
        over = (f"{a['ratio_of_medians'] / bound:.2f}" if bound and "ratio_of_medians" in a else "-")
        lines.append(tables.row([name, _seconds(a["median_s"]), _seconds(a["iqr_s"]), ratio,
                                 f"{bound:.2f}" if bound else "-", over,
                                 _memory_cell(results.get("memory", {}), name, device_type)]))
    return "\n".join(lines)


def render(results: dict) -> str:
    """The section for one results file as ``--markdown`` prints it: a heading, then :func:`render_body`.

    Args:
        results: the dict this script writes to ``--out``.

    Returns:
        Markdown, starting with ``## SMART step cost (benchmarks/smart_cost.py)`` and ending with a newline.
    """
    return f"{HEADING}\n\n{render_body(results)}\n"


def render_body(results: dict) -> str:
    """What one results file says: what was run and where, the arms, the table, command, machine and date.

    Args:
        results: the dict this script writes to ``--out``.

    Returns:
        Markdown without a heading or a trailing newline (docs/results.md shows several files under one heading).
    """
    c = results["config"]
    device_type = results["device"].split(":")[0]
    if not results.get("memory"):
        mem_note = "peak memory: not measured (--no-memory)"
    elif device_type == "cuda":
        mem_note = ("peak memory: `torch.cuda.max_memory_allocated` in a fresh process per arm over its first "
                    f"{c['memory_steps']} steps (weights, gradients, AdamW state, teacher, activations); in "
                    "parentheses: MiB more than vanilla")
    else:
        method = next((m["method"] for m in results.get("memory", {}).values() if "method" in m), "not measured")
        mem_note = (f"peak memory: growth of the peak RSS over the RSS after setup, in a fresh process per arm "
                    f"over its first {c['memory_steps']} steps (gradients, AdamW state, teacher, activations, and "
                    f"one-time library/allocator set-up common to all arms; not the weights; in parentheses: MiB more "
                    f"than vanilla): {method}")
    arms = "\n".join(f"- `{n}`: {a['description']}" for n, a in results["arms"].items())
    intro = (
        f"One training step (forward, backward, clipping, AdamW step) of MiniLM ({c['model']}) as an SST-2 "
        f"classifier in train mode, batch {c['batch_size']}, {c['length']} tokens (SST-2 sentences padded to "
        f"that length), {'bf16 autocast' if c.get('bf16') else 'float32'}. Each arm has its own copy of the "
        f"same initial model and its own AdamW; after {c['warmup']} warm-up step(s) per arm, {c['rounds']} "
        f"round(s) run every arm once in a shuffled order, in one process. Ratio to vanilla: ratio of the "
        f"medians (median of the per-round ratios in parentheses); pass-count bound: the arm's forward-equivalents "
        f"per step over vanilla's (see PASSES in the script), so a ratio over it near 1 means no overhead beyond "
        f"the passes the method needs. IQR: interquartile range of the step "
        f"times; {mem_note}."
    )
    lines = [
        textwrap.fill(intro, width=115, break_on_hyphens=False, break_long_words=False),
        "",
        arms,
        "",
        table(results),
        "",
        f"- command: `{results['command']}`",
        f"- machine: {results['machine']}; device {results['device_name']}; torch {results['torch']} "
        f"({results['torch_threads']} threads), transformers {results['transformers']}"
        + (f", smart-pytorch {results['smart_pytorch']}" if results.get("smart_pytorch") else ""),
        f"- date: {results['date']}; load average at start/end: "
        f"{results['loadavg_start'][0]:.2f}/{results['loadavg_end'][0]:.2f}; commit {results.get('git')}",
    ]
    return "\n".join(lines)


def sections(folder: Path = RESULTS) -> dict[str, str]:
    """docs/results.md's blocks (:func:`render_body`) of every ``smart_cost*.json`` in ``folder`` (CPU, GPU runs in
    fp32 / bf16), keyed ``smart_cost/FILE``."""
    return {f"smart_cost/{p.name}": render_body(cells.read_json(p)) for p in sorted(folder.glob("smart_cost*.json"))}


# ------------------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128, help="tokens per sequence (padded/truncated to it)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds; each runs every arm once")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps per arm before the rounds (keep >= 1: the first step allocates AdamW's "
                        "state and copies SMART's teacher)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (written atomically)")
    p.add_argument("--markdown", action="store_true", help="only print render() of the --out results file")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forwards (gentune's CUDA default)")
    p.add_argument("--memory-steps", type=int, default=3, help="steps per arm in the memory pass")
    p.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--random-init", action="store_true",
                   help="build the model from its config.json with random weights (timing needs no weights)")
    p.add_argument("--sentences", help="a text file, one sentence a line, instead of SST-2 through --data-dir")
    p.add_argument("--data-dir", default=os.environ.get("GENTUNE_DATA", str(DEFAULT_DATA)))
    p.add_argument("--deps-dir", default=str(DEFAULT_DEPS), help="where smart-pytorch is pip-installed")
    p.add_argument("--smart-pytorch-weight", type=float, default=1.0, help="task loss + WEIGHT * SMARTLoss")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--batches-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batch_size, args.length, args.rounds) < 1 or args.warmup < 0 or args.memory_steps < 1:
        p.error("--batch-size, --length, --rounds and --memory-steps must be positive, --warmup >= 0")
    args.arms = list(dict.fromkeys(args.arms))  # keep the given order, drop repeats
    return args


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.markdown:
        print(render(json.loads(args.out.read_text())), end="")
        return 0
    if args.memory_child:
        print(MEMORY_TAG + json.dumps(memory_child(args)), flush=True)
        return 0

    import torch
    import transformers

    from gentune.models.hf import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    device = torch.device(args.device)
    sp_version = None
    if "smart-pytorch" in args.arms:  # install before anything is timed or measured
        _, sp_version, sp_where = ensure_smart_pytorch(Path(args.deps_dir))
        print(f"[deps] smart-pytorch {sp_version} from {sp_where}", file=sys.stderr, flush=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    n_batches = max(1, min(args.rounds + args.warmup, 8))
    batches = make_batches(args, n_batches)

    memory = {} if args.no_memory else measure_memory(args, args.arms, batches)

    base = load_model(args, device)
    diff = check_inputs_embeds(base, to_device(batches[0], device))
    if diff > 1e-4:
        raise SystemExit(f"inputs_embeds=word embeddings does not reproduce input_ids (max diff {diff:.3g})")
    arms = {name: make_arm(name, copy.deepcopy(base), args) for name in args.arms}
    del base
    gpu_batches = [to_device(b, device) for b in batches]
    timing = time_arms(args, arms, gpu_batches, device)

    results = {
        "benchmark": "smart_cost",
        "command": shlex.join(["python", "benchmarks/smart_cost.py", *sys.argv[1:]]),
        "date": started,
        "machine": machine(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "smart_pytorch": sp_version,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "git": commit(short=True),
        "config": {"model": args.model, "model_path": resolve_model_path(args.model), "task": "sst2",
                   "batch_size": args.batch_size, "length": args.length, "rounds": args.rounds,
                   "warmup": args.warmup, "seed": args.seed, "bf16": args.bf16, "lr": LR,
                   "weight_decay": WEIGHT_DECAY, "adam_eps": ADAM_EPS, "max_grad_norm": MAX_GRAD_NORM,
                   "memory_steps": args.memory_steps, "smart_pytorch_weight": args.smart_pytorch_weight,
                   "inputs_embeds_check_max_diff": diff},
        "arms": timing["arms"],
        "orders": timing["orders"],
        "memory": memory,
    }
    cells.write_json(args.out, results)
    print(table(results))
    print(f"\nwrote {args.out}")
    bad = [n for n, a in results["arms"].items() if a["nonfinite_terms"]]
    if bad:
        print(f"non-finite loss terms in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
