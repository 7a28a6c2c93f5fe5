"""A short 5-way 1-shot MAML run on the real Omniglot archives must clearly learn."""

from __future__ import annotations

import torch

from mamlrun.algorithms import MAML
from mamlrun.data.omniglot import Omniglot
from mamlrun.learner import MetaLearner
from mamlrun.logging import MetricLogger
from mamlrun.models import Conv4
from mamlrun.train import Schedule, Trainer, evaluate


def test_short_maml_run_beats_chance_and_the_untrained_model(omniglot_small, tmp_path):
    torch.manual_seed(0)
    sampler = Omniglot(omniglot_small, ways=5, shots=1, query_shots=1, eval_query_shots=5, split=[0.6, 0.2, 0.2])
    learner = MetaLearner(Conv4((1, 28, 28), 5), MAML(0.4, 1, 3), sampler, strategy="batched")
    before = evaluate(learner, sampler, "test", 200, seed=7)
    schedule = Schedule(meta_iterations=150, meta_batch_size=8, log_every=50, test_tasks=200)
    trainer = Trainer(
        learner, sampler, torch.optim.Adam(learner.parameters(), 1e-3), schedule, tmp_path, progress=False
    )
    logger = MetricLogger(tmp_path)
    trainer.fit(logger)
    logger.finish()
    after = evaluate(learner, sampler, "test", 200, seed=7)
    # Chance is 20 %. Fine-tuning a random network for 3 steps on one image per class does a little
    # better; 150 meta-iterations on 145 characters must do far better on 48 unseen ones.
    assert after["test/acc_mean"] > 0.6
    assert after["test/acc_mean"] > before["test/acc_mean"] + 0.15
    assert after["test/acc_step3"] > after["test/acc_step0"] + 0.2  # it is the adaptation that helps
