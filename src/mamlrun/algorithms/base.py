"""The :class:`Algorithm` hooks: what distinguishes one MAML-family algorithm from another.

A learner (:class:`~mamlrun.learner.MetaLearner` for supervised tasks,
:class:`~mamlrun.rl.MetaRL` for reinforcement learning) owns the network and runs the inner loop
(:func:`~mamlrun.algorithms.inner.inner_loop`); it asks its algorithm

- which parameters adapt (:meth:`Algorithm.adapts`),
- the step size of every step and parameter (:meth:`Algorithm.step_size`),
- the parameters a step's forward pass uses (:meth:`Algorithm.step_params`: per-step batch norm),
- how the query losses after each step are weighted (:meth:`Algorithm.step_weights`),
- first or second order, which may depend on the iteration (:meth:`Algorithm.use_first_order`,
  told the iteration by :meth:`Algorithm.start_iteration`),

and, for algorithms whose meta-objective is not "query loss after adaptation" (Reptile, the
pretraining baseline), the meta-loss itself (:meth:`Algorithm.meta_loss` / :meth:`Algorithm.meta_gradient`).
An algorithm is an ``nn.Module`` so that its own meta-parameters (learned step sizes, per-step
batch-norm parameters) are trained, saved and moved with the network. Adding an algorithm is one
file here and one yaml in ``conf/algorithm/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mamlrun.algorithms.inner import Params

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner
    from mamlrun.objectives import Objective


class Algorithm(nn.Module):
    """MAML's hooks; every method is a default that an algorithm may override.

    Args:
        inner_lr: step size alpha of the inner SGD updates.
        inner_steps: inner updates during meta-training.
        test_inner_steps: inner updates at validation/test time (metrics are kept after every one).
        first_order: drop the second-order term of the meta-gradient.
        meta_train: ``False`` evaluates the initialisation as it is (the paper's random baseline).
    """

    # Whether the meta-RL learner can run it (its meta-objective is the query loss after adaptation
    # with scalar step sizes).
    rl_form: ClassVar[bool] = True
    # A strategy the algorithm needs whatever ``hardware.strategy`` says (``None``: any).
    strategy: ClassVar[str | None] = None
    # Whether evaluation scores the predictive distribution of several adapted models per task
    # (:meth:`predictions`; ensembles and posteriors) rather than one adapted model.
    predictive: ClassVar[bool] = False

    def __init__(
        self,
        inner_lr: float,
        inner_steps: int,
        test_inner_steps: int,
        first_order: bool = False,
        meta_train: bool = True,
    ) -> None:
        super().__init__()
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.test_inner_steps = int(test_inner_steps)
        self.first_order = bool(first_order)
        self.meta_train = bool(meta_train)
        self.iteration = 0

    # -- set-up and the trainer's hook ------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Create meta-parameters that depend on the network (called once by the learner)."""

    def start_iteration(self, iteration: int) -> None:
        """Called by the trainer before every meta-iteration (0-based)."""
        self.iteration = int(iteration)

    # -- the inner loop's hooks -------------------------------------------------------------
    @property
    def train_inner_steps(self) -> int:
        """Inner steps of the meta-training objective."""
        return self.inner_steps

    def adapts(self, names: list[str]) -> list[str] | None:
        """The parameters that adapt in the inner loop (``None``: all)."""
        return None

    def step_size(self, step: int, name: str) -> torch.Tensor | float:
        """The step size of inner step ``step`` for parameter ``name``."""
        return self.inner_lr

    def step_params(self, params: Params, step: int) -> Params:
        """The parameters the forward pass at inner step ``step`` uses (after ``step`` updates)."""
        return params

    def step_weights(self) -> torch.Tensor | None:
        """Weights of the query losses after steps ``1..inner_steps`` (``None``: the last step's alone)."""
        return None

    def use_first_order(self) -> bool:
        """Whether this iteration's meta-gradient drops the second-order term."""
        return self.first_order

    # -- the meta-objective -----------------------------------------------------------------
    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        """Per-task statistics (each ``[tasks]``), the first being the loss to minimise.

        MAML: the query loss after the inner steps on the support set, or, with
        :meth:`step_weights`, the weighted query losses after every step.
        """
        steps = self.train_inner_steps
        trajectory = learner.adapt(batch.x_support, batch.y_support, steps, self.use_first_order())
        weights = self.step_weights()
        if weights is None or steps == 0:
            return learner.query_stats(trajectory[-1], steps, batch.x_query, batch.y_query)
        per_step = [learner.query_stats(trajectory[k], k, batch.x_query, batch.y_query) for k in range(1, steps + 1)]
        loss = sum(w * stats[0] for w, stats in zip(weights, per_step))
        return (loss, *per_step[-1][1:])

    def scores_predictive(self, objective: Objective) -> bool:
        """Whether evaluation scores a predictive distribution: this algorithm's several models per
        task, or any algorithm's one model on tasks with an observation-noise model (NLL, coverage)."""
        return self.predictive or objective.scores_predictive

    def eval_stat_names(self, objective: Objective) -> tuple[str, ...]:
        """The names of the statistics :meth:`evaluate` returns."""
        return objective.predictive_names if self.scores_predictive(objective) else objective.stat_names

    def evaluate(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[tuple[torch.Tensor, ...]]:
        """Per-task query statistics after 0..steps inner updates on the support set (first order).

        Where :meth:`scores_predictive`, the statistics are those of the predictive distribution
        of the adapted models (:meth:`~mamlrun.objectives.Objective.predictive_stats` of
        :meth:`predictions`).
        """
        objective = learner.objective
        if self.scores_predictive(objective):
            return [objective.predictive_stats(o, batch.y_query) for o in self.predictions(learner, batch, steps)]
        trajectory = learner.adapt(batch.x_support, batch.y_support, steps, first_order=True)
        return [learner.query_stats(p, k, batch.x_query, batch.y_query) for k, p in enumerate(trajectory)]

    def predictions(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[torch.Tensor]:
        """Query outputs of every model the algorithm adapts per task, after 0..steps inner updates.

        Each entry is ``[tasks, samples, n, *out]``: one sample for the point estimates (MAML and
        the algorithms built on its loop); several for the ensembles and posteriors (EMAML, BMAML,
        PLATIPUS), whose evaluation scores the predictive distribution
        (:meth:`~mamlrun.objectives.Objective.predictive_stats`).
        """
        trajectory = learner.adapt(batch.x_support, batch.y_support, steps, first_order=True)
        return [learner.outputs(p, k, batch.x_query).unsqueeze(1) for k, p in enumerate(trajectory)]

    def meta_gradient(self, learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad``; return detached statistics."""
        return learner.accumulate(lambda chunk: self.meta_loss(learner, chunk), batch)
