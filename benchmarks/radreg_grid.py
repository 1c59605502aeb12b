"""The RadReg experiment of Deng, Hong, Zhou, Mahdavi (AISTATS 2024) at our scale: MAE and context-encoder
pretraining with and without RadReg at the same budget, then the few-label fine-tuning protocol of
benchmarks/pretrain_grid.py.

- RadReg's unlabeled downstream data for a task are the task's training pool without labels: the training images
  of the task's classes, the held-out validation images excluded (the labelled fine-tuning images of every seed
  are drawn from this pool). One OBJECTIVE+RadReg pretraining per task; the plain runs are pretrain_grid.py's,
  unless those ran under another (device, mixed precision) than the RadReg arm (bf16 on a GPU against float32 on
  a CPU): then this script pretrains and fine-tunes the plain arm again under the RadReg arm's setting and pairs
  with that one, so that a pair differs only in RadReg.
- lambda and the head class are chosen per objective on a validation split only (``--stage tune``): for each
  candidate, a shortened OBJECTIVE+RadReg pretraining (``TUNE_EPOCHS``) and a shortened cat-dog fine-tuning with a
  seed that is not reported (7), scored on a *tuning* split: the reported held-out images (split seed 0) are
  removed first (``exclude_split_seed=0``) and 5,000 of the rest are held out with split seed 1. Tuning never sees
  a reported validation image, and its own validation images are kept out of its pretraining and of RadReg's
  unlabeled pool. The best wins, compared with the plain objective under the same shortened protocol. The choice
  is written to benchmarks/results/radreg/choice.json (MAE) or choice-context-encoder.json and used by the full
  runs. Each pair fine-tunes with the plain arm's tuned learning rate: it differs only in the pretraining.
- Reported: accuracy mean ± std over seeds 13, 21, 42, 87, 100, the paired difference to the plain objective with
  its standard error, the fine-tuning curves of both arms in one plot per task with a convergence table, and
  RadReg's pretraining step-time overhead measured in one process with the two step kinds interleaved.
- An ablation of the tuning task (``--stage per-task``, not part of ``all``): lambda and the head class tuned on
  each other task's own tuning split the same way; where that choice differs from cat-dog's, the task's RadReg arm
  again with it (arm OBJECTIVE+radreg-own), paired with the same plain arm.

    python benchmarks/radreg_grid.py --stage tune        # 10 min (context encoder) to 40 min (MAE) on 2 cores
    python benchmarks/radreg_grid.py                     # the full runs (needs pretrain_grid.py's plain runs)
    python benchmarks/radreg_grid.py --objectives mae    # one objective only
    python benchmarks/radreg_grid.py --stage overhead    # only the step-time measurement (minutes)
    python benchmarks/radreg_grid.py --stage per-task    # tuning-task ablation: MAE 4 min (H200), CE 25 min (2 cores)
    python benchmarks/radreg_grid.py --render
    python benchmarks/radreg_grid.py --smoke             # minutes: tuning, pretraining, fine-tuning with 3-step runs
    python benchmarks/radreg_grid.py --jobs 6            # 6 runs at once (a GPU machine with many cores)

Not run by CI. Cells are resumable like the other grids.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pretrain_grid as pg

ROOT = pg.ROOT
RESULTS = ROOT / "benchmarks" / "results" / "radreg"
RUNS = ROOT / "runs" / "radreg_grid"
# what the numbers say, written after reading them (rendered under each task's table)
NOTES = {
    "mae cat-dog": [
        "- RadReg is level with plain MAE: -0.1 ± 0.5 (3 of 5 seeds higher, -2.0 to +0.8), not the paper's "
        "direction. Its", "  curve passes plain MAE's at epoch 20 but ends level, and never reaches its final "
        "accuracy at the last", "  evaluation: no faster convergence. Before MLP heads revived their dead units the "
        "same pair gave +0.4 ± 0.2", "  (git history): with the penalty switched off for much of that run, it was in "
        "effect a weaker RadReg.", "  With revival, neither 1,408-step run logged a zero estimate; 8 (cat-dog) and "
        "12 (cifar10) of the", "  256 units were revived per step on average.", ""],
    "mae cifar10": [
        "- RadReg is below plain MAE by -1.2 ± 0.4 (all 5 seeds lower, -0.5 to -2.6): the paper's direction is not "
        "reproduced", "  on the 10-class task, nor faster convergence. A likely reason: here RadReg's unlabeled pool "
        "(all 45,000", "  training images) is MAE's own pretraining set, so the penalty brings no information about "
        "the downstream", "  inputs that pretraining lacks and only constrains the encoder (on cat-dog the pool is "
        "the 9,000 cat and", "  dog images). lambda was tuned on cat-dog; the ablation below tunes it on cifar10 "
        "itself.", ""],
    "mae cifar10 own": [
        "- Tuned on cifar10's own tuning split, the candidates at lambda 0.1 and 1.0 are all below plain MAE "
        "(35.6), the", "  two at 0.01 level with it or 0.5 above, and accuracy falls as lambda grows for "
        "both head classes: the", "  tuning itself says the less RadReg the better here. At the chosen "
        "lambda 0.01 the loss", "  shrinks to -0.4 ± 0.3 (4 of 5 seeds lower): the lambda tuned on cat-dog "
        "was too strong for 10", "  classes, but even the lambda tuned on cifar10 does not help. Both "
        "findings fit the explanation", "  above (the pool adds nothing that pretraining lacks).", ""],
    "context-encoder cat-dog": [
        "- RadReg is above the plain context encoder by +1.5 ± 0.5, on all 5 seeds (+0.5 to +2.9): the paper's "
        "direction,", "  by about three standard errors. Both arms reach the plain arm's final accuracy at epoch 25 "
        "(evaluations", "  every 5 epochs): no faster convergence at this grain.",
        "- Both arms ran on the CPU in float32; pretrain_grid.py's plain cells (H200, bf16) give 67.8 ± 1.1 and a "
        "pair of", "  +1.3 ± 0.4, the same direction. These runs use MLP heads with dead-unit revival: without it "
        "every head", "  unit died within about 900 steps on this encoder's non-negative features and the penalty "
        "was exactly 0", "  (docs/methods/radreg.md).", ""],
    "context-encoder cifar10": [
        "- RadReg is below the plain context encoder by -0.8 ± 0.3 (all 5 seeds lower, -0.1 to -2.0) and never "
        "reaches its", "  final accuracy: the same pattern as MAE (up or level on cat-dog, down on 10 classes). "
        "lambda (1.0) was tuned", "  on cat-dog; the ablation below tunes it on cifar10 itself.", ""],
    "context-encoder cifar10 own": [
        "- Tuned on cifar10's own tuning split, no candidate beats the plain context encoder (32.6); lambda 0.1 "
        "with MLP heads", "  ties it (32.6), and lambda 1.0, cat-dog's choice, is the worst for both head "
        "classes (29.6 and 25.6). At", "  lambda 0.1 RadReg is level with the plain arm, +0.1 ± 0.2 (-0.4 to "
        "+0.9), where lambda 1.0 lost -0.8 ± 0.3.", "  So on 10 classes the loss came from a lambda tuned on "
        "cat-dog, and the lambda tuned on 10 classes gives no", "  gain either: with MAE (-0.4 ± 0.3 at its "
        "tuned 0.01) the same. Both arms ran on the CPU in float32.", ""],
}
CANDIDATES = [{"weight": w, "head": h} for h in ("linear", "mlp") for w in (0.01, 0.1, 1.0)]
TUNE_EPOCHS = "2"
# the tuning split: the reported held-out images (split seed 0) removed, then 5,000 of the rest held out with
# split seed 1; used by the tuning runs' pretraining and fine-tuning alike. Its seed (7) is not a reported seed.
TUNE_SPLIT = ("--set", "split_seed=1", "--set", "exclude_split_seed=0")
TUNE_FINETUNE = ("--set", "eval_every_epochs=10", "--epochs", "10", *TUNE_SPLIT)
TUNE_SEED = 7
TUNE_TASK = "cat-dog"  # the reported protocol's tuning task; ``--stage per-task`` tunes on each other task too
OWN = "+radreg-own"  # the per-task ablation's arm suffix: lambda and head tuned on the task's own tuning split


def downstream_pool(task: str, args, tuning: bool = False) -> Path:
    """The task's training images (validation held out; when ``tuning``, the tuning split's validation images
    too), written once as an image folder for --radreg-data."""
    folder = RUNS / ("downstream-tune" if tuning else "downstream") / task
    done = folder / ".complete"
    if done.exists():
        return folder
    from PIL import Image

    from gentune.vision_tasks import held_out_split, select_classes

    train, _ = (held_out_split(args.data, None, 5000, 1, exclude_seed=0) if tuning
                else held_out_split(args.data, None, 5000, 0))
    classes = pg.TASKS[task][1].split(",") if pg.TASKS[task][0] == "--classes" else train.classes
    train = select_classes(train, classes)
    for i, (img, label) in enumerate(zip(train.images, train.labels)):
        target = folder / classes[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(target / f"{i:05d}.png")
    done.write_text(f"{len(train)} images\n")
    return folder


OBJECTIVES = ["mae", "context-encoder"]  # the seed paper's two pretraining schemes; plain runs: pretrain_grid.py
SHORT = {"mae": "mae-short", "context-encoder": "context-encoder-short"}  # the tuning references' run names


def _tag(objective: str) -> str:
    """Prefix of an objective's tuning runs and choice file (none for MAE, whose names came first)."""
    return "" if objective == "mae" else "ce-"


