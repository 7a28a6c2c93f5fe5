"""Meta-SGD: MAML with a learned step size for every coordinate of every parameter."""

from __future__ import annotations

import torch
from torch import nn

from mamlrun.algorithms.maml import MAML


class MetaSGD(MAML):
    """Inner update ``theta' = theta - alpha * grad L`` with ``alpha`` a learned tensor per parameter.

    ``alpha`` starts at ``inner_lr`` everywhere and is meta-learned jointly with ``theta`` by the
    outer optimizer (it gets its gradient through the inner update); its sign is free, so it also
    learns the update direction.

    References:
        Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning."
        arXiv 1707.09835, 2017, equation (1).
    """

    def __init__(self, model: nn.Module, task_type: str, inner_lr: float, *args, **kwargs) -> None:
        super().__init__(model, task_type, inner_lr, *args, **kwargs)
        self.step_sizes = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(p, self.inner_lr)) for n, p in model.named_parameters()}
        )

    def meta_state(self):
        return {"params": dict(self.model.named_parameters()), "lrs": dict(self.step_sizes.items())}

    def step_size(self, meta, name: str) -> torch.Tensor:
        return meta["lrs"][_key(name)]


def _key(name: str) -> str:
    # ParameterDict keys may not contain dots.
    return name.replace(".", "__")
