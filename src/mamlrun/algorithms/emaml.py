"""EMAML: an ensemble of MAML particles, each with its own initialisation."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import Gradients, Params, inner_loop
from mamlrun.algorithms.metasgd import key
from mamlrun.errors import MamlrunError

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class EMAML(Algorithm):
    """``particles`` MAML models per task; the ensemble's averaged prediction is the answer.

    Particle 0 is the network's own initialisation, the others independent initialisations of the
    same network (meta-parameters of the algorithm). Every particle adapts to a task by MAML's
    inner loop on its own, and is meta-trained by its own MAML objective: the meta-gradient each
    particle receives is exactly the meta-gradient of a MAML run from that particle (the reported
    ``loss`` is the mean over particles). Evaluation scores the ensemble: the averaged class
    probabilities, or for regression the Gaussian of the particles' mean and spread
    (:meth:`~mamlrun.objectives.Objective.predictive_stats`).

    The particles of a meta-batch run as ``tasks x particles`` independent tasks of the learner's
    strategy (task-major: particle ``m`` of task ``t`` is row ``t * particles + m``), so an
    ensemble costs what a meta-batch that many times larger costs.

    Args:
        particles: the ensemble size M (1: MAML).
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm`.

    References:
        Kim, Yoon, Dia, Kim, Bengio, Ahn. "Bayesian Model-Agnostic Meta-Learning." NeurIPS 2018,
        section 4 (EMAML, the ensemble baseline of BMAML).
    """

    rl_form = False
    predictive = True

    def __init__(self, *args, particles: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if int(particles) < 1:
            raise MamlrunError(f"algorithm.particles must be at least 1, not {particles}")
        self.particles = int(particles)

    def setup(self, model: nn.Module) -> None:
        others = [reinitialised(model) for _ in range(self.particles - 1)]
        self.other_particles = nn.ParameterDict(
            {
                key(n): nn.Parameter(torch.stack([dict(o.named_parameters())[n].detach() for o in others]))
                for n, _ in model.named_parameters()
            }
            if others
            else {}
        )

    # -- the particles as tasks of the learner --------------------------------------------------
    def initial(self, learner: MetaLearner, tasks: int) -> Params:
        """Every task's copy of every particle: ``[tasks * particles, *shape]`` (task-major)."""
        stacked = {
            n: torch.cat([p.unsqueeze(0), self.other_particles[key(n)]]) if self.particles > 1 else p.unsqueeze(0)
            for n, p in learner.meta_params().items()
        }
        return {n: v.unsqueeze(0).expand(tasks, *v.shape).flatten(0, 1) for n, v in stacked.items()}

    def repeat(self, t: torch.Tensor) -> torch.Tensor:
        """A per-task tensor for every particle of its task (``[tasks, ...] -> [tasks * particles, ...]``)."""
        return t.repeat_interleave(self.particles, dim=0)

    def per_task(self, t: torch.Tensor) -> torch.Tensor:
        """``[tasks * particles, ...] -> [tasks, particles, ...]``."""
        return t.view(-1, self.particles, *t.shape[1:])

    def gradients(self, learner: MetaLearner, x: torch.Tensor, y: torch.Tensor) -> Gradients:
        """The inner loop's per-particle update directions on ``x``, ``y`` (already repeated): MAML's gradients."""
        return learner.gradients(x, y)

    def particle_trajectory(
        self, learner: MetaLearner, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool
    ) -> list[Params]:
        """Every particle of every task before and after each of ``steps`` inner updates on ``x``, ``y``."""
        xs, ys = self.repeat(x), self.repeat(y)
        params = self.initial(learner, x.shape[0])
        return inner_loop(params, self.gradients(learner, xs, ys), steps, self.step_size, None, first_order)

    # -- the meta-objective and evaluation ------------------------------------------------------
    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        steps = self.train_inner_steps
        final = self.particle_trajectory(learner, batch.x_support, batch.y_support, steps, self.use_first_order())[-1]
        stats = learner.query_stats(final, steps, self.repeat(batch.x_query), self.repeat(batch.y_query))
        return tuple(self.per_task(s).mean(1) for s in stats)

    def meta_gradient(self, learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
        stats = super().meta_gradient(learner, batch)
        # The loss is the particles' mean: scale so that each gets its own MAML meta-gradient (the
        # trainer zeroes the gradients before every meta-batch).
        for p in learner.parameters():
            if p.grad is not None and self.particles > 1:
                p.grad.mul_(self.particles)
        return stats

    def predictions(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[torch.Tensor]:
        trajectory = self.particle_trajectory(learner, batch.x_support, batch.y_support, steps, first_order=True)
        xq = self.repeat(batch.x_query)
        return [self.per_task(learner.outputs(p, k, xq)) for k, p in enumerate(trajectory)]


def reinitialised(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with freshly initialised parameters (each layer's ``reset_parameters``)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if module is not clone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return clone
