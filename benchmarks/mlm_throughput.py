"""Masked-LM pretraining throughput on this machine (issue 19's target): tokens/s, the share of the measured
matmul ceiling, and the loop's overhead.

One run of the few-shot grid's task-adaptive MLM recipe (benchmarks/fewshot_grid.py ``MLM``: splade-tiny, batch
32, lr 1e-4, SST-2's training sentences with their labels dropped) for STEPS optimizer steps. From its
summary.json: examples/s over the optimizer steps only, the mean tokens per example (special tokens included,
padding not), the loop overhead (the loop's time outside the steps: data loading, logging). The work per token is
counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over the run's own objective, forward and
backward, on FLOP_BATCHES batches of the run's own collator (matmuls and attention; the optimizer's update is left
out), divided by the real tokens of those batches, so padding counts as overhead. Achieved GFLOP/s = FLOPs per
token x tokens/s, against ``_lib.provenance.matmul_gflops`` (a float32 1024 x 1024 matmul with torch's threads),
measured in the same process right after the run.

Two runs: batches as they come (the default) and ``--set group_by_length=true`` (each window of 50 shuffled
batches sorted by length, as the Hugging Face Trainer's ``group_by_length``), whose tokens/s is the padding saved.

    python benchmarks/mlm_throughput.py           # about 4 minutes on 2 CPU cores; pause other jobs first
    python benchmarks/mlm_throughput.py --force   # measure again (the cells are per device kind)

Cells: benchmarks/results/mlm_throughput/DEVICE[-grouped].json; benchmarks/render_results.py renders it. Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
from pathlib import Path

from _lib import cells, runner, tables
from _lib.paths import RESULTS, ROOT, RUNS
from _lib.provenance import machine, matmul_gflops

OUT_RESULTS, OUT_RUNS = RESULTS / "mlm_throughput", RUNS / "mlm_throughput"
SPLADE = ROOT.parent / "shared" / "models" / "splade_tiny_bert_mlm"
STEPS, BATCH, LR = 60, 32, "1e-4"  # fewshot_grid.MLM's batch and rate; steps: a steady step time
FLOP_BATCHES = 8
VARIANTS = {"": [], "-grouped": ["--set", "group_by_length=true"]}
TARGET_OVERHEAD = 0.10


def glue() -> Path:
    return Path(os.environ.get("GENTUNE_DATA", ROOT.parent / "shared" / "data" / "glue")).resolve()


def flops_per_token(run: Path) -> tuple[float, float]:
    """(FLOPs per real token of one training step's forward and backward, real tokens / padded positions), counted
    on FLOP_BATCHES batches of the run's job, rebuilt from its config.yaml."""
    import torch
    import yaml
    from torch.utils.flop_counter import FlopCounterMode

    from gentune.config import load_saved
    from gentune.tasks.text_pretraining import TASK as task

    cfg = load_saved(task.config, yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml"))
    job = task.build(cfg)
    from gentune.train.loop import train_sampler

    sampler = train_sampler(job, cfg, seed=0)
    loader = torch.utils.data.DataLoader(job.train_set, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=job.collate)
    flops = tokens = padded = 0
    job.model.train()
    for i, batch in zip(range(FLOP_BATCHES), loader):
        with FlopCounterMode(display=False) as counter:
            job.objective(job.model, batch)["loss"].backward()
        flops += counter.get_total_flops()
        tokens += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
        job.model.zero_grad(set_to_none=True)
    return flops / tokens, tokens / padded


def measure(args, variant: str) -> Path:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cell = OUT_RESULTS / f"{device}{variant}.json"
    if cell.exists() and not args.force:
        print(f"[skip] {cell.relative_to(ROOT)} (--force to measure again)")
        return cell
    out = OUT_RUNS / f"{device}{variant}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["pretrain", "--objective", "mlm", "--model", str(args.model), "--data",
            str(glue() / "full" / "SST-2" / "train.json"), "--set", "from_task=sst2", "--out",
            str(out.relative_to(ROOT)), "--seed", "13", "--max-steps", str(STEPS), "--batch-size", str(BATCH),
            "--lr", LR, "--set", "save_model=false", *VARIANTS[variant]]
    runner.gentune(argv)
    summary = cells.read_json(out / "summary.json")
    per_token, fill = flops_per_token(out)
    ceiling, ceiling_device = matmul_gflops()
    tokens_per_second = summary["examples_per_second"] * summary["tokens_per_example"]
    cells.write_json(cell, {"command": "gentune " + " ".join(argv), "date": dt.date.today().isoformat(),
                            "machine": machine(), "torch_threads": torch.get_num_threads(), "summary": summary,
                            "flops_per_token": per_token, "token_fill": fill, "tokens_per_second": tokens_per_second,
                            "achieved_gflops": per_token * tokens_per_second / 1e9, "matmul_gflops": ceiling,
                            "matmul_device": ceiling_device, "grouped": bool(variant)})
    return cell


def sections() -> dict[str, str]:
    rows = sorted(cells.read_cells(OUT_RESULTS), key=lambda c: (c["matmul_device"], bool(c.get("grouped"))))
    if not rows:
        return {}
    lines = tables.header(["device", "batches", "model", "batch", "tokens/example", "tokens/s", "GFLOP/token (fwd+bwd)",
                           "real tokens / padded", "achieved GFLOP/s", "matmul GFLOP/s", "share of the ceiling",
                           "loop overhead"], ["---", "---", "---", *["---:"] * 9])
    for c in rows:
        s = c["summary"]
        lines.append(tables.row([c["matmul_device"], "grouped by length" if c.get("grouped") else "as they come",
                                 Path(s["model"]).name, str(BATCH),
                                 f"{s['tokens_per_example']:.1f}", f"{c['tokens_per_second']:,.0f}",
                                 f"{c['flops_per_token'] / 1e9:.4f}", f"{c['token_fill']:.2f}",
                                 f"{c['achieved_gflops']:.1f}", f"{c['matmul_gflops']:.1f}",
                                 f"{100 * c['achieved_gflops'] / c['matmul_gflops']:.0f}%",
                                 f"{100 * s['loop_overhead']:.1f}% (target < 10%: "
                                 f"{'met' if s['loop_overhead'] < TARGET_OVERHEAD else 'missed'})"]))
    for c in rows:
        lines += ["", f"- {c['matmul_device']}: `{c['command']}` ({c['summary']['train_steps']} steps); measured "
                      f"{c['date']} on {c['machine']}, {c['torch_threads']} torch threads"]
    return {"mlm_throughput": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SPLADE))
    p.add_argument("--force", action="store_true", help="measure again")
    args = p.parse_args(argv)
    for variant in VARIANTS:
        measure(args, variant)
    runner.render_results()
    print(sections().get("mlm_throughput", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
