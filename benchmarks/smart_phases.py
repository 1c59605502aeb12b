"""Where does a SMART step's time go? The phases of one MiniLM step, timed separately (median of repeats).

Not run by CI. Complements benchmarks/smart_cost.py (whole steps, interleaved): on one batch of 32 SST-2
sentences padded to 128 tokens it times the clean forward in train mode (with and without a graph), the backward,
the forward in eval mode (no dropout: what the Bregman teacher pays), SMART's ascent (a perturbed forward plus the
gradient with respect to the noise only) and the teacher's momentum update. Writes
benchmarks/results/smart_phases.json.

    GENTUNE_DATA=../shared/data/glue python benchmarks/smart_phases.py [--repeats 7]
"""

import argparse
import copy
import datetime as dt
import os
import statistics
import time

import torch

from gentune.data import get_task, load_splits
from gentune.models.hf import load_for_task, load_tokenizer
from gentune.regularizers.bregman import momentum_update
from gentune.regularizers.smart import perturbed_embeddings, smoothness_divergence

from _lib import cells
from _lib.paths import RESULTS


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    args = p.parse_args()
    task = get_task("sst2")
    train, _ = load_splits(task, os.environ.get("GENTUNE_DATA"))
    tok = load_tokenizer("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = load_for_task("all-MiniLM-L6-v2", task).train()
    batch = dict(tok(list(train.select(range(args.batch_size))["text_a"]), padding="max_length",
                     max_length=args.length, truncation=True, return_tensors="pt"))
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    emb = model.get_input_embeddings()
    clean = model(**batch).logits.detach()
    shape = (*batch["input_ids"].shape, emb.embedding_dim)

    def forward_backward():
        model(**batch).logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    def no_grad(m):
        def run():
            with torch.no_grad():
                m(**batch)
        return run

    def ascent(grad: bool):
        def run():
            delta = (torch.randn(shape) * 1e-5).requires_grad_(True)
            with perturbed_embeddings(emb, delta):
                loss = smoothness_divergence(model(**batch).logits, clean, False)
            if grad:
                torch.autograd.grad(loss, delta)
        return run

    phases = {
        "forward, train mode, with graph": lambda: model(**batch),
        "forward + backward (vanilla without optimizer)": forward_backward,
        "forward, train mode, no graph": no_grad(model),
        "forward, eval mode, no graph (teacher)": no_grad(teacher),
        "ascent: perturbed forward": ascent(False),
        "ascent: perturbed forward + d/d delta": ascent(True),
        "teacher momentum update": lambda: momentum_update(teacher.state_dict(), model.state_dict(), 0.999),
    }
    rows = []
    for name, fn in phases.items():
        seconds = timed(fn, args.repeats)
        rows.append({"phase": name, "seconds": seconds})
        print(f"{name:<48} {seconds:.3f} s", flush=True)
    cells.write_json(RESULTS / "smart_phases.json", {
        "command": "python benchmarks/smart_phases.py", "batch_size": args.batch_size, "length": args.length,
        "repeats": args.repeats, "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows})


if __name__ == "__main__":
    main()
