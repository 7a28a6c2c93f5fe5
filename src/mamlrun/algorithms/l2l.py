"""The learn2learn backend: the same experiment, meta-gradients computed by learn2learn.

``algorithm=maml_l2l`` / ``fomaml_l2l`` / ``metasgd_l2l`` compute the meta-gradient with
learn2learn's ``clone()`` / ``adapt()`` per task (``l2l.algorithms.MAML`` for MAML and first-order
MAML, ``l2l.algorithms.MetaSGD`` for Meta-SGD): algorithms like any other, whose one changed hook
is :meth:`~mamlrun.algorithms.base.Algorithm.meta_gradient`. Data, models, the training loop, logging and evaluation
stay mamlrun's, so a run differs only in how the meta-gradient is computed; the parity tests show
that both give the same meta-gradients. learn2learn is installed by ``make install-l2l``.

References:
    Arnold, Mahajan, Datta, Bunner, Zarkias. "learn2learn: A Library for Meta-Learning
    Research." arXiv 2008.12284, 2020.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from mamlrun.algorithms.maml import MAML
from mamlrun.algorithms.metasgd import MetaSGD, key
from mamlrun.errors import MamlrunError

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner

INSTALL_HINT = "learn2learn is not installed: run `make install-l2l` (it builds learn2learn 0.2.0 for this Python)"


def import_learn2learn():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import learn2learn
    except ImportError:
        raise MamlrunError(INSTALL_HINT) from None
    return learn2learn


class _Learn2LearnGradient:
    """Mixin: the meta-gradient by learn2learn, one task at a time, as learn2learn's examples do."""

    strategy = "loop"  # evaluation, too, runs task by task
    rl_form = False  # learn2learn's wrappers train supervised tasks here

    @classmethod
    def check_environment(cls) -> None:
        """Raise :class:`MamlrunError` (before any run starts) when learn2learn cannot be imported."""
        import_learn2learn()

    def wrap(self, model: nn.Module):
        raise NotImplementedError

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        # Not registered as a submodule: it wraps the very same network (and step sizes), so
        # checkpoints stay interchangeable with the torch.func engine's.
        object.__setattr__(self, "_l2l", self.wrap(model))

    def meta_gradient(self, learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
        objective = learner.objective
        per_task = []
        for t in range(batch.num_tasks):
            clone = self._l2l.clone()
            for _ in range(self.inner_steps):
                clone.adapt(objective.loss(clone(batch.x_support[t]), batch.y_support[t]))
            stats = objective.stats(clone(batch.x_query[t]), batch.y_query[t])
            (stats[0] / batch.num_tasks).backward()
            per_task.append(torch.stack([s.detach() for s in stats]))
        return dict(zip(objective.stat_names, torch.stack(per_task).mean(0)))


class Learn2LearnMAML(_Learn2LearnGradient, MAML):
    """MAML / first-order MAML through ``l2l.algorithms.MAML``."""

    def wrap(self, model: nn.Module):
        return import_learn2learn().algorithms.MAML(model, lr=self.inner_lr, first_order=self.first_order)


class Learn2LearnMetaSGD(_Learn2LearnGradient, MetaSGD):
    """Meta-SGD through ``l2l.algorithms.MetaSGD``, sharing its step sizes with mamlrun's."""

    def wrap(self, model: nn.Module):
        wrapper = import_learn2learn().algorithms.MetaSGD(model, lr=self.inner_lr, first_order=self.first_order)
        # learn2learn keeps one step-size tensor per parameter in parameter order; make them ours.
        wrapper.lrs = nn.ParameterList([self.step_sizes[key(n)] for n, _ in model.named_parameters()])
        return wrapper
