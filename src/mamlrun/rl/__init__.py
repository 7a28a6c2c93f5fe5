"""Meta-reinforcement learning: environments, the Gaussian policy, MAML with TRPO."""

from mamlrun.rl.envs import EnvTaskBatch, EnvTasks, Locomotion, Navigation2D, ant, half_cheetah
from mamlrun.rl.learner import MetaRL
from mamlrun.rl.policy import GaussianMLP
from mamlrun.rl.trpo import TRPO

__all__ = [
    "TRPO",
    "EnvTaskBatch",
    "EnvTasks",
    "GaussianMLP",
    "Locomotion",
    "MetaRL",
    "Navigation2D",
    "ant",
    "half_cheetah",
]
