"""The paper's pretraining baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import expand

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class Pretrain(Algorithm):
    """Train one network on all tasks jointly; fine-tune it at test time like MAML.

    The training loss is the mean over tasks of the loss on each task's support and query
    examples at ``theta`` itself (no inner update; in meta-RL, TRPO on the task distribution with
    no adaptation). Evaluation is shared with MAML: the same number of SGD steps with the same step
    size on the support set.

    References:
        Finn et al. 2017, section 5.1 ("pretraining on all of the tasks ... and fine-tuning at
        test time"), Figure 2 and Figure 3; section 5.3 (the pretrained policy).
    """

    @property
    def train_inner_steps(self) -> int:
        return 0

    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        return learner.query_stats(expand(learner.meta_params(), batch.num_tasks), 0, x, y)
