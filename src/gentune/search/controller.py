"""Policies over a sequence of discrete choices (one per layer), and the REINFORCE update of Zoph and Le ("Neural
Architecture Search with Reinforcement Learning", ICLR 2017) that Yoo et al. (AAAI 2018) use to choose the number
of neuron groups per layer.

:class:`Controller`: an LSTM that emits, position by position, a choice from ``num_choices``; its input at a
position is the embedding of the previous choice (a start token first) plus a learned position embedding; one
linear layer maps the hidden state to the choice logits. :func:`reinforce_loss` is
``-(R - b) * sum_t log pi(a_t) - entropy_weight * H``, with ``b`` a moving average of the rewards
(:class:`MovingBaseline`). :class:`RandomPolicy` draws every choice uniformly: the baseline search with the same
episode budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Sample:
    """One draw of a policy: the choices, and (for a controller) their summed log-probability and entropy."""

    actions: list[int]
    log_prob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class Controller(nn.Module):
    """An LSTM policy over ``length`` positions with ``num_choices`` choices each.

    Args:
        length: positions (layers) per sample.
        num_choices: choices per position.
        hidden: LSTM width.
        temperature: logits are divided by it (above 1: a flatter policy early on).
    """

    def __init__(self, length: int, num_choices: int, hidden: int = 32, temperature: float = 1.0):
        super().__init__()
        if length < 1 or num_choices < 2:
            raise ValueError(f"a controller needs length >= 1 and num_choices >= 2, got {length}, {num_choices}")
        self.length, self.num_choices, self.temperature = length, num_choices, temperature
        self.choice_embed = nn.Embedding(num_choices + 1, hidden)  # the last row: the start token
        self.position_embed = nn.Embedding(length, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, num_choices)
        nn.init.zeros_(self.out.weight)  # the first policy is uniform
        nn.init.zeros_(self.out.bias)

    def _steps(self, actions: list[int] | None, generator: torch.Generator | None):
        h = c = torch.zeros(1, self.cell.hidden_size)
        prev = torch.tensor([self.num_choices])
        taken, log_probs, entropies = [], [], []
        for t in range(self.length):
            h, c = self.cell(self.choice_embed(prev) + self.position_embed(torch.tensor([t])), (h, c))
            dist = torch.distributions.Categorical(logits=self.out(h)[0] / self.temperature)
            if actions is None:
                a = int(torch.multinomial(dist.probs, 1, generator=generator))
            else:
                a = int(actions[t])
            taken.append(a)
            log_probs.append(dist.log_prob(torch.tensor(a)))
            entropies.append(dist.entropy())
            prev = torch.tensor([a])
        return Sample(taken, torch.stack(log_probs).sum(), torch.stack(entropies).sum())

    def sample(self, generator: torch.Generator | None = None) -> Sample:
        """Draw choices (from ``generator``), with their log-probability and the policy's entropy on the way."""
        return self._steps(None, generator)

    def evaluate(self, actions: list[int]) -> Sample:
        """The log-probability and entropy of given choices (what an update needs after a resumed episode)."""
        return self._steps(actions, None)

    def probabilities(self) -> torch.Tensor:
        """(length, num_choices): the policy at each position along its most likely path (greedy)."""
        with torch.no_grad():
            h = c = torch.zeros(1, self.cell.hidden_size)
            prev, rows = torch.tensor([self.num_choices]), []
            for t in range(self.length):
                h, c = self.cell(self.choice_embed(prev) + self.position_embed(torch.tensor([t])), (h, c))
                p = torch.softmax(self.out(h)[0] / self.temperature, -1)
                rows.append(p)
                prev = p.argmax().view(1)
            return torch.stack(rows)

    def greedy(self) -> list[int]:
        """The most likely choice at each position, following the greedy path."""
        return self.probabilities().argmax(-1).tolist()


class RandomPolicy:
    """Every choice uniform and independent: the random-search baseline."""

    def __init__(self, length: int, num_choices: int):
        self.length, self.num_choices = length, num_choices

    def sample(self, generator: torch.Generator | None = None) -> Sample:
        return Sample(torch.randint(self.num_choices, (self.length,), generator=generator).tolist())


class MovingBaseline:
    """b <- decay * b + (1 - decay) * R, starting at the first reward."""

    def __init__(self, decay: float = 0.8):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"baseline decay must be in [0, 1), got {decay}")
        self.decay, self.value = decay, None

    def update(self, reward: float) -> float:
        """Fold ``reward`` in; returns the baseline *before* it (what the advantage is measured against)."""
        before = reward if self.value is None else self.value
        self.value = reward if self.value is None else self.decay * self.value + (1 - self.decay) * reward
        return before


def reinforce_loss(sample: Sample, reward: float, baseline: float, entropy_weight: float = 0.0) -> torch.Tensor:
    """REINFORCE with a baseline: ``-(reward - baseline) * log pi(actions) - entropy_weight * H(pi)``."""
    return -(reward - baseline) * sample.log_prob - entropy_weight * sample.entropy


__all__ = ["Controller", "MovingBaseline", "RandomPolicy", "Sample", "reinforce_loss"]
