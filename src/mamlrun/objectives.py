"""What a task family is scored by: its loss, its statistics and the metric that selects models.

A task distribution carries its objective (``sampler.objective``); learners, the trainer and the
evaluation read everything from it, so no code switches on the kind of task.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

# z of the central 95 % interval of a Gaussian, and the smallest predictive variance scored.
Z95 = 1.959963984540054
MIN_VARIANCE = 1e-6


class Objective:
    """The loss and statistics of a family of tasks.

    Attributes:
        stat_names: the per-task statistics a learner reports, the loss first.
        eval_names: how evaluation names a statistic where it differs (regression's ``loss`` is
            reported as ``mse``).
        metric: the evaluation metric that selects the best checkpoint and that sweepers optimise.
        higher_is_better: the direction of ``metric``.
        predictive_names: the statistics of :meth:`predictive_stats` (several models per task).
        scores_predictive: whether every algorithm is scored by :meth:`predictive_stats`, a point
            estimate as one sample (tasks with an observation-noise model).
    """

    stat_names: ClassVar[tuple[str, ...]] = ("loss",)
    eval_names: ClassVar[dict[str, str]] = {}
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    predictive_names: ClassVar[tuple[str, ...]] = ("loss",)
    scores_predictive: bool = False

    def task_stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task statistics of batched outputs ``[tasks, n, ...]``: each a ``[tasks]`` tensor."""
        return (self.task_losses(out, y),)

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task mean losses of batched outputs: ``[tasks]``."""
        raise NotImplementedError

    def predictive_stats(self, samples: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task statistics of the predictive distribution of several models per task.

        ``samples``: ``[tasks, samples, n, ...]``, the outputs of every adapted model (ensemble
        particles, posterior samples; one for a point estimate). Named by :attr:`predictive_names`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no predictive distribution")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one task's outputs ``[n, ...]`` (works under ``vmap``)."""
        return self.task_losses(out.unsqueeze(0), y.unsqueeze(0))[0]

    def stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The statistics of one task's outputs (works under ``vmap``)."""
        return tuple(s[0] for s in self.task_stats(out.unsqueeze(0), y.unsqueeze(0)))


class Regression(Objective):
    """Mean squared error; evaluation reports it as ``mse`` (lower is better).

    Several models per task (:meth:`predictive_stats`) make a Gaussian predictive distribution:
    the mean of the samples, and their variance plus the observation noise ``noise_std ** 2``.
    It is scored by the MSE of its mean, its negative log-likelihood per point (``nll``) and the
    fraction of true values inside its central 95 % interval (``coverage``).

    Args:
        noise_std: the standard deviation of the targets' observation noise (0: noise-free
            targets; the predictive variance is then floored at :data:`MIN_VARIANCE`).
    """

    eval_names: ClassVar[dict[str, str]] = {"loss": "mse"}
    metric = "mse"
    predictive_names = ("loss", "nll", "coverage")

    def __init__(self, noise_std: float = 0.0) -> None:
        self.noise_std = float(noise_std)
        # Tasks with an observation-noise model score every algorithm's predictive distribution.
        self.scores_predictive = self.noise_std > 0

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out - y) ** 2).flatten(1).mean(1)

    def predictive_stats(self, samples: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean = samples.mean(1)
        var = (samples.var(1, unbiased=False) + self.noise_std**2).clamp_min(MIN_VARIANCE)
        err2 = (mean - y) ** 2
        nll = 0.5 * (torch.log(2 * math.pi * var) + err2 / var)
        covered = (err2 <= Z95**2 * var).to(samples.dtype)
        return err2.flatten(1).mean(1), nll.flatten(1).mean(1), covered.flatten(1).mean(1)


class Classification(Objective):
    """Cross-entropy of class scores ``[tasks, n, classes]`` against labels ``[tasks, n]``, and accuracy."""

    stat_names = ("loss", "acc")
    metric = "acc"
    higher_is_better = True

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def task_stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.task_losses(out, y), (out.argmax(-1) == y).to(out.dtype).mean(1)

    def predictive_stats(self, samples: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The cross-entropy (negative log-likelihood) and accuracy of the averaged class probabilities."""
        return self.task_stats(ensemble_log_probs(samples), y)

    predictive_names = stat_names


class Return(Objective):
    """Reinforcement learning: the average undiscounted return of a task's trajectories (higher is better)."""

    stat_names = ("return",)
    metric = "return"
    higher_is_better = True


def ensemble_log_probs(samples: torch.Tensor) -> torch.Tensor:
    """Log of the class probabilities averaged over models: ``[tasks, samples, n, classes] -> [tasks, n, classes]``."""
    return torch.logsumexp(F.log_softmax(samples, dim=-1), dim=1) - math.log(samples.shape[1])
