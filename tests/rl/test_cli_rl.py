"""RL runs end to end: the ``mamlrun`` command's outputs, exact resume, one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mamlrun.algorithms import MAML
from mamlrun.logging import MetricLogger
from mamlrun.rl import TRPO, GaussianMLP, MetaRL, Navigation2D
from mamlrun.train import Schedule, Trainer
from tests.conftest import read_metrics, run_mamlrun

TINY_RL = [
    "experiment=rl_navigation2d",
    "meta_batch_size=3",
    "shots=3",
    "dataset.horizon=30",
    "train.val_every=2",
    "train.val_tasks=3",
    "train.log_every=1",
    "eval.test_tasks=6",
    "eval.batch_size=4",
    "train.progress=false",
]


def test_navigation_run_reports_returns_after_each_step_and_its_results_row(tmp_path):
    from mamlrun.results import write_rl

    proc = run_mamlrun(*TINY_RL, "meta_iterations=4", "hydra.run.dir=runs/nav__maml", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "nav__maml"
    metrics = read_metrics(run_dir)
    assert metrics["train/meta_iterations"] == 4
    for k in range(4):
        assert metrics[f"test/return_step{k}"] < 0 and metrics[f"test/return_ci95_step{k}"] > 0
    assert metrics["test/return_mean"] == metrics["test/return_step3"]
    for name in ("learning_curve.png", "trajectories.png", "trajectories.json", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    assert "test/return_step1" in proc.stdout
    # results/rl: the returns beside the paper's, with the run's provenance.
    csv, md = write_rl(tmp_path / "runs", tmp_path / "results")
    (row,) = pd.read_csv(csv).to_dict("records")
    assert (row["experiment"], row["algorithm"], row["status"], row["meta_iterations"]) == (
        "rl_navigation2d",
        "maml",
        "finished",
        4,
    )
    assert row["return_step3"] == pytest.approx(metrics["test/return_step3"])
    assert row["paper_step3"] == -3.23 and row["commits"] and "mamlrun experiment=rl_navigation2d" in row["commands"]
    text = md.read_text()
    assert "-40.41 / -11.68 / -3.33 / -3.23" in text and "Provenance" in text
    assert (tmp_path / "results" / "runs" / "nav__maml" / "metrics.jsonl").is_file()


def test_random_init_is_evaluated_without_meta_training(tmp_path):
    run_mamlrun(*TINY_RL, "algorithm=random", "meta_iterations=4", "hydra.run.dir=out", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "out")
    assert metrics["train/meta_iterations"] == 0 and "test/return_step3" in metrics


def test_navigation_resume_continues_exactly(tmp_path):
    """Stopped after 2 of 4 meta-iterations and resumed: the same parameters as 4 in one go."""

    def trainer(run_dir, iterations):
        torch.manual_seed(0)
        tasks = Navigation2D(horizon=20)
        learner = MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 1), tasks, shots=3, query_shots=3)
        schedule = Schedule(meta_iterations=iterations, meta_batch_size=3, checkpoint_every=1)
        return Trainer(learner, tasks, TRPO(learner.parameters()), schedule, run_dir, progress=False)

    whole = trainer(tmp_path / "whole", 4)
    whole.fit(MetricLogger(tmp_path / "whole"))
    trainer(tmp_path / "split", 2).fit(MetricLogger(tmp_path / "split"))
    resumed = trainer(tmp_path / "split", 4)
    torch.manual_seed(123)  # the global RNG state is restored from the checkpoint, not taken from here
    assert resumed.restore() and resumed.iteration == 2
    resumed.fit(MetricLogger(tmp_path / "split"))
    assert all(torch.equal(a, b) for a, b in zip(whole.learner.parameters(), resumed.learner.parameters()))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["experiment=rl_navigation2d", "algorithm=metasgd"], "algorithm=metasgd has no RL form"),
        (["optimizer=trpo"], "optimizer=trpo is for RL datasets"),
    ],
)
def test_rl_config_errors_are_one_line(tmp_path, args, fragment):
    proc = run_mamlrun(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_locomotion_run_draws_the_forward_velocity_before_and_after_adaptation(tmp_path):
    import json

    run_mamlrun(
        "experiment=rl_halfcheetah_dir",
        "meta_batch_size=2",
        "shots=2",
        "dataset.horizon=15",
        "meta_iterations=1",
        "eval.test_tasks=2",
        "eval.batch_size=2",
        "train.progress=false",
        "hydra.run.dir=out",
        cwd=tmp_path,
    )
    run = json.loads((tmp_path / "out" / "velocity.json").read_text())
    assert (tmp_path / "out" / "velocity.png").is_file() and run["goals"] == [1.0, -1.0]
    for k in range(4):
        speeds = run[f"speed_step{k}"]
        assert len(speeds) == 2 and all(len(s) == 15 for s in speeds)
        for goal, speed, ret in zip(run["goals"], speeds, run[f"return_step{k}"], strict=True):
            # Return = sum of goal * velocity minus a control cost: never above the velocity's part.
            assert ret <= goal * sum(speed) + 1e-4
