"""The one training loop, in two layers: :func:`fit` trains a :class:`Job` in process and writes no files;
:func:`run` adds the output folder (config, metrics log, best model, resume checkpoints, plots, summary)."""

from .job import Job
from .loop import Fit, Hooks, fit
from .run import begin, run
from .state import TrainState, adamw

__all__ = ["Fit", "Hooks", "Job", "TrainState", "adamw", "begin", "fit", "run"]