def choice_path(objective: str = "mae", task: str = TUNE_TASK) -> Path:
    """The reported choice (tuned on cat-dog), or the ablation's choice tuned on another task's own tuning split."""
    if task != TUNE_TASK:
        return RESULTS / f"choice-{objective}-{task}.json"
    return RESULTS / ("choice.json" if objective == "mae" else f"choice-{objective}.json")


def _flags(choice: dict, task: str, args, tuning: bool = False, objective: str = "mae") -> list[str]:
    """OBJECTIVE + RadReg pretraining flags: the full budget, or (``tuning``) TUNE_EPOCHS on the tuning split."""
    return [*_budget(objective, tuning), "--radreg-data", str(downstream_pool(task, args, tuning).relative_to(ROOT)),
            "--set", f"radreg.weight={choice['weight']}", "--set", f"radreg.head={choice['head']}"]


def _budget(objective: str, tuning: bool) -> list[str]:
    """pretrain_grid.py's flags for the objective; when ``tuning``, TUNE_EPOCHS on the tuning split."""
    flags = list(pg.PRETRAIN[objective][1])
    if tuning:
        flags = [*flags, *TUNE_SPLIT]
        flags[flags.index("--epochs") + 1] = TUNE_EPOCHS
    return flags


def short_run(args, need_encoder: bool = False, objective: str = "mae") -> Path:
    """The plain objective pretrained for TUNE_EPOCHS on the tuning split: the tuning reference (MAE's is also a
    checkpoint of the diagnostics study; it never saw the reported validation images)."""
    return pg.run_pretrain(SHORT[objective], objective, pg.PRETRAIN[objective][0], _budget(objective, True), args,
                           RESULTS / "tune", RUNS / "tune", need_encoder)


