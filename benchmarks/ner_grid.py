"""Few-shot NER on CoNLL-2003 (issue 21): FFF-NER against token classification and EntLM, on EntLM's K-shot
splits, with splade-tiny (a masked LM) and all-MiniLM-L6-v2 (a sentence encoder; EntLM reads it after masked-LM
training of a new head on the CoNLL training text, labels dropped, one pretraining run per seed).

Data: $GENTUNE_NER_DATA (default ../shared/data/ner/conll2003): `fewshot/{K}shot/{split}.txt` to train,
`dev.txt` (3,250 sentences) to report, `train.txt` for the tuning slice and the MLM text. The splits have no dev
set and EntLM trains a fixed schedule and keeps the last model; so does every run here (`eval_every_epochs=0`: the
final model is the one scored). The learning rate of each (backbone, objective) is chosen on a tuning run that is
never reported: K = TUNE_K, split TUNE_SPLIT, seed TUNE_SEED, scored on TUNE_DEV sentences of `train.txt` that are
in no few-shot split. Every reported run is scored on the full dev set, which no choice sees.

Schedule: EPOCHS epochs capped at MAX_STEPS optimizer steps; of the split's sentences in batches of 4
(token-classification, entlm), or of FFF-NER's span examples (about 100 per sentence) in batches of 16, as FFF-NER
trains 30 epochs.

Phases, in order (one JSON cell per run under benchmarks/results/ner/, finished cells are skipped, so the grid
spans sessions):

    python benchmarks/ner_grid.py data     # the tuning slice and the MLM text (runs/ner/), with their counts
    python benchmarks/ner_grid.py mlm      # MiniLM's masked-LM head and encoder on the CoNLL text, per seed
    python benchmarks/ner_grid.py tune     # learning rates per backbone and objective
    python benchmarks/ner_grid.py run      # K x split x seed x backbone x objective, on the full dev set
    python benchmarks/ner_grid.py speed    # scoring the full dev set with MiniLM FFF-NER: fp32 and bf16
    python benchmarks/ner_grid.py all
    python benchmarks/ner_grid.py --dry-run
    python benchmarks/ner_grid.py --render # only rebuild docs/results.md

Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shlex
import shutil
import sys
from pathlib import Path

from _lib import cells, runner, stats, tables
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import commit, machine

RESULTS = ALL_RESULTS / "ner"
RUNS = ROOT / "runs" / "ner"
DATA = Path(os.environ.get("GENTUNE_NER_DATA", ROOT.parent / "shared" / "data" / "ner" / "conll2003"))
SPLADE = str((ROOT.parent / "shared" / "models" / "splade_tiny_bert_mlm").resolve())
BACKBONES = {"splade": SPLADE, "minilm": "all-MiniLM-L6-v2"}
OBJECTIVES = ["token-classification", "fffner", "entlm"]
KS = [5, 10, 20, 50]
SPLITS = {5: [1, 2, 3, 4], 10: [1, 2, 3], 20: [1, 2, 3], 50: [1, 2, 3]}
SEEDS = [13, 42, 100]
TUNE_K, TUNE_SPLIT, TUNE_SEED, TUNE_DEV = 10, 1, 1, 300
LRS = ["2e-5", "1e-4", "3e-4"]
BATCH = {"token-classification": 4, "entlm": 4, "fffner": 16}  # sentences, or FFF-NER span examples
EPOCHS, MAX_STEPS = 30, 2000
MLM = {"steps": 800, "batch": 32, "lr": "1e-4"}
PRECISION = "fp32"
ENTLM_ANCHOR = {"tagger": {5: 41.9, 10: 59.9, 20: 68.7, 50: 73.2}, "entlm": {5: 49.6, 10: 64.8, 20: 69.5, 50: 73.7}}


def split_file(k: int, split: int) -> Path:
    return DATA / "fewshot" / f"{k}shot" / f"{split}.txt"


def _rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


# ------------------------------------------------------------------------------------------------- data


def phase_data() -> dict:
    """The tuning slice (TUNE_DEV seeded sentences of train.txt in no few-shot split) and the MLM text (every
    train.txt sentence, one a line, labels dropped)."""
    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.ner import read, write_conll

    cell = RESULTS / "data.json"
    if (RUNS / "tune_dev.txt").is_file() and (RUNS / "mlm_text.txt").is_file() and cell.is_file():
        return cells.read_json(cell)
    train = read(DATA / "train.txt")
    in_splits = {s.tokens for k in KS for i in SPLITS[k] for s in read(split_file(k, i))}
    pool = [s for s in train if s.tokens not in in_splits and any(t != "O" for t in s.tags)]
    random.Random(0).shuffle(pool)
    RUNS.mkdir(parents=True, exist_ok=True)
    write_conll(pool[:TUNE_DEV], RUNS / "tune_dev.txt")
    cells.write_text(RUNS / "mlm_text.txt", "".join(" ".join(s.tokens) + "\n" for s in train))
    record = {"train_sentences": len(train), "in_splits": len(in_splits), "tune_dev": TUNE_DEV,
              "tune_dev_entities": sum(len(s.spans) for s in pool[:TUNE_DEV]), "mlm_lines": len(train),
              "date": dt.date.today().isoformat()}
    cells.write_json(cell, record)
    print(f"[data] {record}")
    return record


# ------------------------------------------------------------------------------------------------- runs


def mlm_model(seed: int) -> Path:
    return RUNS / "mlm" / f"seed{seed}" / "model"


def phase_mlm(seeds: list[int]) -> None:
    phase_data()
    for seed in seeds:
        out = RUNS / "mlm" / f"seed{seed}"
        argv = ["pretrain", "--objective", "mlm", "--data", _rel(RUNS / "mlm_text.txt"), "--model", "all-MiniLM-L6-v2",
                "--max-steps", str(MLM["steps"]), "--batch-size", str(MLM["batch"]), "--lr", MLM["lr"], "--seed",
                str(seed), "--out", _rel(out)]
        runner.run_cell(RESULTS / "mlm" / f"seed{seed}.json", argv, {"phase": "mlm", "seed": seed}, out, keep=True)


def start(backbone: str, objective: str, seed: int) -> str:
    if backbone == "minilm" and objective == "entlm":
        return _rel(mlm_model(seed))
    return BACKBONES[backbone]


def steps(objective: str, train: Path) -> int:
    """EPOCHS epochs of the objective's BATCH, at most MAX_STEPS: over the sentences, or over FFF-NER's span
    examples (each gold entity and the sampled negatives: (words + 10 x entities) x 3 per sentence, at most all its
    spans)."""
    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.ner import read

    sentences = read(train)
    if objective == "fffner":
        n = sum(len(s.spans) + min(int((len(s.tokens) + 10 * len(s.spans)) * 3.0),
                                   len(s.tokens) * (len(s.tokens) + 1) // 2) for s in sentences)
    else:
        n = len(sentences)
    return min(-(-n // BATCH[objective]) * EPOCHS, MAX_STEPS)


def _path(p: Path) -> str:
    return _rel(p) if p.resolve().is_relative_to(ROOT) else str(p)


def finetune_argv(backbone: str, objective: str, train: Path, dev: Path, seed: int, lr: str, out: Path) -> list[str]:
    return ["finetune", "--task", "ner", "--objective", objective, "--train", _path(train), "--dev", _path(dev),
            "--model", start(backbone, objective, seed), "--max-steps", str(steps(objective, train)), "--batch-size",
            str(BATCH[objective]), "--lr", lr, "--seed", str(seed), "--out", _rel(out), "--set",
            f"precision={PRECISION}"]


def phase_tune(backbones: list[str], objectives: list[str]) -> None:
    phase_data()
    for backbone in backbones:
        for objective in objectives:
            if backbone == "minilm" and objective == "entlm":
                phase_mlm([TUNE_SEED])
            for lr in LRS:
                out = RUNS / "tune" / backbone / objective / f"lr{lr}"
                argv = finetune_argv(backbone, objective, split_file(TUNE_K, TUNE_SPLIT), RUNS / "tune_dev.txt",
                                     TUNE_SEED, lr, out)
                runner.run_cell(RESULTS / "tune" / backbone / objective / f"lr{lr}.json", argv,
                     {"phase": "tune", "backbone": backbone, "objective": objective, "lr": lr}, out)


def chosen_lr(backbone: str, objective: str) -> str | None:
    """The tuning runs' best learning rate (tune-dev F1; the smaller on a tie), or None until all have run."""
    found = {}
    for lr in LRS:
        cell = RESULTS / "tune" / backbone / objective / f"lr{lr}.json"
        if not cell.is_file():
            return None
        found[lr] = cells.read_json(cell)["summary"]["final_dev"]["f1"]
    return max(LRS, key=lambda lr: (found[lr], -float(lr)))


