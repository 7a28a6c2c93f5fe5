"""Calibration, sampled-function figures and the probabilistic algorithms from the command line."""

from __future__ import annotations

import json

import pytest
import torch

from mamlrun.algorithms.emaml import EMAML
from mamlrun.data.functions import FunctionTasks
from mamlrun.paths import SWEEPS_DIR
from mamlrun.probabilistic import PosteriorSamples, Reliability, calibration
from tests.algorithms.test_gradients import classification_batch, conv, make, mlp
from tests.conftest import run_mamlrun


def test_calibration_errors_by_hand():
    # bins of width 0.5: [0.6, 0.9, 0.7] in the upper one (accuracy 2/3, confidence 0.7667),
    # [0.2] in the lower one (accuracy 1, confidence 0.2)
    confidence = torch.tensor([0.6, 0.9, 0.7, 0.2])
    correct = torch.tensor([True, True, False, True])
    result = calibration(confidence, correct, bins=2)
    upper, lower = abs(2 / 3 - 2.2 / 3), abs(1 - 0.2)
    assert result["ece"] == pytest.approx(0.75 * upper + 0.25 * lower)
    assert result["mce"] == pytest.approx(lower)
    assert result["count"] == [1, 3]
    assert result["accuracy"] == pytest.approx(0.75)
    perfect = calibration(torch.tensor([1.0, 1.0]), torch.tensor([True, True]), bins=10)
    assert perfect["ece"] == 0 and perfect["count"][-1] == 2  # confidence 1.0 falls in the last bin


class Tasks:
    """Classification tasks for the figure: a fixed batch whatever is asked."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self, num_tasks, split, generator):
        return self.batch.part(slice(0, num_tasks))


def test_reliability_diagram_pools_every_query_prediction(tmp_path):
    batch = classification_batch(tasks=3)
    learner = make(EMAML, conv(), "classification", strategy="batched", particles=2)
    path = Reliability("emaml", tasks=3, bins=5, batch_size=3)(tmp_path, learner, Tasks(batch))
    assert path.name == "reliability.png" and path.stat().st_size > 0
    result = json.loads((tmp_path / "calibration.json").read_text())
    assert sum(result["count"]) == batch.y_query.numel()
    probs = torch.softmax(learner.predictions(batch, learner.test_inner_steps)[-1], -1).mean(1)
    expected = calibration(probs.max(-1).values, probs.argmax(-1) == batch.y_query, bins=5)
    assert result["ece"] == pytest.approx(expected["ece"])


def test_posterior_samples_figure_draws_every_sample(tmp_path):
    sampler = FunctionTasks(shots=5, query_shots=5).to("cpu", torch.float64)
    learner = make(EMAML, mlp(), "regression", particles=3)
    path = PosteriorSamples("emaml", steps=2)(tmp_path, learner, sampler)
    assert path.name == "posterior_samples.png"
    data = json.loads((tmp_path / "posterior_samples.json").read_text())
    assert [t["family"] for t in data["tasks"]] == ["sine", "line"]
    assert len(data["tasks"][0]["samples"]) == 3 and len(data["tasks"][0]["samples"][0]) == len(data["x"])
    # datasets without figure tasks are skipped, classifiers have no reliability on regression
    assert PosteriorSamples("x")(tmp_path, learner, object()) is None
    assert Reliability("x")(tmp_path, learner, sampler) is None


def test_a_diverging_validation_is_said_and_never_the_best_checkpoint(tmp_path):
    """Ten times more evaluation steps than training at a large step size: the validation MSE is NaN."""
    run = tmp_path / "run"
    proc = run_mamlrun(
        "dataset=sine_line",
        "inner_lr=0.05",
        "test_inner_steps=40",
        "meta_iterations=4",
        "train.val_every=2",
        "train.val_tasks=10",
        "eval.test_tasks=10",
        "train.progress=false",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert "val/mse_mean is nan at iteration 4" in proc.stderr
    assert (
        not (run / "checkpoints" / "best.pt").exists()
        or json.loads((run / "metrics.json").read_text())["test/checkpoint_iteration"] == 2
    )


@pytest.mark.parametrize("algorithm", ["emaml", "bmaml", "platipus"])
def test_probabilistic_algorithms_run_from_the_command_line(tmp_path, algorithm):
    run = tmp_path / "run"
    run_mamlrun(
        "experiment=uncertainty_sine_line",
        f"algorithm={algorithm}",
        "debug=quick",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test/mse_mean", "test/nll_mean", "test/coverage_mean"} <= set(metrics)
    assert (run / "posterior_samples.png").is_file()


BAYESIAN = ["algorithm=bmaml", "algorithm.posterior=bayesian", "inner_lr=0.001"]  # the Makefile's BMAML_BAYESIAN


@pytest.mark.parametrize(
    "sweep, table, sweeps",
    [
        ("uncertainty", "uncertainty", {"": ["algorithm=platipus"]}),
        ("bmaml_sinusoid", "bmaml_sinusoid", {"": ["algorithm=bmaml", "shots=5"], "bayesian": [*BAYESIAN, "shots=5"]}),
    ],
)
def test_reproduction_sweeps_write_their_tables_with_provenance(tmp_path, sweep, table, sweeps):
    """What `make reproduce-uncertainty` / `reproduce-bmaml` run, with debug=quick and fewer jobs."""
    from mamlrun import report

    sweep_dir = tmp_path / sweep
    for sub, params in sweeps.items():
        where = f"hydra.sweep.dir={sweep_dir / sub}"
        run_mamlrun("-m", "-cd", str(SWEEPS_DIR), "-cn", sweep, where, "debug=quick", *params, cwd=tmp_path)
    assert report.main([str(sweep_dir), "--table", table, "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / f"{table}.md").read_text()
    assert "Provenance: `make reproduce-" in text and "commit" in text
    if table == "uncertainty":
        assert "| platipus " in text and "95 % coverage" in text
        assert (tmp_path / "out" / "posterior_samples.png").is_file()
    else:
        assert "| bmaml " in text and "| bmaml (bayesian) " in text and "test MSE" in text


def test_the_sinusoid_figure_draws_an_ensembles_mean():
    from mamlrun.data.sinusoid import SinusoidTasks
    from mamlrun.report import sinusoid_fit

    learner = make(EMAML, mlp(), "regression", particles=3)
    fit = sinusoid_fit(learner, SinusoidTasks(shots=5, query_shots=5).to("cpu", torch.float64), steps=(0, 1))
    assert len(fit["step0"]) == len(fit["step1"]) == len(fit["x"]) == 200