def short_mae(args, need_encoder: bool = False) -> Path:
    return short_run(args, need_encoder, "mae")


def radreg_pretrain(task: str, choice: dict, args, need_encoder: bool = False, objective: str = "mae") -> Path:
    """OBJECTIVE + RadReg at the full budget, the task's training pool as RadReg's unlabeled data."""
    return pg.run_pretrain(f"{objective}+radreg-{task}", objective, pg.PRETRAIN[objective][0],
                           _flags(choice, task, args, objective=objective), args, RESULTS, RUNS, need_encoder)


def tune(args, objective: str = "mae", task: str = TUNE_TASK) -> dict:
    """lambda and the head class for OBJECTIVE + RadReg, chosen on ``task``'s tuning split (the reported protocol:
    cat-dog; another task: the per-task ablation, whose RadReg pool is that task's tuning pool)."""
    path = choice_path(objective, task)
    if path.exists():
        return json.loads(path.read_text())
    encoder = pg.PRETRAIN[objective][0]
    downstream_pool(task, args, tuning=True)  # written once, before runs start in parallel
    prefix = _tag(objective) + ("" if task == TUNE_TASK else f"{task}-")
    names = {f"{prefix}radreg-{c['head']}-{c['weight']}": c for c in CANDIDATES}
    # the reference (the plain objective under the same shortened protocol) and every candidate: pretrain, then
    # fine-tune
    pg._parallel([lambda: short_run(args, objective=objective)] + [
        lambda n=n, c=c: pg.run_pretrain(n, objective, encoder, _flags(c, task, args, True, objective), args,
                                         RESULTS / "tune", RUNS / "tune") for n, c in names.items()])
    protocol = (*TUNE_FINETUNE, "--lr", pg.chosen_lr(task, objective))  # the plain arm's tuned rate, if chosen

    def finetune(name: str) -> float:
        # the reference's encoder may be gone (runs/ is not committed) when a new task needs it: pretrained again
        remake = (lambda: short_run(args, True, objective)) if name == SHORT[objective] else None
        cell = pg.run_finetune(task, name, TUNE_SEED, RUNS / "tune" / "pretrain" / name / "encoder", encoder,
                               args, RESULTS / "tune", RUNS / "tune", protocol, make_init=remake)
        return json.loads(cell.read_text())["summary"]["final_dev"]["accuracy"]

    scores = pg._parallel([lambda n=n: finetune(n) for n in [SHORT[objective], *names]])
    reference = scores[0]
    rows = [{**c, "accuracy": a} for c, a in zip(names.values(), scores[1:])]
    best = max(rows, key=lambda r: r["accuracy"])
    choice = {"weight": best["weight"], "head": best["head"], "candidates": rows, "plain": reference,
              "objective": objective, "task": task,
              "protocol": f"{objective}+RadReg pretraining {TUNE_EPOCHS} epochs, {task} fine-tuning seed {TUNE_SEED}, "
                          f"{' '.join(protocol)}: the tuning split, not the reported one"}
    pg._write(path, choice)
    return choice


