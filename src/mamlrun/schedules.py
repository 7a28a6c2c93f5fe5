"""Meta learning-rate schedules that torch has no ready form of (the ``schedule`` config group)."""

from __future__ import annotations

import torch


class ExponentialDecay(torch.optim.lr_scheduler.ExponentialLR):
    """The learning rate times ``factor`` every ``iterations / times`` meta-iterations, continuously.

    After ``k`` meta-iterations the rate is ``lr * factor ** (k * times / iterations)``: ``times``
    decays by ``factor`` over a run of ``iterations``. Saved in checkpoints like every torch scheduler.

    References:
        Kim, Yoon et al. "Bayesian Model-Agnostic Meta-Learning." NeurIPS 2018; the authors' code
        decays the meta learning rate by 0.98 every 1 % of the run.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float, times: float, iterations: int) -> None:
        super().__init__(optimizer, gamma=float(factor) ** (float(times) / max(1, int(iterations))))
