"""What a task family is scored by: its loss, its statistics and the metric that selects models.

A task distribution carries its objective (``sampler.objective``); learners, the trainer and the
evaluation read everything from it, so no code switches on the kind of task.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F


class Objective:
    """The loss and statistics of a family of tasks.

    Attributes:
        stat_names: the per-task statistics a learner reports, the loss first.
        eval_names: how evaluation names a statistic where it differs (regression's ``loss`` is
            reported as ``mse``).
        metric: the evaluation metric that selects the best checkpoint and that sweepers optimise.
        higher_is_better: the direction of ``metric``.
    """

    stat_names: ClassVar[tuple[str, ...]] = ("loss",)
    eval_names: ClassVar[dict[str, str]] = {}
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False

    def task_stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task statistics of batched outputs ``[tasks, n, ...]``: each a ``[tasks]`` tensor."""
        return (self.task_losses(out, y),)

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task mean losses of batched outputs: ``[tasks]``."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one task's outputs ``[n, ...]`` (works under ``vmap``)."""
        return self.task_losses(out.unsqueeze(0), y.unsqueeze(0))[0]

    def stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The statistics of one task's outputs (works under ``vmap``)."""
        return tuple(s[0] for s in self.task_stats(out.unsqueeze(0), y.unsqueeze(0)))


class Regression(Objective):
    """Mean squared error; evaluation reports it as ``mse`` (lower is better)."""

    eval_names: ClassVar[dict[str, str]] = {"loss": "mse"}
    metric = "mse"

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out - y) ** 2).flatten(1).mean(1)


class Classification(Objective):
    """Cross-entropy of class scores ``[tasks, n, classes]`` against labels ``[tasks, n]``, and accuracy."""

    stat_names = ("loss", "acc")
    metric = "acc"
    higher_is_better = True

    def task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def task_stats(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.task_losses(out, y), (out.argmax(-1) == y).to(out.dtype).mean(1)


class Return(Objective):
    """Reinforcement learning: the average undiscounted return of a task's trajectories (higher is better)."""

    stat_names = ("return",)
    metric = "return"
    higher_is_better = True