def per_task(objective: str, args) -> None:
    """The ablation of the tuning task: lambda and the head chosen on each other task's own tuning split. Where the
    choice differs from the reported (cat-dog) one, that task's RadReg arm again with it (arm OBJECTIVE+radreg-own),
    paired with the same plain arm; where it is the same, the reported arm is the ablation's too."""
    reported = tune(args, objective)
    encoder, arm = pg.PRETRAIN[objective][0], objective + OWN
    for task in [t for t in args.tasks if t != TUNE_TASK]:
        choice = tune(args, objective, task)
        if (choice["weight"], choice["head"]) == (reported["weight"], reported["head"]):
            continue
        downstream_pool(task, args)
        missing = [s for s in args.seeds if not (RESULTS / "finetune" / task / f"{arm}_seed{s}.json").exists()]
        pg.run_pretrain(f"{arm}-{task}", objective, encoder, _flags(choice, task, args, objective=objective), args,
                        RESULTS, RUNS, need_encoder=bool(missing))
        init = RUNS / "pretrain" / f"{arm}-{task}" / "encoder"
        pg._parallel([lambda s=s: pg.run_finetune(task, arm, s, init, encoder, args, RESULTS, RUNS,
                                                  extra=("--lr", pg.chosen_lr(task, objective))) for s in missing])


def overhead_path(objective: str = "mae") -> Path:
    return RESULTS / ("overhead.json" if objective == "mae" else f"overhead-{objective}.json")


