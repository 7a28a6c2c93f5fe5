"""RL runs through the ``mamlrun`` command: outputs, exact resume, one-line errors."""

from __future__ import annotations

import pytest
import torch

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


def test_navigation_run_reports_returns_after_each_step(tmp_path):
    proc = run_mamlrun(*TINY_RL, "meta_iterations=4", "hydra.run.dir=out", cwd=tmp_path)
    run_dir = tmp_path / "out"
    metrics = read_metrics(run_dir)
    assert metrics["train/meta_iterations"] == 4
    for k in range(4):
        assert metrics[f"test/return_step{k}"] < 0 and metrics[f"test/return_ci95_step{k}"] > 0
    assert metrics["test/return_mean"] == metrics["test/return_step3"]
    for name in ("learning_curve.png", "trajectories.png", "trajectories.json", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    assert "test/return_step1" in proc.stdout


def test_navigation_resume_continues_exactly(tmp_path):
    run_mamlrun(*TINY_RL, "meta_iterations=4", "hydra.run.dir=whole", cwd=tmp_path)
    run_mamlrun(*TINY_RL, "meta_iterations=2", "hydra.run.dir=split", cwd=tmp_path)
    # Resuming with more iterations changes the config; resume the same config from a mid-run checkpoint instead.
    state = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["meta_iterations"] = 4
    torch.save(state, tmp_path / "split" / "checkpoints" / "last.pt")
    run_mamlrun(*TINY_RL, "meta_iterations=4", "resume=true", "hydra.run.dir=split", cwd=tmp_path)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    split = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert (
        read_metrics(tmp_path / "whole")["test/return_step3"] == read_metrics(tmp_path / "split")["test/return_step3"]
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["experiment=rl_navigation2d", "algorithm=metasgd"], "algorithm=metasgd has no RL form"),
        (["dataset=navigation2d"], "dataset=navigation2d needs model=gaussian_mlp"),
        (["optimizer=trpo"], "optimizer=trpo is for RL datasets"),
    ],
)
def test_rl_config_errors_are_one_line(tmp_path, args, fragment):
    proc = run_mamlrun(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr
    assert not (tmp_path / "outputs").exists()
