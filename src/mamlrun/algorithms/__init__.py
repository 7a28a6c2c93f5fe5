"""Meta-learning algorithms over torch.func; the trainer sees only :class:`MetaLearner`."""

from mamlrun.algorithms.base import MetaLearner
from mamlrun.algorithms.maml import MAML
from mamlrun.algorithms.metasgd import MetaSGD
from mamlrun.algorithms.pretrain import Pretrain
from mamlrun.algorithms.reptile import Reptile

__all__ = ["MAML", "MetaLearner", "MetaSGD", "Pretrain", "Reptile"]