def overhead(args, steps: int = 12, objective: str = "mae") -> dict:
    """RadReg's extra pretraining step time: OBJECTIVE's steps (its grid encoder and options, batch 256) with and
    without RadReg at the tuned settings, alternating, in one process."""
    path = overhead_path(objective)
    chosen = choice_path(objective)
    choice = json.loads(chosen.read_text()) if chosen.exists() else {"weight": 0.1, "head": "mlp"}
    choice = {"weight": choice["weight"], "head": choice["head"]}
    if path.exists() and json.loads(path.read_text()).get("radreg") == choice:
        return json.loads(path.read_text())  # measured with the chosen settings already
    import torch

    from gentune import registry
    from gentune.data.images import TrainTransform
    from gentune.models.vision import create_encoder
    from gentune.regularizers.radreg import RadReg
    from gentune.vision_tasks import held_out_split, pixel_stats

    from gentune.config import PretrainConfig, apply_overrides

    encoder, flags = pg.PRETRAIN[objective]
    # the grid's --set options, read as gentune pretrain reads them
    cfg = apply_overrides(PretrainConfig(objective=objective),
                          [flags[i + 1] for i, f in enumerate(flags) if f == "--set"])
    options = cfg.objective_options.get(objective, {})
    lr = float(flags[flags.index("--lr") + 1]) if "--lr" in flags else 1e-4
    train, _ = held_out_split(args.data, None, 5000, 0)
    mean, std = pixel_stats(train.images)
    transform = TrainTransform(32, (0.2, 1.0), mean=tuple(mean), std=tuple(std))
    loss_fn = registry.create("objective", objective, **options)
    times = {objective: [], f"{objective}+radreg": []}
    arms = {}
    for name in times:
        torch.manual_seed(0)
        model = loss_fn.build(create_encoder(encoder))
        regs = [RadReg(images=train.images, weight=choice["weight"], head=choice["head"], mean=mean, std=std)] \
            if name != objective else []
        arms[name] = (model, torch.optim.AdamW(model.parameters(), lr=lr), regs)
    for step in range(steps + 2):
        x = {"pixel_values": transform(torch.from_numpy(train.images[step * 256:(step + 1) * 256]))}
        for name, (model, opt, regs) in arms.items():
            t0 = time.perf_counter()
            loss = loss_fn(model, x)["loss"] + sum(sum(r(model, x, None).values()) for r in regs)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"seconds_per_step": med, "ratio": med[f"{objective}+radreg"] / med[objective], "steps": steps,
              "batch": 256, "objective": objective, "encoder": encoder, "radreg": choice,
              "threads": torch.get_num_threads(), "machine": pg.machine()}
    pg._write(path, result)
    return result


def render() -> str:
    cells = [json.loads(p.read_text()) for p in sorted((RESULTS / "finetune").glob("*/*.json"))]
    if not cells and not any(choice_path(o).exists() or overhead_path(o).exists() for o in OBJECTIVES):
        return ""
    lines = ["## RadReg (`benchmarks/radreg_grid.py`)", ""]
    for objective in OBJECTIVES:
        lines += _render_objective(objective, [c for c in cells if c["arm"] == f"{objective}+radreg"])
    for objective in OBJECTIVES:
        if overhead_path(objective).exists():
            o = json.loads(overhead_path(objective).read_text())
            name = {"mae": "MAE", "context-encoder": "context encoder"}[objective]
            lines += [f"Pretraining step time ({name} {pg.PRETRAIN[objective][0]}, batch 256, {o['steps']} "
                      f"alternating steps, {o['threads']} threads): {o['seconds_per_step'][objective]:.2f} s without "
                      f"RadReg, {o['seconds_per_step'][objective + '+radreg']:.2f} s with it "
                      f"({100 * (o['ratio'] - 1):+.0f}%).", ""]
    return "\n".join(lines) + "\n"


def setting(cell: dict) -> tuple:
    """(device, mixed precision) of a cell's run: the two arms of a pair must share it (bf16 on a GPU and float32
    on a CPU do not train alike)."""
    return cell["summary"].get("device"), cell["summary"].get("mixed_precision")


def plain_sources(objective: str, task: str) -> list[list[dict]]:
    """The plain arm's fine-tuning cells on ``task``: this script's own (same-setting reruns), pretrain_grid.py's."""
    return [[json.loads(p.read_text()) for p in sorted((r / "finetune" / task).glob(f"{objective}_seed*.json"))]
            for r in (RESULTS, pg.RESULTS)]


