"""How fast is gentune's eNTK against the literal reference computation, how accurate, and how much memory does it
take? (issue 20's speed target)

Not run by CI. For each model (``--models``: splade = ../shared/models/splade_tiny_bert_mlm, minilm =
all-MiniLM-L6-v2 with a tied masked-LM head) and each n (``--n``), K_sgd over all parameters of the LM-BFF SST-2
prompt ("<text> It was [MASK] ." with terrible/great) on the first n sentences of the SST-2 training set
(max_length 64), C = 2 label-word logits:

- ``gentune``: ``gentune.diagnostics.ntk.kernel`` on the float32 model (chunk 8, panel 64), in a fresh subprocess
  that reports its wall time and the growth of its peak resident set (Linux VmHWM, reset after the model and
  inputs are loaded), so memory can be compared across n;
- ``reference``: ``benchmarks/kernel_reference.py`` (float64 model, jacrev per example, every entry by vmap(jvp), one
  example per batch, as princeton-nlp/LM-Kernel-FT computes it). For n <= ``--reference-full`` the whole kernel
  is computed; above, ``--sample`` outer rows x ``--sample`` inner columns are, and the time is extrapolated from
  the measured cost of one Jacobian and one entry block to n Jacobians and n^2 blocks (said so in the cell);
- accuracy: the float32 kernel's max |K - K64| / max |K64| against float64: the reference's own kernel where it was
  computed whole, else gentune's float64 path (tested equal to brute-force autograd in tests/test_ntk.py);
- ``--processes``: the same gentune kernel in one process with one thread against two processes with one thread
  each (torch.distributed, gloo), at the n of ``--processes-n``.

Each (model, n) is a cell ``benchmarks/results/kernel/speed/<model>_n<n>.json`` (skipped when present; --force
reruns). The bound gentune is measured against: n Jacobians (n C backward passes) plus a GEMM of 2 (n C)^2 P / 2
multiply-adds for the symmetric kernel; the reference needs n Jacobians plus n^2 forward-mode passes of C
tangents, each as costly as a forward pass at least.

    HF_HUB_OFFLINE=1 python benchmarks/kernel_speed.py --models splade --n 64 256 1024
    python benchmarks/kernel_speed.py --models splade --n 16 --reference-full 16 --out /tmp/ks   # a smoke run
    python benchmarks/kernel_speed.py --markdown      # the docs section from the cells
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _lib import cells  # noqa: E402
from _lib.paths import RESULTS, ROOT  # noqa: E402
from _lib.provenance import commit, machine  # noqa: E402

MODELS = {"splade": str(ROOT.parent / "shared" / "models" / "splade_tiny_bert_mlm"), "minilm": "all-MiniLM-L6-v2"}
OUT = RESULTS / "kernel" / "speed"


def _inputs(model_name: str, n: int):
    """The prompt classifier of ``model_name`` and its encoded first n SST-2 training sentences."""
    import torch

    from gentune.data import get_task, load_splits
    from gentune.data.prompts import packaged
    from gentune.kernel import encode_examples
    from gentune.models.hf import load_tokenizer
    from gentune.tasks.text_classification import prompt_model

    task = get_task("sst2")
    data = os.environ.get("GENTUNE_DATA") or str(ROOT.parent / "shared" / "data" / "glue")
    train, _ = load_splits(task, data)
    train = train.select(range(n))
    tok = load_tokenizer(model_name)
    prompt = packaged("sst2")
    torch.manual_seed(0)  # a model without a masked-LM head gets a new one: the same in every process
    model, _ = prompt_model(model_name, tok, prompt, note=False)
    return model.eval(), encode_examples(tok, task, train, prompt, 64)


def _reset_peak() -> int:
    """Reset the peak RSS (Linux) and return the current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def worker(args) -> dict:
    """One measurement in this (fresh) process; prints its JSON."""
    import torch

    torch.set_num_threads(args.threads)
    from gentune.diagnostics.ntk import kernel

    model, x = _inputs(MODELS[args.model], args.n)
    result = {}
    if args.what == "gentune":
        if args.world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                                    world_size=args.world)
            dist.barrier()  # both ranks start timing together, after both have loaded
        base = _reset_peak()
        t = time.perf_counter()
        k = kernel(model, x, chunk=8, panel=64)
        result["seconds"] = time.perf_counter() - t
        result["peak_growth_mb"] = (_status("VmHWM") - base) / 1024
        result["dim"] = k.dim
        if args.save:
            from safetensors.torch import save_file

            save_file({"k": k.values}, args.save)
        if args.world > 1:
            torch.distributed.destroy_process_group()
    elif args.what == "float64":
        k = kernel(model.double(), x, chunk=8, panel=64)
        from safetensors.torch import save_file

        save_file({"k": k.values}, args.save)
    else:
        from kernel_reference import examples_of, reference_kernel

        rows = examples_of(x, model.mask_positions(x["input_ids"]))
        if args.n <= args.reference_full:
            t = time.perf_counter()
            k, parts = reference_kernel(model, rows, "sgd")
            result.update(seconds=time.perf_counter() - t, measured="whole kernel", **parts)
            from safetensors.torch import save_file

            save_file({"k": k}, args.save)
        else:
            s = args.sample
            _, warm = reference_kernel(model, rows, "sgd", outer=[0], inner=[0])  # compile-free warm-up
            _, parts = reference_kernel(model, rows, "sgd", outer=list(range(s)), inner=list(range(s)))
            per_jac, per_entry = parts["jacobian_s"] / s, parts["entries_s"] / (s * s)
            result.update(seconds=args.n * per_jac + args.n ** 2 * per_entry, per_jacobian_s=per_jac,
                          per_entry_block_s=per_entry,
                          measured=f"{s} x {s} entry blocks and {s} Jacobians, extrapolated to n")
    print(json.dumps(result))
    return result


