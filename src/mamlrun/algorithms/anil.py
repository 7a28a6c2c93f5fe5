"""ANIL: almost no inner loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import batched_gradients, expand, inner_loop
from mamlrun.errors import MamlrunError
from mamlrun.models.batched import layer_forward, linear_head

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class ANIL(Algorithm):
    """MAML whose inner loop adapts only the network's head; the body is meta-learned only.

    The body gets no inner-loop update, and its meta-gradient flows through the head's
    adaptation (the head's inner gradient depends on the body's features), exactly to second
    order unless ``first_order``.

    With the ``batched`` strategy and a linear head at the end of the network
    (:func:`~mamlrun.models.batched.linear_head`: the conv nets, the MLPs), the meta-objective
    runs the body once on the support and once on the query images and adapts the head on those
    features: every inner step costs a linear layer, and the meta-gradient is one backward pass
    through the body (the same value as MAML's computation with the body's update masked out,
    which the other strategies run).

    Args:
        head: the module whose parameters adapt (``None``: the module holding the network's last
            parameter, e.g. ``head`` of the conv nets, the final ``Linear`` of an MLP).
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm`.

    References:
        Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
        Effectiveness of MAML." ICLR 2020, section 4 (ANIL).
    """

    rl_form = False  # the meta-RL learner's KL Hessian adapts every parameter

    def __init__(self, *args, head: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = head
        self.head_names: list[str] = []
        self.body = None
        self.head_module: nn.Module | None = None
        self.prefix = ""

    def setup(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        head = self.head if self.head is not None else names[-1].rpartition(".")[0]
        self.head_names = [n for n in names if n.startswith(f"{head}.")]
        if not self.head_names:
            raise MamlrunError(f"algorithm.head={head!r} names no module with parameters in {type(model).__name__}")
        self.body = linear_head(model, head)
        self.head_module = model.get_submodule(head) if self.body is not None else None
        self.prefix = f"{head}."

    def adapts(self, names: list[str]) -> list[str]:
        return self.head_names

    def fast(self, learner: MetaLearner) -> bool:
        """Whether the head adapts on the body's features (the ``batched`` strategy, a linear head)."""
        return self.body is not None and learner.chosen_strategy == "batched" and self.step_weights() is None

    def head_trajectory(
        self, learner: MetaLearner, batch: TaskBatch, steps: int, first_order: bool, every: bool = True
    ) -> list[tuple[torch.Tensor, ...]]:
        """Query statistics after 0..steps head updates (``every=False``: the last only) on the body's features."""
        meta = expand(learner.meta_params(), batch.num_tasks)
        support, query = self.body(meta, batch.x_support), self.body(meta, batch.x_query)
        objective = learner.objective
        gradients = batched_gradients(
            lambda p, step: objective.task_losses(self.head_forward(p, support), batch.y_support)
        )
        heads = {n: meta[n] for n in self.head_names}
        trajectory = inner_loop(heads, gradients, steps, self.step_size, None, first_order)
        trajectory = trajectory if every else trajectory[-1:]
        return [objective.task_stats(self.head_forward(p, query), batch.y_query) for p in trajectory]

    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        """The query statistics after adapting the head on the body's features (see the class)."""
        if not self.fast(learner):
            return super().meta_loss(learner, batch)
        return self.head_trajectory(learner, batch, self.train_inner_steps, self.use_first_order(), every=False)[-1]

    def evaluate(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[tuple[torch.Tensor, ...]]:
        if not self.fast(learner) or self.scores_predictive(learner.objective):
            return super().evaluate(learner, batch, steps)
        return self.head_trajectory(learner, batch, steps, first_order=True)

    def head_forward(self, params: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        """Every task's head outputs on its features ``[tasks, n, features]``."""
        return layer_forward(self.head_module, params, features, self.prefix)