def plain_cells(objective: str, task: str, like: set | None = None) -> tuple[list[dict], bool]:
    """The plain arm RadReg is paired with on ``task``, and whether it is this script's own: its own cells when it
    ran them (because pretrain_grid.py's ran under another setting than the RadReg arm), else pretrain_grid.py's.
    ``like``: the settings of the arm to pair with; the first of the two whose cells ran under them wins."""
    sources = plain_sources(objective, task)
    match = next((i for i, cs in enumerate(sources) if cs and {setting(c) for c in cs} == like), None)
    if like is not None and match is not None:
        return sources[match], match == 0
    return sources[0] or sources[1], bool(sources[0])


def _render_objective(objective: str, cells: list[dict]) -> list[str]:
    """One objective's section: its tuning choice, then per task the pair (plain, plain + RadReg)."""
    arm = f"{objective}+radreg"
    path = choice_path(objective)
    if not cells and not path.exists():
        return []
    lines = [f"### {objective} + RadReg", ""]
    if path.exists():
        c = json.loads(path.read_text())
        lines += [f"Choice on the validation split ({c['protocol']}): lambda {c['weight']}, {c['head']} heads "
                  f"(plain {objective} under the same protocol: {100 * c['plain']:.1f}).", "",
                  *_candidates(c, TUNE_TASK)]
    for task in pg.TASKS:
        rc = {c["seed"]: c for c in cells if c["task"] == task}
        if not rc:
            lines += _render_own(objective, task)
            continue
        plain, own = plain_cells(objective, task)
        pc = {c["seed"]: c for c in plain}
        acc = lambda c: c["summary"]["final_dev"]["accuracy"]  # noqa: E731
        d = pg.paired([*rc.values(), *pc.values()], arm, objective)
        lines += [f"#### {task}", "", "| arm | accuracy | seeds |", "| --- | --- | --- |",
                  f"| {objective} | {pg._fmt([acc(c) for c in pc.values()])} | {len(pc)} |",
                  f"| {arm} | {pg._fmt([acc(c) for c in rc.values()])} | {len(rc)} |", "",
                  f"Paired difference ({arm} - {objective}, same seeds): "
                  + (f"{d[0]:+.1f} ± {d[1]:.1f} (n={d[2]})" if d else "-"), ""]
        lines += convergence(list(pc.values()), list(rc.values()), objective)
        plot = _plot(task, list(rc.values()) + list(pc.values()), objective)
        if plot:
            lines += [f"![{task}: fine-tuning curves, {objective} with and without RadReg](img/{plot.name})", ""]
        settings = {setting(c) for c in [*rc.values(), *pc.values()]}
        if len(settings) > 1:
            lines += [f"- **the two arms ran under different settings** ({', '.join(map(str, sorted(settings)))}): "
                      "rerun this script on one machine kind to pair them", ""]
        pretrains = [RESULTS / "pretrain" / f"{arm}-{task}.json", *([RESULTS / "pretrain" / f"{objective}.json"]
                                                                    if own else [])]
        for pre in filter(Path.exists, pretrains):
            p = json.loads(pre.read_text())
            lines += [f"- pretraining: `{p['command']}` ({p['date']}; {p.get('machine', '-')}; validation loss "
                      f"{p['summary']['final_dev']['loss']:.4f})"]
        source = ("run by this script under the RadReg arm's setting (pretrain_grid.py's ran under another)" if own
                  else "pretrain_grid.py's cells")
        lines += [f"- plain arm: {source}"]
        lines += [f"- one cell: `{next(iter(rc.values()))['command']}`",
                  f"- machine: {next(iter(rc.values())).get('machine', '-')}", "",
                  *NOTES.get(f"{objective} {task}", [])]
        lines += _render_own(objective, task)
    return lines


def _candidates(choice: dict, task: str) -> list[str]:
    """A tuning choice's candidates and their accuracy on ``task``'s tuning split, as a table."""
    return ["| head | lambda | " + task + " accuracy |", "| --- | --- | --- |",
            *[f"| {r['head']} | {r['weight']} | {100 * r['accuracy']:.1f} |" for r in choice["candidates"]], ""]


