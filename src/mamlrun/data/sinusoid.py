"""Sinusoid regression tasks (MAML paper, section 5.1)."""

from __future__ import annotations

import math

import torch

from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError
from mamlrun.objectives import Regression


class SinusoidTasks:
    """Tasks ``y = A sin(x - phase)``; each task has its own amplitude and phase.

    Support and query points are drawn independently and uniformly from ``x_range``. During
    meta-training the query set has ``query_shots`` points (the paper's code uses K); for
    validation and test the query set is ``eval_query_points`` points, so the reported MSE
    measures the whole curve rather than K noisy points. Splits differ only in their random
    streams: the task distribution is continuous.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks." ICML 2017, section 5.1 (amplitude in [0.1, 5.0], phase in [0, pi],
        x in [-5, 5], MSE loss).
    """

    objective = Regression()
    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        shots: int,
        query_shots: int,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        eval_query_points: int = 100,
        name: str = "sinusoid",
        device: str | torch.device = "cpu",
    ) -> None:
        if shots < 1 or query_shots < 1 or eval_query_points < 1:
            raise MamlrunError("sinusoid: shots, query_shots and eval_query_points must be at least 1")
        self.name = name
        self.shots, self.query_shots, self.eval_query_points = shots, query_shots, eval_query_points
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.device, self.dtype = torch.device(device), torch.float32

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> SinusoidTasks:
        self.device, self.dtype = torch.device(device), dtype
        return self

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator):
        lo, hi = bounds
        return torch.rand(shape, generator=gen, device=self.device, dtype=self.dtype) * (hi - lo) + lo

    def sample_functions(self, num_tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases, each ``[num_tasks, 1, 1]``."""
        amp = self._uniform((num_tasks, 1, 1), self.amplitude, generator)
        phase = self._uniform((num_tasks, 1, 1), self.phase, generator)
        return amp, phase

    def sample(self, num_tasks: int, split: str, generator: torch.Generator) -> TaskBatch:
        amp, phase = self.sample_functions(num_tasks, generator)
        query = self.query_shots if split == "train" else self.eval_query_points
        xs = self._uniform((num_tasks, self.shots, 1), self.x_range, generator)
        xq = self._uniform((num_tasks, query, 1), self.x_range, generator)
        return TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))
