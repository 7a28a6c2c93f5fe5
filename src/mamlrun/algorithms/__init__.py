"""Meta-learning algorithms: hooks over one inner loop (:mod:`mamlrun.algorithms.inner`)."""

from mamlrun.algorithms.anil import ANIL
from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.maml import MAML
from mamlrun.algorithms.mamlpp import MAMLPlusPlus
from mamlrun.algorithms.metasgd import MetaSGD
from mamlrun.algorithms.pretrain import Pretrain
from mamlrun.algorithms.reptile import Reptile

__all__ = ["ANIL", "MAML", "Algorithm", "MAMLPlusPlus", "MetaSGD", "Pretrain", "Reptile"]