def _render_own(objective: str, task: str) -> list[str]:
    """The tuning-task ablation on ``task``: its choice on the task's own tuning split and, where that differs from
    the reported choice, its arm against the same plain arm."""
    path = choice_path(objective, task)
    if task == TUNE_TASK or not path.exists():
        return []
    c, reported = json.loads(path.read_text()), json.loads(choice_path(objective).read_text())
    lines = [f"Ablation, lambda and head tuned on {task}'s own tuning split (`--stage per-task`; {c['protocol']}): "
             f"lambda {c['weight']}, {c['head']} heads (plain {objective} under the same protocol: "
             f"{100 * c['plain']:.1f}).", "", *_candidates(c, task)]
    if (c["weight"], c["head"]) == (reported["weight"], reported["head"]):
        return lines + [f"The same choice as on {TUNE_TASK}: the pair above is this ablation's too.", ""]
    arm = objective + OWN
    own = [json.loads(p.read_text()) for p in sorted((RESULTS / "finetune" / task).glob(f"{arm}_seed*.json"))]
    if not own:
        return lines
    acc = lambda x: x["summary"]["final_dev"]["accuracy"]  # noqa: E731
    plain = plain_cells(objective, task, like={setting(x) for x in own})[0]  # run under the ablation arm's setting
    d = pg.paired([*own, *plain], arm, objective)
    pre = RESULTS / "pretrain" / f"{arm}-{task}.json"
    return lines + [
        "| arm | accuracy | seeds | paired difference to " + objective + " |", "| --- | --- | --- | --- |",
        f"| {arm} | {pg._fmt([acc(x) for x in own])} | {len(own)} | "
        + (f"{d[0]:+.1f} ± {d[1]:.1f} (n={d[2]})" if d else "-") + " |", "",
        *([f"- pretraining: `{json.loads(pre.read_text())['command']}`"] if pre.exists() else []),
        f"- machine: {own[0].get('machine', '-')}",
        *(["- **the two arms ran under different settings**: rerun on one machine kind to pair them"]
          if {setting(x) for x in own} != {setting(x) for x in plain} else []),
        "", *NOTES.get(f"{objective} {task} own", [])]


def convergence(plain: list[dict], radreg: list[dict], objective: str = "mae") -> list[str]:
    """Mean held-out accuracy of both arms at each evaluation, and the first one where each arm reaches the plain
    arm's final mean accuracy (the paper's faster-convergence claim, at our evaluation grain)."""
    arms = {objective: pg.mean_curve(plain), f"{objective}+radreg": pg.mean_curve(radreg)}
    epochs = sorted(set.intersection(*(set(c) for c in arms.values())))
    if not epochs:
        return []
    target = arms[objective][epochs[-1]]
    reach = {a: next((f"{ep:g}" for ep in epochs if c[ep] >= target), "never") for a, c in arms.items()}
    return ["| fine-tuning epoch | " + " | ".join(f"{ep:g}" for ep in epochs) + f" | reaches plain {objective}'s final |",
            "|" + " --- |" * (len(epochs) + 2),
            *[f"| {a} | " + " | ".join(f"{c[ep]:.1f}" for ep in epochs) + f" | {reach[a]} |" for a, c in arms.items()],
            "", "Mean held-out accuracy (x100) over the seeds at each evaluation.", ""]


def _plot(task: str, cells: list[dict], objective: str = "mae"):
    both = (objective, pg.PRETRAIN[objective][0])
    name = f"radreg_{task}" if objective == "mae" else f"radreg_{objective}_{task}"  # MAE's plots came first
    return pg.plot_curves(name, cells, arms={objective: both, f"{objective}+radreg": both})


