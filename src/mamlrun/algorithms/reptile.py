"""Reptile."""

from __future__ import annotations

import torch

from mamlrun.algorithms.base import MetaLearner
from mamlrun.data.tasks import TaskBatch


class Reptile(MetaLearner):
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

    def task_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        meta = self.detached_meta()
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        phi = self.adapt(meta, x, y, self.inner_steps, first_order=True)
        for name, theta in self.model.named_parameters():
            g = theta.detach() - phi[name].detach().mean(0)
            theta.grad = g if theta.grad is None else theta.grad + g
        stats = self.query_metrics({k: v.detach() for k, v in phi.items()}, x, y)
        return {n: s.mean() for n, s in zip(self.stat_names, stats)}
