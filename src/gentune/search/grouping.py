"""The search over neuron groupings (Yoo et al., AAAI 2018): a policy chooses, layer by layer, the fraction of a
layer's filters that become groups; each episode fine-tunes with that grouping through :func:`gentune.train.fit` (in
process, no files) and is rewarded by accuracy on the run's validation images.

The task is built once: its data, its frozen layers' cached outputs and its model's starting weights serve every
episode (each starts from the same weights, data order and head). The search folder holds ``search.json`` (what
was asked, checked on resume), ``state/`` (the policy, its optimizer, the baseline, the random stream and the trace,
rewritten atomically after each episode: a killed search continues from its last finished episode), ``trace.jsonl``,
``trace.png``, ``best.yaml`` (the best grouping as a ``gentune finetune --config`` recipe) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..config import opt
from ..errors import GentuneError
from ..fs import atomic_dir, dumps_strict, folder_lock, read_json, recover_dir, write_text_atomic
from ..progress import hms
from ..regularizers.base import build_regularizers
from ..regularizers.neuron_grouping import NeuronGrouping, grouped_convs
from ..serial import load_tree, save_tree
from .controller import Controller, MovingBaseline, RandomPolicy, reinforce_loss

SPACES = ("neuron-grouping",)
STRATEGIES = ("controller", "random")
NAME = "neuron-grouping"


@dataclasses.dataclass
class SearchConfig:
    """How to search (the fine-tuning run of each episode is the task config beside it)."""

    space: str = opt(NAME, "what is searched: neuron-grouping (the groups per layer)")
    episodes: int = opt(30, "fine-tuning runs the search may make")
    strategy: str = opt("controller", "controller (an LSTM trained with REINFORCE) | random (uniform choices)")
    choices: list[float] = opt(factory=lambda: [1.0, 0.5, 0.25, 0.125],
                               help="the fractions of a layer's filters that may become its groups (1: no grouping)")
    seed: int = opt(0, "the policy's initialisation and its draws")
    controller_lr: float = opt(0.05, "Adam learning rate of the controller")
    baseline_decay: float = opt(0.8, "decay of the moving-average reward baseline")
    entropy_weight: float = opt(0.01, "entropy bonus of the controller's update")
    hidden: int = opt(32, "the controller's LSTM width")

    def validate(self) -> None:
        checks = [
            (self.space in SPACES, f"space must be one of {', '.join(SPACES)}, got {self.space!r}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}"),
            (len(self.choices) >= 2 and all(0 < c <= 1 for c in self.choices),
             f"choices must be at least two fractions in (0, 1], got {self.choices}"),
            (self.controller_lr > 0 and self.hidden >= 1, "controller_lr and hidden must be positive"),
            (0 <= self.baseline_decay < 1, "baseline_decay must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise GentuneError(f"search: {message}")


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


def _policy(search: SearchConfig, layers: int):
    torch.manual_seed(search.seed)
    if search.strategy == "random":
        return RandomPolicy(layers, len(search.choices)), None
    policy = Controller(layers, len(search.choices), search.hidden)
    return policy, torch.optim.Adam(policy.parameters(), lr=search.controller_lr)


def _grouping_options(cfg) -> dict:
    options = dict((cfg.regularizer_options or {}).get(NAME, {}))
    for key in ("fraction", "groups"):  # what the search chooses
        options.pop(key, None)
    return options


def _recipe(cfg, fractions: list[float], layers: list[str], reward: float, search: SearchConfig) -> str:
    """The best grouping as a ``gentune finetune --config`` recipe: the searched run's keys, with the grouping."""
    import yaml

    keep = {k: v for k, v in _as_dict(cfg).items() if k not in ("out", "overwrite", "report_to")}
    keep["regularizer"] = list(dict.fromkeys([*keep.get("regularizer", []), NAME]))
    options = {**_grouping_options(cfg), "fraction": [float(f) for f in fractions]}
    keep["regularizer_options"] = {**keep.get("regularizer_options", {}), NAME: options}
    head = (f"# the best of {search.episodes} episodes of `gentune search --strategy {search.strategy}`: validation "
            f"accuracy {reward:.4f}\n# layers, in order: {', '.join(layers)}\n# data and seed are the searched "
            "run's; retrain with the reported split and seeds (--set split_seed=... seed=...)\n")
    return head + yaml.safe_dump(keep, sort_keys=False)


