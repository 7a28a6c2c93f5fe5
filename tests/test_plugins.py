"""The engine's extension points from the outside: a new algorithm as one file and one yaml; the schedule group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest
import torch

from mamlrun.algorithms import MAML
from mamlrun.data.sinusoid import SinusoidTasks
from mamlrun.learner import MetaLearner
from mamlrun.logging import MetricLogger
from mamlrun.models import MLP
from mamlrun.train import Schedule, Trainer
from tests.conftest import MAMLRUN, TINY, compose_config

TOY = '''
"""A toy algorithm: MAML whose later inner steps take half the step size."""

from mamlrun.algorithms import MAML


class HalfStep(MAML):
    def step_size(self, step, name):
        return self.inner_lr if step == 0 else self.inner_lr / 2
'''


def test_a_new_algorithm_is_one_file_and_one_yaml(tmp_path):
    package = tmp_path / "toyalgos"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "halfstep.py").write_text(TOY)
    group = tmp_path / "myconf" / "algorithm"
    group.mkdir(parents=True)
    (group / "halfstep.yaml").write_text(
        textwrap.dedent(
            """\
            defaults:
              - maml
              - _self_
            name: halfstep
            _target_: toyalgos.halfstep.HalfStep
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    args = ["algorithm=halfstep", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "inner_steps=2", *TINY]
    proc = subprocess.run([str(MAMLRUN), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (run,) = tmp_path.glob("outputs/runs/*/*halfstep*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/meta_iterations"] == 20 and "test/mse_mean" in metrics
    assert "toyalgos.halfstep.HalfStep" in (run / ".hydra" / "config.yaml").read_text()


def sinusoid_trainer(run_dir, iterations: int, cosine: bool, decay: bool = False) -> Trainer:
    from mamlrun.schedules import ExponentialDecay

    torch.manual_seed(0)
    tasks = SinusoidTasks(shots=5, query_shots=5)
    learner = MetaLearner(MLP((1,), 1, hidden=(8, 8)), MAML(0.01, 1, 1), tasks)
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.01)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-4) if cosine else None
    if decay:
        lr_schedule = ExponentialDecay(optimizer, factor=0.5, times=2, iterations=10)
    schedule = Schedule(meta_iterations=iterations, meta_batch_size=4, log_every=0, checkpoint_every=1)
    return Trainer(learner, tasks, optimizer, schedule, run_dir, progress=False, lr_schedule=lr_schedule)


def test_cosine_schedule_anneals_and_resumes_exactly(tmp_path):
    whole = sinusoid_trainer(tmp_path / "whole", 10, cosine=True)
    whole.fit(MetricLogger(tmp_path / "whole"))
    assert abs(whole.optimizer.param_groups[0]["lr"] - 1e-4) < 1e-12  # annealed to eta_min
    first = sinusoid_trainer(tmp_path / "split", 4, cosine=True)
    first.fit(MetricLogger(tmp_path / "split"))
    assert 1e-4 < first.optimizer.param_groups[0]["lr"] < 0.01
    second = sinusoid_trainer(tmp_path / "split", 10, cosine=True)
    assert second.restore() and second.iteration == 4
    second.fit(MetricLogger(tmp_path / "split"))
    for a, b in zip(whole.learner.parameters(), second.learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    constant = sinusoid_trainer(tmp_path / "constant", 3, cosine=False)
    constant.fit(MetricLogger(tmp_path / "constant"))
    assert constant.optimizer.param_groups[0]["lr"] == 0.01


def test_exponential_decay_halves_twice_over_the_run_and_resumes_exactly(tmp_path):
    whole = sinusoid_trainer(tmp_path / "whole", 10, cosine=False, decay=True)
    whole.fit(MetricLogger(tmp_path / "whole"))
    assert abs(whole.optimizer.param_groups[0]["lr"] - 0.01 * 0.25) < 1e-12  # 0.5 twice in 10 iterations
    first = sinusoid_trainer(tmp_path / "split", 5, cosine=False, decay=True)
    first.fit(MetricLogger(tmp_path / "split"))
    assert abs(first.optimizer.param_groups[0]["lr"] - 0.01 * 0.5) < 1e-12
    second = sinusoid_trainer(tmp_path / "split", 10, cosine=False, decay=True)
    assert second.restore() and second.iteration == 5
    second.fit(MetricLogger(tmp_path / "split"))
    for a, b in zip(whole.learner.parameters(), second.learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_schedule_group_composes():
    assert compose_config().schedule._target_ is None
    cfg = compose_config("schedule=cosine", "meta_iterations=123")
    assert cfg.schedule._target_.endswith("CosineAnnealingLR") and cfg.schedule.T_max == 123
    cfg = compose_config("schedule=exponential", "meta_iterations=5000")
    assert cfg.schedule._target_.endswith("ExponentialDecay") and cfg.schedule.iterations == 5000


class Terminated(MetaLearner):
    """A learner that sends this process SIGTERM during one meta-iteration (a session's end)."""

    at = 3

    def meta_gradient(self, batch):
        if self.algorithm.iteration == self.at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().meta_gradient(batch)


def test_sigterm_checkpoints_the_iteration_and_the_run_resumes_exactly(tmp_path):
    whole = sinusoid_trainer(tmp_path / "whole", 6, cosine=True)
    whole.fit(MetricLogger(tmp_path / "whole"))
    before = signal.getsignal(signal.SIGTERM)
    stopped = sinusoid_trainer(tmp_path / "stopped", 6, cosine=True)
    stopped.learner.__class__ = Terminated
    stopped.schedule.checkpoint_every = 0  # only the signal writes a checkpoint
    with pytest.raises(KeyboardInterrupt, match="signal 15 at iteration 3"):
        stopped.fit(MetricLogger(tmp_path / "stopped"))
    assert signal.getsignal(signal.SIGTERM) == before  # the run's handler is gone with the run
    resumed = sinusoid_trainer(tmp_path / "stopped", 6, cosine=True)
    assert resumed.restore() and resumed.iteration == 3
    resumed.fit(MetricLogger(tmp_path / "stopped"))
    for a, b in zip(whole.learner.parameters(), resumed.learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
