"""Searches over how a run is regularized, each candidate judged by a fine-tuning run in process: the neuron-grouping
search of Yoo et al. (AAAI 2018) with an LSTM controller trained by REINFORCE, or random search with the same budget
(:mod:`.grouping`; the policies: :mod:`.controller`)."""

from .controller import Controller, MovingBaseline, RandomPolicy, Sample, reinforce_loss
from .grouping import SPACES, STRATEGIES, SearchConfig, search

__all__ = ["Controller", "MovingBaseline", "RandomPolicy", "SPACES", "STRATEGIES", "Sample", "SearchConfig",
           "reinforce_loss", "search"]