def _run(argv: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"worker {argv} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(model: str, n: int, args, tmp: Path) -> dict:
    from safetensors.torch import load_file

    from gentune.diagnostics.ntk import relative_error

    common = ["--model", model, "--n", str(n), "--reference-full", str(args.reference_full), "--sample",
              str(args.sample)]
    ours = _run([*common, "--what", "gentune", "--threads", str(args.threads), "--save", str(tmp / "k32")])
    ref = _run([*common, "--what", "reference", "--threads", str(args.threads), "--save", str(tmp / "kref")])
    k32 = load_file(str(tmp / "k32"))["k"]
    k64 = None
    if n <= args.reference_full:
        k64, against = load_file(str(tmp / "kref"))["k"], "the reference's float64 kernel"
    elif n <= args.error_max_n:
        _run([*common, "--what", "float64", "--threads", str(args.threads), "--save", str(tmp / "k64")])
        k64, against = load_file(str(tmp / "k64"))["k"], "gentune's float64 path"
    else:
        against = f"not measured above n = {args.error_max_n}"
    cell = {"model": model, "n": n, "outputs": 2, "parameters": ours["dim"], "gentune_s": ours["seconds"],
            "gentune_peak_growth_mb": ours["peak_growth_mb"], "reference_s": ref["seconds"],
            "reference_measured": ref["measured"],
            "reference_detail": {k: v for k, v in ref.items() if k not in ("seconds", "measured")},
            "speedup": ref["seconds"] / ours["seconds"],
            "relative_error": relative_error(k32, k64) if k64 is not None else None, "error_against": against,
            "threads": args.threads}
    return cell


def processes(model: str, n: int, args) -> dict:
    import socket

    common = ["--model", model, "--n", str(n), "--what", "gentune", "--threads", "1"]
    one = _run(common)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", *common, "--world", "2", "--rank", str(r),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}) for r in range(2)]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("two-process run failed:\n" + "\n".join(e[-2000:] for _, e in outs))
    two = max(json.loads(o.strip().splitlines()[-1])["seconds"] for o, _ in outs)
    return {"model": model, "n": n, "one_process_s": one["seconds"], "two_processes_s": two,
            "ratio_to_half": two / (one["seconds"] / 2)}


def markdown() -> str:
    rows = [cells.read_json(p) for p in sorted(OUT.glob("*_n*.json")) if not p.name.startswith("processes_")]
    if not rows:
        return "No kernel speed cells yet (`python benchmarks/kernel_speed.py`)."
    lines = ["| model | parameters | n | gentune (s) | reference (s) | speed-up | rel. error vs float64 | "
             "peak RSS growth (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["n"])):
        note = "" if r["reference_measured"] == "whole kernel" else " (extrapolated)"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['n']} | {r['gentune_s']:.1f} | "
                     f"{r['reference_s']:.0f}{note} | {r['speedup']:.0f}x | "
                     f"{'-' if r['relative_error'] is None else format(r['relative_error'], '.1e')} | "
                     f"{r['gentune_peak_growth_mb']:.0f} |")
    lines.append("")
    made = sorted({(r["model"], r.get("commit", "?"), r.get("date", "?"), r.get("machine", "?"), r["threads"])
                   for r in rows})
    for model, rev, date, where, threads in made:
        lines.append(f"{model}: commit {rev}, {date}, {where}, {threads} threads; "
                     f"`{next(r['command'] for r in rows if r['model'] == model and r.get('commit') == rev)}`.  ")
    for p in sorted(OUT.glob("processes_*.json")):
        r = cells.read_json(p)
        lines.append(f"\nTwo processes (one thread each) against one (one thread), {r['model']}, n = {r['n']}: "
                     f"{r['two_processes_s']:.1f} s against {r['one_process_s']:.1f} s, "
                     f"{r['ratio_to_half']:.2f}x half the one-process time.")
    return "\n".join(lines)


