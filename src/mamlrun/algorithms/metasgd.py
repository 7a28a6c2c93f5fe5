"""Meta-SGD: MAML with a learned step size for every coordinate of every parameter."""

from __future__ import annotations

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm


class MetaSGD(Algorithm):
    """Inner update ``theta' = theta - alpha * grad L`` with ``alpha`` a learned tensor per parameter.

    ``alpha`` starts at ``inner_lr`` everywhere and is meta-learned jointly with ``theta`` by the
    outer optimizer (it gets its gradient through the inner update); its sign is free, so it also
    learns the update direction.

    References:
        Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning."
        arXiv 1707.09835, 2017, equation (1).
    """

    rl_form = False  # per-coordinate rates: the meta-RL learner's KL Hessian assumes scalar ones

    def setup(self, model: nn.Module) -> None:
        self.step_sizes = nn.ParameterDict(
            {key(n): nn.Parameter(torch.full_like(p, self.inner_lr)) for n, p in model.named_parameters()}
        )

    def step_size(self, step: int, name: str) -> torch.Tensor:
        return self.step_sizes[key(name)]


def key(name: str) -> str:
    """A parameter's name as a ``ParameterDict`` key (which may not contain dots)."""
    return name.replace(".", "__")
