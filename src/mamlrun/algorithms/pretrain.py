"""The paper's pretraining baseline."""

from __future__ import annotations

import torch

from mamlrun.algorithms.base import MetaLearner
from mamlrun.data.tasks import TaskBatch


class Pretrain(MetaLearner):
    """Train one network on all tasks jointly; fine-tune it at test time like MAML.

    The training loss is the mean over tasks of the loss on each task's support and query
    examples at ``theta`` itself (no inner update). Evaluation is shared with MAML: the same
    number of SGD steps with the same step size on the support set.

    References:
        Finn et al. 2017, section 5.1 ("pretraining on all of the tasks ... and fine-tuning at
        test time"), Figure 2 and Figure 3.
    """

    def task_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())

        def objective(chunk: TaskBatch) -> tuple[torch.Tensor, ...]:
            x = torch.cat([chunk.x_support, chunk.x_query], dim=1)
            y = torch.cat([chunk.y_support, chunk.y_query], dim=1)
            return self.query_metrics(self.expand(params, chunk.num_tasks), x, y)

        return self.accumulate(objective, batch)