def sections() -> dict[str, str]:
    """docs/results.md's block of the speed cells, keyed ``kernel/speed``."""
    return {"kernel/speed": markdown()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--what", default="gentune", help=argparse.SUPPRESS)
    p.add_argument("--model", default="splade", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["splade", "minilm"], choices=sorted(MODELS))
    p.add_argument("--n", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--reference-full", type=int, default=64, help="compute the reference whole up to this n")
    p.add_argument("--sample", type=int, default=4, help="reference rows x columns measured above that")
    p.add_argument("--error-max-n", type=int, default=256, help="the float64 accuracy check up to this n")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--processes", action="store_true", help="also the two-process check")
    p.add_argument("--processes-n", type=int, default=256)
    p.add_argument("--out", help="write the cells here instead of benchmarks/results/kernel/speed")
    p.add_argument("--force", action="store_true")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.worker:
        sys.path.insert(0, str(HERE))
        args.n = args.n[0]
        worker(args)
        return
    if args.markdown:
        print(markdown())
        return
    out = Path(args.out) if args.out else OUT
    out.mkdir(parents=True, exist_ok=True)
    tmp = ROOT / "runs" / "kernel_speed"
    tmp.mkdir(parents=True, exist_ok=True)
    stamp = {"machine": machine(), "commit": commit(), "date": dt.date.today().isoformat(),
             "command": "python benchmarks/kernel_speed.py " + " ".join(sys.argv[1:])}
    for model in args.models:
        for n in args.n:
            cell = out / f"{model}_n{n}.json"
            if cell.exists() and not args.force:
                print(f"[skip] {cell}")
                continue
            t = time.perf_counter()
            result = {**measure(model, n, args, tmp), **stamp, "load_average": os.getloadavg()}
            cells.write_json(cell, result)
            print(f"{model} n={n}: gentune {result['gentune_s']:.1f} s, reference {result['reference_s']:.0f} s "
                  f"({result['reference_measured']}), {result['speedup']:.0f}x, error {result['relative_error']},"
                  f" peak +{result['gentune_peak_growth_mb']:.0f} MB [{time.perf_counter() - t:.0f} s]", flush=True)
        if args.processes:
            cell = out / f"processes_{model}_n{args.processes_n}.json"
            if not cell.exists() or args.force:
                cells.write_json(cell, {**processes(model, args.processes_n, args), **stamp})
                print(cells.read_json(cell))


if __name__ == "__main__":
    main()
