"""The task batch that flows from samplers to meta-learners, and the sampler protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from mamlrun.objectives import Objective


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of tasks, every tensor with the task index as its leading dimension.

    Attributes:
        x_support: ``[tasks, support_size, *input_shape]``.
        y_support: ``[tasks, support_size]`` (class indices) or ``[tasks, support_size, 1]`` (targets).
        x_query: ``[tasks, query_size, *input_shape]``.
        y_query: like ``y_support`` for the query set.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def chunks(self, size: int | None) -> list[TaskBatch]:
        """Split along the task dimension into batches of at most ``size`` tasks."""
        if not size or size >= self.num_tasks:
            return [self]
        parts = [t.split(size) for t in (self.x_support, self.y_support, self.x_query, self.y_query)]
        return [TaskBatch(*p) for p in zip(*parts)]

    def part(self, tasks: slice) -> TaskBatch:
        """The tasks ``tasks`` of the batch (a view)."""
        return TaskBatch(self.x_support[tasks], self.y_support[tasks], self.x_query[tasks], self.y_query[tasks])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TaskBatch:
        """Cast inputs (and regression targets) to ``dtype``; class labels stay integer."""

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return TaskBatch(*(cast(t) for t in (self.x_support, self.y_support, self.x_query, self.y_query)))


class TaskSampler(Protocol):
    """Samples whole meta-batches of tasks as tensors on ``device``.

    ``objective`` (:mod:`mamlrun.objectives`) is what tasks are scored by: the loss, the statistics
    and the metric that selects the best checkpoint.
    """

    name: str
    objective: Objective
    input_shape: tuple[int, ...]
    output_dim: int

    def sample(self, num_tasks: int, split: str, generator: torch.Generator) -> TaskBatch: ...

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> TaskSampler: ...