def run_cells(ks, seeds, backbones, objectives):
    """(cell, argv, record, out) of every reported run, in the order they run: seeds outermost, so that complete
    paired comparisons arrive first; the cheap backbone first."""
    for seed in seeds:
        for k in ks:
            for split in SPLITS[k]:
                for backbone in backbones:
                    for objective in objectives:
                        lr = chosen_lr(backbone, objective)
                        name = f"k{k}_split{split}_seed{seed}"
                        out = RUNS / "run" / backbone / objective / name
                        record = {"phase": "run", "backbone": backbone, "objective": objective, "k": k,
                                  "split": split, "seed": seed, "lr": lr}
                        argv = None if lr is None else finetune_argv(backbone, objective, split_file(k, split),
                                                                     DATA / "dev.txt", seed, lr, out)
                        yield RESULTS / "run" / backbone / objective / f"{name}.json", argv, record, out


def phase_run(ks, seeds, backbones, objectives) -> None:
    phase_tune(backbones, objectives)
    for cell, argv, record, out in run_cells(ks, seeds, backbones, objectives):
        if argv is None:
            print(f"[wait] {record}: its learning rate is not chosen yet")
            continue
        if record["backbone"] == "minilm" and record["objective"] == "entlm":
            phase_mlm([record["seed"]])
        runner.run_cell(cell, argv, record, out)