def run_objective(objective: str, args) -> None:
    """The tuning, pretraining and fine-tuning stages for one objective (as --stage asks)."""
    if args.stage not in ("all", "tune", "pretrain", "finetune"):
        return
    choice = tune(args, objective)
    if args.stage == "tune":
        return
    encoder, arm = pg.PRETRAIN[objective][0], f"{objective}+radreg"
    missing = [(seed, task) for seed in args.seeds for task in args.tasks
               if not (RESULTS / "finetune" / task / f"{arm}_seed{seed}.json").exists()]
    for task in args.tasks:
        downstream_pool(task, args)  # written once, before runs start in parallel
    # an encoder lost with runs/ is pretrained again here when cells still need it (not by each cell)
    pg._parallel([lambda t=t: radreg_pretrain(t, choice, args, args.stage != "pretrain"
                                              and any(t == m[1] for m in missing), objective) for t in args.tasks])

    def cell(seed: int, task: str) -> None:
        init = RUNS / "pretrain" / f"{arm}-{task}" / "encoder"
        # the plain arm's tuned learning rate: the pair differs only in the pretraining
        pg.run_finetune(task, arm, seed, init, encoder, args, RESULTS, RUNS,
                        extra=("--lr", pg.chosen_lr(task, objective)))
        if pg.JOBS == 1 and not args.smoke:
            pg._write_doc()

    if args.stage != "pretrain":
        pg._parallel([lambda m=m: cell(*m) for m in missing])
        same_setting_plain(objective, args)


def same_setting_plain(objective: str, args) -> None:
    """Where pretrain_grid.py's plain cells ran under another (device, precision) than the RadReg arm's, the plain
    arm again here, with pretrain_grid.py's flags and fine-tuning rate, so that the pair differs only in RadReg."""
    encoder, flags = pg.PRETRAIN[objective]
    for task in args.tasks:
        radreg = [json.loads(p.read_text()) for p in (RESULTS / "finetune" / task).glob(f"{objective}+radreg_seed*")]
        theirs = plain_sources(objective, task)[1]
        if not radreg or not theirs or {setting(c) for c in radreg} == {setting(c) for c in theirs}:
            continue
        init = RUNS / "pretrain" / objective / "encoder"
        todo = [s for s in args.seeds if not (RESULTS / "finetune" / task / f"{objective}_seed{s}.json").exists()]
        pg.run_pretrain(objective, objective, encoder, flags, args, RESULTS, RUNS, need_encoder=bool(todo))
        for seed in todo:
            pg.run_finetune(task, objective, seed, init, encoder, args, RESULTS, RUNS,
                            extra=("--lr", pg.chosen_lr(task, objective)))
            if pg.JOBS == 1 and not args.smoke:
                pg._write_doc()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", pg.DEFAULT_DATA),
                   help="the same images as pretrain_grid.py's runs (relative paths: to the repository root)")
    p.add_argument("--stage", choices=["all", "tune", "pretrain", "finetune", "overhead", "per-task"],
                   default="all", help="per-task: the tuning-task ablation (lambda and head tuned on each task's "
                   "own tuning split; not part of all)")
    p.add_argument("--tasks", nargs="+", choices=list(pg.TASKS), default=list(pg.TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=pg.SEEDS)
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=OBJECTIVES,
                   help="pretraining objectives to pair with RadReg (default: both)")
    p.add_argument("--render", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="every stage but the step-time one in minutes (3-step runs) into runs/radreg_smoke, "
                        "to check the pipeline")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (default 1); each run's output then goes to RUN_FOLDER.log")
    args = p.parse_args()
    pg.JOBS = max(1, args.jobs)
    args.pretrain_extra, args.finetune_extra = [], []
    if args.smoke:
        global RESULTS, RUNS
        RUNS = ROOT / "runs" / "radreg_smoke"
        RESULTS = RUNS / "results"
        pg.PLOTS = RUNS / "img"
        args.pretrain_extra = ["--max-steps", "3", "--batch-size", "32"]
        args.finetune_extra = ["--max-steps", "3"]
        if args.stage == "all":
            args.stage = "finetune"  # the step-time measurement is not a smoke check
    # read here (downstream pool, overhead) and by the subprocesses (cwd ROOT): one absolute path for both
    args.data = str((ROOT / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    if not args.render:
        for objective in args.objectives:
            run_objective(objective, args)
            if args.stage == "per-task":
                per_task(objective, args)
        if args.stage in ("all", "overhead"):
            for objective in args.objectives:
                overhead(args, objective=objective)
    if args.smoke:
        print(render())
        return 0
    pg._write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
