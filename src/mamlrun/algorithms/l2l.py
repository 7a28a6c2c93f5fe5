"""The learn2learn backend: the same experiment, meta-gradients computed by learn2learn.

``algorithm.backend=learn2learn`` swaps the engine's meta-gradient for learn2learn's
``clone()`` / ``adapt()`` per task (``l2l.algorithms.MAML`` for maml and fomaml,
``l2l.algorithms.MetaSGD`` for metasgd). Data, models, the training loop, logging and evaluation
stay mamlrun's, so a run differs only in how the meta-gradient is computed; the parity tests show
that both give the same meta-gradients. learn2learn is installed by ``make install-l2l``.

References:
    Arnold, Mahajan, Datta, Bunner, Zarkias. "learn2learn: A Library for Meta-Learning
    Research." arXiv 2008.12284, 2020.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from mamlrun.algorithms.maml import MAML
from mamlrun.algorithms.metasgd import MetaSGD, _key
from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError

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
    """Mixin: ``task_gradient`` by learn2learn, one task at a time, as learn2learn's examples do."""

    @classmethod
    def check_environment(cls) -> None:
        """Raise :class:`MamlrunError` (before any run starts) when learn2learn cannot be imported."""
        import_learn2learn()

    def _wrapper(self):
        raise NotImplementedError

    def task_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        wrapper = self._wrapper()
        lossf = F.cross_entropy if self.task_type == "classification" else F.mse_loss
        losses, accs = [], []
        for t in range(batch.num_tasks):
            learner = wrapper.clone()
            for _ in range(self.inner_steps):
                learner.adapt(lossf(learner(batch.x_support[t]), batch.y_support[t]))
            out = learner(batch.x_query[t])
            loss = lossf(out, batch.y_query[t])
            (loss / batch.num_tasks).backward()
            losses.append(loss.detach())
            if self.task_type == "classification":
                accs.append((out.argmax(-1) == batch.y_query[t]).to(out.dtype).mean().detach())
        stats = {"loss": torch.stack(losses).mean()}
        if accs:
            stats["acc"] = torch.stack(accs).mean()
        return stats


class Learn2LearnMAML(_Learn2LearnGradient, MAML):
    """MAML / first-order MAML through ``l2l.algorithms.MAML``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chosen_strategy = "loop"
        l2l = import_learn2learn()
        # Not registered as a submodule: it wraps the very same network, and checkpoints stay
        # interchangeable with the func backend's.
        object.__setattr__(
            self, "_l2l", l2l.algorithms.MAML(self.model, lr=self.inner_lr, first_order=self.first_order)
        )

    def _wrapper(self):
        return self._l2l


class Learn2LearnMetaSGD(_Learn2LearnGradient, MetaSGD):
    """Meta-SGD through ``l2l.algorithms.MetaSGD``, sharing its step sizes with mamlrun's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chosen_strategy = "loop"
        l2l = import_learn2learn()
        wrapper = l2l.algorithms.MetaSGD(self.model, lr=self.inner_lr, first_order=self.first_order)
        # learn2learn keeps one step-size tensor per parameter in parameter order; make them ours.
        wrapper.lrs = torch.nn.ParameterList([self.step_sizes[_key(n)] for n, _ in self.model.named_parameters()])
        object.__setattr__(self, "_l2l", wrapper)

    def _wrapper(self):
        return self._l2l
