"""The ambiguous regression tasks: families, noise, the finite set of training functions."""

from __future__ import annotations

import math

import pytest
import torch

from mamlrun.data.functions import FunctionTasks
from mamlrun.errors import MamlrunError


def tasks(**kw) -> FunctionTasks:
    return FunctionTasks(shots=5, query_shots=10, **kw).to("cpu", torch.float64)


def test_sines_and_lines_in_their_proportions_with_their_parameters():
    sampler = tasks(noise_std=0.0)
    f = sampler.sample_functions(4000, torch.Generator().manual_seed(0))
    assert f["line"].mean().item() == pytest.approx(0.5, abs=0.03)
    x = torch.linspace(-5, 5, 7, dtype=torch.float64).view(1, -1, 1).expand(4000, -1, -1)
    y = sampler.evaluate_functions(f, x)
    lines, sines = f["line"].flatten() > 0, f["line"].flatten() == 0
    torch.testing.assert_close(y[lines], (f["slope"] * x + f["intercept"])[lines])
    torch.testing.assert_close(y[sines], (f["amplitude"] * torch.sin(x - f["phase"]))[sines])
    assert f["slope"].min() >= -3 and f["slope"].max() <= 3 and f["amplitude"].min() >= 0.1


def test_targets_carry_the_configured_noise_and_test_targets_may_be_noise_free():
    sampler = tasks(noise_std=0.3, eval_query_points=400)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    batch = sampler.sample(200, "test", gen)
    gen.set_state(state)  # the same functions and inputs, drawn again
    f = sampler.sample_functions(200, gen)
    xs = sampler._uniform((200, 5, 1), sampler.x_range, gen)
    xq = sampler._uniform((200, 400, 1), sampler.x_range, gen)
    torch.testing.assert_close(batch.x_query, xq)
    residual = batch.y_query - sampler.evaluate_functions(f, xq)
    assert residual.std().item() == pytest.approx(0.3, rel=0.02)
    assert (batch.y_support - sampler.evaluate_functions(f, xs)).std().item() == pytest.approx(0.3, rel=0.1)
    clean = tasks(noise_std=0.3, noisy_eval=False).sample(3, "test", torch.Generator().manual_seed(1))
    noisy = tasks(noise_std=0.3, noisy_eval=True).sample(3, "test", torch.Generator().manual_seed(1))
    assert not torch.equal(clean.y_query, noisy.y_query)
    torch.testing.assert_close(clean.y_support, noisy.y_support)


def test_bmaml_noise_grows_with_the_amplitude():
    sampler = tasks(noise_std=0.0, noise_factor=0.01, line_fraction=0.0)
    f = {
        k: torch.tensor([[[v]], [[v]]], dtype=torch.float64)
        for k, v in {
            "amplitude": 4.0,
            "phase": 0.0,
            "frequency": 1.0,
            "slope": 0.0,
            "intercept": 0.0,
            "line": 0.0,
        }.items()
    }
    f["amplitude"] = torch.tensor([[[0.5]], [[5.0]]], dtype=torch.float64)
    noise = sampler.noise(f, (2, 20000, 1), torch.Generator().manual_seed(2))
    assert noise[0].std().item() == pytest.approx(0.005, rel=0.05)
    assert noise[1].std().item() == pytest.approx(0.05, rel=0.05)


def test_a_finite_set_of_training_functions_is_fixed_and_only_for_training():
    sampler = tasks(train_functions=3, noise_std=0.0)
    seen = set()
    for seed in range(5):
        batch = sampler.sample(8, "train", torch.Generator().manual_seed(seed))
        x = torch.zeros(8, 1, 1, dtype=torch.float64)  # the functions' values at 0 and 1 identify them
        pool = sampler.pool()
        values = torch.cat([sampler.evaluate_functions(pool, x[:3]), sampler.evaluate_functions(pool, x[:3] + 1)], 1)
        assert batch.x_support.shape == (8, 5, 1)
        seen.add(tuple(values.flatten().round(decimals=9).tolist()))
    assert len(seen) == 1  # the same three functions whatever the stream
    other = tasks(train_functions=3, noise_std=0.0)
    for k, v in sampler.pool().items():
        torch.testing.assert_close(other.pool()[k], v)
    test = sampler.sample(50, "test", torch.Generator().manual_seed(0))
    assert test.x_query.shape == (50, 100, 1)


def test_training_targets_come_from_the_pool():
    sampler = tasks(train_functions=2, noise_std=0.0, line_fraction=0.0)
    batch = sampler.sample(20, "train", torch.Generator().manual_seed(3))
    pool = sampler.pool()
    candidates = [
        sampler.evaluate_functions({k: v[i : i + 1].expand(20, 1, 1) for k, v in pool.items()}, batch.x_support)
        for i in range(2)
    ]
    matches = torch.stack([(c - batch.y_support).abs().flatten(1).max(1).values < 1e-9 for c in candidates])
    assert matches.any(0).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"line_fraction": 1.5}, "line_fraction"),
        ({"noise_std": -1.0}, "noise"),
        ({"train_functions": 0}, "train_functions"),
    ],
)
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(MamlrunError, match=message):
        FunctionTasks(shots=5, query_shots=5, **kw)


def test_figure_tasks_are_a_sine_and_a_line_on_a_grid():
    batch, f = tasks().figure_tasks(torch.Generator().manual_seed(0), points=50)
    assert f["line"].flatten().tolist() == [0.0, 1.0]
    assert batch.x_query.shape == (2, 50, 1) and batch.x_support.shape == (2, 5, 1)
    assert batch.x_query[0, 0, 0].item() == pytest.approx(-5) and batch.x_query[0, -1, 0].item() == pytest.approx(5)
    assert math.isclose(batch.y_query[1, 1, 0] - batch.y_query[1, 0, 0], f["slope"][1].item() * 10 / 49, rel_tol=1e-9)
