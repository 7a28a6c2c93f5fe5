"""Short meta-RL learning tests on 2D navigation: the meta-trained policy adapts in one step."""

from __future__ import annotations

import pytest
import torch

from mamlrun.algorithms import MAML
from mamlrun.logging import MetricLogger
from mamlrun.rl import TRPO, GaussianMLP, MetaRL, Navigation2D
from mamlrun.train import Schedule, Trainer, evaluate


def navigation_returns(iterations: int, horizon: int, run_dir) -> dict[str, float]:
    """Meta-train (10 tasks x 10 trajectories per iteration), then evaluate on 40 held-out goals."""
    torch.manual_seed(0)
    tasks = Navigation2D(horizon=horizon)
    learner = MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 2), tasks, shots=10, query_shots=10, later_inner_lr=0.05)
    schedule = Schedule(meta_iterations=iterations, meta_batch_size=10, log_every=5)
    trainer = Trainer(learner, tasks, TRPO(learner.parameters()), schedule, run_dir, progress=False)
    logger = MetricLogger(run_dir)
    trainer.fit(logger)
    logger.finish()
    return evaluate(learner, tasks, "test", 40, seed=99, batch_size=40)


def test_meta_trained_policy_adapts_to_held_out_goals(tmp_path):
    """20 meta-iterations on 30-step episodes (about 20 s)."""
    maml = navigation_returns(20, 30, tmp_path / "maml")
    random_init = navigation_returns(0, 30, tmp_path / "random")
    # One step on 10 trajectories moves the meta-trained policy towards each task's goal (about -13 -> -6) ...
    assert maml["test/return_step1"] > maml["test/return_step0"] + 3
    # ... and far closer than the random initialisation after the same steps (about -14).
    assert maml["test/return_step1"] > random_init["test/return_step1"] + 6
    assert maml["test/return_step2"] > random_init["test/return_step2"] + 8


@pytest.mark.slow
def test_meta_trained_policy_adapts_on_the_paper_horizon(tmp_path):
    """25 meta-iterations on the paper's 100-step episodes (about a minute)."""
    maml = navigation_returns(25, 100, tmp_path / "maml")
    random_init = navigation_returns(0, 100, tmp_path / "random")
    assert maml["test/return_step1"] > maml["test/return_step0"] + 15  # about -42 -> -16
    assert maml["test/return_step1"] > random_init["test/return_step1"] + 50  # about -75
