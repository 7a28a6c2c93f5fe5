"""Reptile."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mamlrun.algorithms.base import Algorithm

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class Reptile(Algorithm):
    """Move the initialisation towards the parameters each task reaches after SGD.

    Per task, ``inner_steps`` SGD steps on all of the task's examples (support and query: Reptile
    needs no split) give ``phi_i``. The meta-gradient written into ``.grad`` is
    ``theta - mean_i phi_i``, so an outer SGD step of size ``eps`` (``optimizer=sgd
    optimizer.lr=eps``) is exactly ``theta + eps * mean_i (phi_i - theta)``; with Adam it is the
    "Reptile gradient with Adam" variant of the paper.

    References:
        Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms." arXiv 1803.02999,
        2018, Algorithm 2 (batched version).
    """

    rl_form = False

    def meta_gradient(self, learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        with torch.no_grad():
            phi = learner.adapt(x, y, self.inner_steps, first_order=True)[-1]
            for name, theta in learner.model.named_parameters():
                g = theta - phi[name].mean(0)
                theta.grad = g if theta.grad is None else theta.grad + g
            stats = learner.query_stats(phi, self.inner_steps, x, y)
        return {n: s.mean() for n, s in zip(learner.stat_names, stats)}