def _plot(trace: list[dict], path: Path, title: str) -> None:
    from ..report import integer_steps, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    episodes = [t["episode"] for t in trace]
    rewards = [t["reward"] for t in trace]
    best = [max(rewards[:i + 1]) for i in range(len(rewards))]
    ax.plot(episodes, rewards, "o", ms=4, alpha=0.7, label="reward (validation accuracy)")
    ax.plot(episodes, best, "-", lw=2, label="best so far")
    if any(t.get("baseline") is not None for t in trace):
        ax.plot(episodes, [t.get("baseline") for t in trace], "--", lw=1, label="baseline")
    ax.set_xlabel("episode")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    integer_steps(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Episodes:
    """The task built once; :meth:`reward` fine-tunes from the same start with one grouping."""

    def __init__(self, cfg, build):
        from accelerate.utils import set_seed

        set_seed(cfg.seed)  # as gentune finetune: the head's initialisation
        self.cfg, self.job = cfg, build(cfg)
        if self.job.dev_set is None:
            raise GentuneError("search: the reward is validation accuracy; give validation images (val_size > 0 "
                               "or --dev)")
        self.start = {k: v.detach().clone() for k, v in self.job.model.state_dict().items()}
        options = _grouping_options(cfg)
        self.layers = grouped_convs(self.job.model, options.get("layers", ("*",)))
        if not self.layers:
            raise GentuneError(f"search: no trainable convolution to group (layers={options.get('layers', ['*'])})")
        self.options = options
        self.others = [r for r in cfg.regularizer if r != NAME]

    def reward(self, fractions: list[float]) -> tuple[float, dict, list[int]]:
        from accelerate.utils import set_seed

        from ..train import fit

        self.job.model.load_state_dict(self.start)
        set_seed(self.cfg.seed)  # every episode the same draws (dropout, flips, data order): only the grouping differs
        regs = build_regularizers([{n: self.cfg.regularizer_options.get(n, {})} for n in self.others], unique=True)
        grouping = NeuronGrouping(fraction=fractions, **self.options)
        result = fit(self.job, self.cfg, regularizers=[*regs, grouping])
        metrics = result.final_dev or {}
        if self.job.main_metric not in metrics:
            raise GentuneError(f"search: the run reported no {self.job.main_metric}")
        return float(metrics[self.job.main_metric]), metrics, grouping.layer_groups()


def _check_same(out: Path, asked: dict) -> None:
    file = out / "search.json"
    if file.is_file():
        before = read_json(file, None, "search description")
        if before.get("asked") != asked:
            changed = sorted(k for k in set(before.get("asked", {})) | set(asked)
                             if before.get("asked", {}).get(k) != asked.get(k))
            raise GentuneError(f"{file}: this folder holds a search with other settings ({', '.join(changed[:4])} "
                               "differ); use another --out")


def search(cfg, search_cfg: SearchConfig, build, stream=None) -> dict:
    """Run (or continue) a search into ``cfg.out``; returns its summary.

    Args:
        cfg: the fine-tuning run config of every episode (an image-classification config); ``cfg.out`` is the search
            folder.
        search_cfg: what to search and how.
        build: the task's ``build(cfg) -> Job``.
        stream: where progress lines go (stderr).
    """
    search_cfg.validate()
    stream = stream or sys.stderr
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    asked = json.loads(dumps_strict({"search": dataclasses.asdict(search_cfg), "run": _as_dict(cfg)}))
    asked["run"].pop("out", None)
    with folder_lock(out):
        _check_same(out, asked)
        episodes = _Episodes(cfg, build)
        write_text_atomic(out / "search.json", dumps_strict({"asked": asked, "layers": episodes.layers}, indent=2))
        policy, optimizer = _policy(search_cfg, len(episodes.layers))
        generator = torch.Generator().manual_seed(search_cfg.seed)
        baseline = MovingBaseline(search_cfg.baseline_decay)
        trace: list[dict] = []
        if recover_dir(out / "state") is not None:
            state = load_tree(recover_dir(out / "state"), "search")
            trace = list(state["trace"])
            generator.set_state(state["generator"])
            baseline.value = state["baseline"]
            if optimizer is not None:
                policy.load_state_dict(state["policy"])
                optimizer.load_state_dict(state["optimizer"])
            print(f"search: resuming after episode {len(trace)} of {search_cfg.episodes}", file=stream)
        choices = search_cfg.choices
        for episode in range(len(trace) + 1, search_cfg.episodes + 1):
            t0 = time.perf_counter()
            sample = policy.sample(generator)
            fractions = [float(choices[a]) for a in sample.actions]
            reward, metrics, groups = episodes.reward(fractions)
            before = baseline.update(reward)
            if optimizer is not None:
                optimizer.zero_grad()
                reinforce_loss(sample, reward, before, search_cfg.entropy_weight).backward()
                optimizer.step()
            record = {"episode": episode, "strategy": search_cfg.strategy, "actions": sample.actions,
                      "fractions": fractions, "groups": groups, "reward": reward,
                      "baseline": before if optimizer is not None else None, "metrics": metrics,
                      "seconds": round(time.perf_counter() - t0, 2)}
            trace.append(record)
            tree = {"trace": trace, "generator": generator.get_state(), "baseline": baseline.value}
            if optimizer is not None:
                tree.update(policy=policy.state_dict(), optimizer=optimizer.state_dict())
            with atomic_dir(out / "state") as tmp:
                save_tree(tree, tmp, "search")
            write_text_atomic(out / "trace.jsonl", "".join(dumps_strict(t) + "\n" for t in trace))
            best = max(t["reward"] for t in trace)
            left = (search_cfg.episodes - episode) * sum(t["seconds"] for t in trace) / len(trace)
            print(f"episode {episode}/{search_cfg.episodes}  reward {reward:.4f}  best {best:.4f}  "
                  f"groups {sum(groups)}/{sum(_filters(episodes))}  {record['seconds']:.0f}s  left {hms(left)}",
                  file=stream, flush=True)
        return _finish(out, cfg, search_cfg, episodes, trace, policy)


def _filters(episodes: _Episodes) -> list[int]:
    modules = dict(episodes.job.model.named_modules())
    return [modules[n].out_channels for n in episodes.layers]


def _finish(out: Path, cfg, search_cfg: SearchConfig, episodes: _Episodes, trace: list[dict], policy) -> dict:
    best = max(trace, key=lambda t: (t["reward"], -t["episode"]))  # the earliest of equal rewards
    title = f"{search_cfg.strategy} search over neuron groupings ({len(episodes.layers)} layers)"
    _plot(trace, out / "trace.png", title)
    write_text_atomic(out / "best.yaml", _recipe(cfg, best["fractions"], episodes.layers, best["reward"], search_cfg))
    summary = {"strategy": search_cfg.strategy, "episodes": len(trace), "layers": episodes.layers,
               "filters": _filters(episodes),
               "best": {k: best[k] for k in ("episode", "fractions", "groups", "reward")},
               "rewards": [t["reward"] for t in trace],
               "seconds": round(sum(t["seconds"] for t in trace), 1),
               "recipe": str(out / "best.yaml")}
    if isinstance(policy, Controller):
        greedy = policy.greedy()
        summary["greedy_fractions"] = [float(search_cfg.choices[a]) for a in greedy]
    if not all(math.isfinite(r) for r in summary["rewards"]):
        raise GentuneError("search: a reward was not finite")
    write_text_atomic(out / "summary.json", dumps_strict(summary, indent=2) + "\n")
    return summary


__all__ = ["SPACES", "STRATEGIES", "SearchConfig", "search"]