SPEED = {"k": 5, "split": 1, "seed": 13, "lr": "1e-4", "steps": 600}  # the model the speed phase times
# (name, precision, widest span): the default, bf16, and bf16 over spans of at most 4 words (0.5% of CoNLL-2003 dev
# entities are wider)
SPEED_VARIANTS = [("fp32", "fp32", 8), ("bf16", "bf16", 8), ("bf16-w4", "bf16", 4)]


def _spans(sentences, width: int) -> int:
    return sum(min(width, n) * n - min(width, n) * (min(width, n) - 1) // 2 for n in (len(s.tokens) for s in sentences))


def phase_speed(sentences: int | None = None) -> None:
    """The inference target: a MiniLM FFF-NER model (trained as SPEED says: its quality does not change the work)
    scores the dev set in fp32 and in bf16: seconds, sentences/s, span inputs/s, F1, and how far bf16's
    p(is-entity) is from fp32's. ``sentences``: the first N dev sentences only (the full set's time is then
    extrapolated by its span inputs, and said to be)."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.ner import read
    from gentune.tasks.ner import entities_of, load, metrics_of

    cell = RESULTS / "speed" / ("minilm_fffner.json" if sentences is None else f"minilm_fffner_{sentences}.json")
    if cells.finished(cell, "speed"):
        return
    out = RUNS / "speed" / "minilm_fffner"
    argv = ["finetune", "--task", "ner", "--objective", "fffner", "--train", _path(split_file(SPEED["k"],
            SPEED["split"])), "--dev", _path(RUNS / "tune_dev.txt"), "--model", BACKBONES["minilm"], "--max-steps",
            str(SPEED["steps"]), "--batch-size", str(BATCH["fffner"]), "--lr", SPEED["lr"], "--seed",
            str(SPEED["seed"]), "--out", _rel(out)]
    phase_data()
    if not (out / "best").is_dir():
        shutil.rmtree(out, ignore_errors=True)
        runner.gentune(argv, label="the speed phase's model")
    full = read(DATA / "dev.txt")
    dev = full if sentences is None else full[:sentences]
    found, probs = {}, {}
    for name, precision, width in SPEED_VARIANTS:
        model = load(str(out / "best"))
        model.max_width = width  # the candidates are an inference choice: narrower spans, fewer inputs
        entities, raw = entities_of(model, dev, 64, precision, progress=True)
        found[name] = {"speed": model.speed, "metrics": metrics_of(dev, entities, raw),
                       "entities": sum(map(len, entities)), "max_width": width,
                       "full_span_inputs": _spans(full, width)}
        found[name]["full_seconds"] = found[name]["full_span_inputs"] / model.speed["inputs_per_second"]
        table = model.scores
        order = torch.argsort(table[:, 3] * 10_000 + table[:, 4] * 100 + table[:, 5])
        probs[name] = table[order, 0]
    a, b = probs["fp32"], probs["bf16"]
    all_spans = _spans(full, 8)
    record = {"phase": "speed", "command": shlex.join(["gentune", *argv]), "machine": machine(), "commit": commit(),
              "date": dt.date.today().isoformat(), "sentences": len(dev), "full_sentences": len(full),
              "full_span_inputs": all_spans, **found,
              "max_abs_diff_p_entity": float((a - b).abs().max()),
              "decisions_differ": int(((a > 0.5) != (b > 0.5)).sum())}
    cells.write_json(cell, record)
    print(f"[speed] {record}")


def remaining(ks, seeds, backbones, objectives) -> dict[str, int]:
    tune = sum(not (RESULTS / "tune" / b / o / f"lr{lr}.json").exists() for b in backbones for o in objectives
               for lr in LRS)
    run = sum(not c.exists() for c, *_ in run_cells(ks, seeds, backbones, objectives))
    mlm = sum(not (RESULTS / "mlm" / f"seed{s}.json").exists() for s in [TUNE_SEED, *seeds])
    speed = int(not (RESULTS / "speed" / "minilm_fffner.json").exists())
    return {"mlm": mlm, "tune": tune, "run": run, "speed": speed}


# ------------------------------------------------------------------------------------------------- tables


def load() -> dict:
    runs = [c for c in cells.read_cells(RESULTS / "run", "*/*/*.json")]
    speed = sorted((RESULTS / "speed").glob("minilm_fffner*.json"),
                   key=lambda p: (p.stem != "minilm_fffner", p.stem))  # the full set's measurement first
    return {"runs": runs, "speed": cells.read_json(speed[0]) if speed else None,
            "tune": cells.read_cells(RESULTS / "tune", "*/*/*.json")}


def _scores(data: dict, backbone: str, objective: str, k: int) -> dict[tuple, float]:
    return {(c["split"], c["seed"]): c["summary"]["final_dev"]["f1"] for c in data["runs"]
            if c["backbone"] == backbone and c["objective"] == objective and c["k"] == k}


def sections(data: dict) -> dict[str, str]:
    lines = []
    for backbone in BACKBONES:
        lines += [f"**{backbone}** (entity micro-F1 on the CoNLL-2003 dev set, mean ± std over splits x seeds, "
                  "cells counted in brackets)", ""]
        lines += tables.header(["objective", *[f"K = {k}" for k in KS]], ["---", *["---:"] * len(KS)])
        for objective in OBJECTIVES:
            row = [objective]
            for k in KS:
                got = list(_scores(data, backbone, objective, k).values())
                row.append(f"{stats.fmt(got)} ({len(got)})" if got else "-")
            lines.append(tables.row(row))
        for objective in ("fffner", "entlm"):
            row = [f"{objective} - token-classification (paired)"]
            for k in KS:
                d = stats.paired(_scores(data, backbone, objective, k), _scores(data, backbone,
                                                                                 "token-classification", k))
                row.append(stats.fmt_paired(d, with_n=True))
            lines.append(tables.row(row))
        lines.append("")
    lines += ["The trivial predictor (O everywhere) scores F1 0 on every split. EntLM's own table on these splits "
              "(BERT-base-cased, mean of 3 splits x 4 runs): BERT-tagger " +
              " / ".join(f"{ENTLM_ANCHOR['tagger'][k]}" for k in KS) + ", EntLM " +
              " / ".join(f"{ENTLM_ANCHOR['entlm'][k]}" for k in KS) + f" at K = {' / '.join(map(str, KS))}."]
    chosen = {(c["backbone"], c["objective"], c["lr"]): c["summary"]["final_dev"]["f1"] for c in data["tune"]}
    if chosen:
        lines += ["", "Tuning (K = 10, split 1, seed 1, tune-dev F1 by learning rate): " + "; ".join(
            f"{b} {o}: " + ", ".join(f"{lr} {100 * chosen[(b, o, lr)]:.1f}" for lr in LRS if (b, o, lr) in chosen)
            for b in BACKBONES for o in OBJECTIVES if any((b, o, lr) in chosen for lr in LRS))]
    speed = data["speed"]
    if speed:
        rows = tables.header(["precision", "widest span", "sentences", "seconds", "sentences/s", "span inputs/s",
                              "full dev set (s)", "entities", "F1"], ["---", *["---:"] * 8])
        for p in [name for name, _, _ in SPEED_VARIANTS if name in speed]:
            s = speed[p]["speed"]
            full = f"{speed[p]['full_seconds']:.0f}"
            if speed["sentences"] != speed["full_sentences"]:
                full += " (extrapolated)"
            rows.append(tables.row([s["precision"], str(speed[p].get("max_width", 8)), str(speed["sentences"]),
                                    f"{s['seconds']:.0f}", f"{s['sentences_per_second']:.1f}",
                                    f"{s['inputs_per_second']:.0f}", full, str(speed[p]["entities"]),
                                    f"{100 * speed[p]['metrics']['f1']:.1f}"]))
        rows += ["", f"The full dev set: {speed['full_sentences']} sentences, {speed['full_span_inputs']:,} span "
                     f"inputs of at most 8 words. bf16 against fp32: p(is-entity) differs by at most "
                     f"{speed['max_abs_diff_p_entity']:.2g}, {speed['decisions_differ']} of the span decisions "
                     f"differ. Machine: {speed['machine']}; {speed['date']}, commit {speed['commit']}; the model: "
                     f"`{speed['command']}`."]
        speed_block = "\n".join(rows)
    else:
        speed_block = "_Not measured yet: `python benchmarks/ner_grid.py speed`._"
    n = len(data["runs"])
    dates = sorted({c["date"] for c in data["runs"]})
    provenance = (f"{n} runs of 234, {dates[0]} to {dates[-1]}; machine: {data['runs'][0]['machine']}" if n else
                  "No run of the grid has finished yet: no F1 is claimed")
    return {"ner/table": "\n".join(lines), "ner/speed": speed_block, "ner/provenance": provenance}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["data", "mlm", "tune", "run", "speed", "all"])
    p.add_argument("--ks", nargs="+", type=int, default=KS, choices=KS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    p.add_argument("--dry-run", action="store_true", help="count the runs each phase has left")
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md")
    p.add_argument("--speed-sentences", type=int, help="speed: only the first N dev sentences (the full set's time "
                                                       "extrapolated)")
    args = p.parse_args()
    if args.render:
        runner.render_results()
        return 0
    if args.dry_run or args.phase is None:
        print(remaining(args.ks, args.seeds, args.backbones, args.objectives))
        return 0
    phases = ["data", "mlm", "tune", "run", "speed"] if args.phase == "all" else [args.phase]
    for phase in phases:
        if phase == "data":
            phase_data()
        elif phase == "mlm":
            phase_mlm([TUNE_SEED, *args.seeds])
        elif phase == "tune":
            phase_tune(args.backbones, args.objectives)
        elif phase == "run":
            phase_run(args.ks, args.seeds, args.backbones, args.objectives)
        else:
            phase_speed(args.speed_sentences)
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
