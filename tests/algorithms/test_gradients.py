"""The engine's meta-gradients against independent references, in float64.

The references here are written from the paper's equations with plain ``torch.autograd`` and a
Python loop over tasks; they share no code with the engine except the network.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlrun.algorithms import MAML, MetaSGD, Pretrain, Reptile
from mamlrun.data.tasks import TaskBatch
from mamlrun.learner import MetaLearner
from mamlrun.models import MLP, Conv4
from mamlrun.objectives import Classification, Regression

STRATEGIES = ["vmap", "batched", "loop"]
ALPHA = 0.01  # the sinusoid recipe's inner step size
OBJECTIVES = {"regression": Regression(), "classification": Classification()}


def regression_batch(tasks=4, shots=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = lambda n: torch.rand(tasks, n, 1, generator=g, dtype=torch.float64) * 10 - 5  # noqa: E731
    amp = torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) * 4.9 + 0.1
    phase = torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) * 3.14
    xs, xq = x(shots), x(shots + 2)
    return TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))


def classification_batch(tasks=3, ways=3, shots=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, ways * shots, 1, 12, 12, generator=g, dtype=torch.float64)
    xq = torch.randn(tasks, ways * shots, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    return TaskBatch(xs, y, xq, y.clone())


def mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP((1,), 1, hidden=(16, 16)).double()


def smooth_mlp(seed=0) -> nn.Module:
    """tanh instead of ReLU: finite differences need a loss without kinks."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def conv(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return Conv4((1, 12, 12), 3, filters=4).double()


def make(cls, model, task_type="regression", steps=1, first_order=False, strategy="vmap", chunk_size=None, **kw):
    algorithm = cls(ALPHA, steps, steps, first_order=first_order, **kw)
    tasks = SimpleNamespace(objective=OBJECTIVES[task_type])
    return MetaLearner(model, algorithm, tasks, strategy=strategy, chunk_size=chunk_size)


def flat_grad(learner) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


def meta_grad(learner, batch) -> torch.Tensor:
    learner.zero_grad()
    learner.meta_gradient(batch)
    return flat_grad(learner)


# -- the reference: a per-task autograd loop written from the equations --------------------------
def reference_meta_grad(model, batch, steps, first_order, task_type="regression", lrs=None):
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    extra = list(lrs) if lrs is not None else []
    lossf = F.cross_entropy if task_type == "classification" else F.mse_loss
    total = 0
    for t in range(batch.num_tasks):
        params = list(theta)
        for _ in range(steps):
            out = functional_call(model, dict(zip(names, params)), (batch.x_support[t],))
            grads = torch.autograd.grad(lossf(out, batch.y_support[t]), params, create_graph=not first_order)
            step = lrs if lrs is not None else [ALPHA] * len(params)
            params = [p - a * g for p, a, g in zip(params, step, grads)]
        out = functional_call(model, dict(zip(names, params)), (batch.x_query[t],))
        total = total + lossf(out, batch.y_query[t])
    grads = torch.autograd.grad(total / batch.num_tasks, theta + extra)
    return torch.cat([g.flatten() for g in grads])


def meta_loss_value(model, batch, steps) -> float:
    """The MAML objective at the model's current parameters (for finite differences)."""
    names = [n for n, _ in model.named_parameters()]
    total = 0.0
    for t in range(batch.num_tasks):
        params = [p.detach().requires_grad_() for p in model.parameters()]
        for _ in range(steps):
            out = functional_call(model, dict(zip(names, params)), (batch.x_support[t],))
            grads = torch.autograd.grad(F.mse_loss(out, batch.y_support[t]), params)
            params = [(p - ALPHA * g).detach().requires_grad_() for p, g in zip(params, grads)]
        with torch.no_grad():
            out = functional_call(model, dict(zip(names, params)), (batch.x_query[t],))
            total += F.mse_loss(out, batch.y_query[t]).item()
    return total / batch.num_tasks


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(strategy, steps):
    model, batch = smooth_mlp(), regression_batch()
    learner = make(MAML, model, steps=steps, strategy=strategy)
    analytic = meta_grad(learner, batch)
    # Central differences along a few random directions: d/de J(theta + e v) = <grad J, v>.
    g = torch.Generator().manual_seed(1)
    params = list(model.parameters())
    for _ in range(3):
        v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        eps = 1e-5
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        plus = meta_loss_value(model, batch, steps)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(2 * eps * d)
        minus = meta_loss_value(model, batch, steps)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        directional = torch.dot(analytic, torch.cat([d.flatten() for d in v])).item()
        assert directional == pytest.approx(numeric, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_per_task_reference_loop_mlp(strategy, first_order, steps):
    model, batch = mlp(), regression_batch()
    ours = meta_grad(make(MAML, model, steps=steps, first_order=first_order, strategy=strategy), batch)
    ref = reference_meta_grad(model, batch, steps, first_order)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_maml_equals_per_task_reference_loop_conv_bn(strategy, first_order):
    model, batch = conv(), classification_batch()
    learner = make(MAML, model, "classification", steps=2, first_order=first_order, strategy=strategy)
    ref = reference_meta_grad(model, batch, 2, first_order, "classification")
    torch.testing.assert_close(meta_grad(learner, batch), ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_metasgd_equals_reference_and_trains_its_step_sizes(strategy):
    model, batch = mlp(), regression_batch()
    learner = make(MetaSGD, model, steps=2, strategy=strategy)
    # Make the learned step sizes differ per coordinate so that the test sees them used.
    with torch.no_grad():
        for p in learner.algorithm.step_sizes.values():
            p.uniform_(0.02, 0.2)
    lrs = [learner.algorithm.step_sizes[n.replace(".", "__")] for n, _ in model.named_parameters()]
    ref = reference_meta_grad(model, batch, 2, False, lrs=lrs)
    learner.zero_grad()
    learner.meta_gradient(batch)
    ours = torch.cat([p.grad.flatten() for p in [*model.parameters(), *lrs]])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lrs)
    before = [p.detach().clone() for p in lrs]
    torch.optim.Adam(learner.parameters(), lr=1e-3).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, lrs))


def test_first_order_differs_from_second_order_and_equals_gradient_at_adapted_params():
    model, batch = mlp(), regression_batch()
    second = meta_grad(make(MAML, model, steps=1), batch)
    first = meta_grad(make(MAML, model, steps=1, first_order=True), batch)
    assert (second - first).norm() > 1e-3 * second.norm()
    # FOMAML: mean over tasks of grad L_query evaluated at theta'_i, with theta'_i a constant.
    names = [n for n, _ in model.named_parameters()]
    expected = 0
    for t in range(batch.num_tasks):
        theta = [p.detach() for p in model.parameters()]
        leaf = [p.clone().requires_grad_() for p in theta]
        out = functional_call(model, dict(zip(names, leaf)), (batch.x_support[t],))
        grads = torch.autograd.grad(F.mse_loss(out, batch.y_support[t]), leaf)
        adapted = [(p - ALPHA * g).requires_grad_() for p, g in zip(theta, grads)]
        out = functional_call(model, dict(zip(names, adapted)), (batch.x_query[t],))
        qg = torch.autograd.grad(F.mse_loss(out, batch.y_query[t]), adapted)
        expected = expected + torch.cat([g.flatten() for g in qg]) / batch.num_tasks
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reptile_update_is_interpolation_towards_task_solutions(strategy):
    model, batch = mlp(), regression_batch()
    steps, eps = 3, 0.25
    learner = make(Reptile, model, steps=steps, strategy=strategy)
    theta = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    phis = []
    for t in range(batch.num_tasks):
        x = torch.cat([batch.x_support[t], batch.x_query[t]])
        y = torch.cat([batch.y_support[t], batch.y_query[t]])
        phi = [p.clone() for p in theta]
        for _ in range(steps):
            leaf = [p.requires_grad_() for p in phi]
            out = functional_call(model, dict(zip(names, leaf)), (x,))
            grads = torch.autograd.grad(F.mse_loss(out, y), leaf)
            phi = [(p - ALPHA * g).detach() for p, g in zip(leaf, grads)]
        phis.append(phi)
    opt = torch.optim.SGD(learner.parameters(), lr=eps)
    opt.zero_grad()
    learner.meta_gradient(batch)
    opt.step()
    for i, p in enumerate(model.parameters()):
        mean_phi = torch.stack([phi[i] for phi in phis]).mean(0)
        torch.testing.assert_close(p.detach(), theta[i] + eps * (mean_phi - theta[i]), rtol=1e-12, atol=1e-12)


def test_pretrain_gradient_is_joint_loss_gradient():
    model, batch = mlp(), regression_batch()
    learner = make(Pretrain, model)
    ours = meta_grad(learner, batch)
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    loss = sum(F.mse_loss(model(x[t]), y[t]) for t in range(batch.num_tasks)) / batch.num_tasks
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [MAML, MetaSGD, Pretrain])
def test_chunked_meta_batch_gives_the_same_gradient(cls):
    batch = regression_batch(tasks=7)
    whole = meta_grad(make(cls, mlp(), steps=2), batch)
    chunked = meta_grad(make(cls, mlp(), steps=2, chunk_size=3), batch)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)


def test_auto_strategy_is_a_fixed_rule_of_model_and_device(monkeypatch):
    import time

    from mamlrun.learner import auto_strategy

    def no_clock():
        raise AssertionError("auto must not time anything")

    monkeypatch.setattr(time, "perf_counter", no_clock)
    for model, expected in ((mlp(), "batched"), (conv(), "batched"), (smooth_mlp(), "vmap")):
        choices = {auto_strategy(model, "cpu") for _ in range(3)} | {make(MAML, model, strategy="auto").strategy_name}
        assert choices == {expected}
        assert auto_strategy(model, "cuda") == expected


def test_auto_strategy_computes_as_its_choice_and_keeps_it_in_the_state_dict():
    learner = make(MAML, mlp(), strategy="auto")
    assert learner.chosen_strategy is None and learner.strategy_name == "batched"
    batch = regression_batch()
    g = meta_grad(learner, batch)
    assert learner.chosen_strategy == "batched"
    torch.testing.assert_close(g, meta_grad(make(MAML, mlp(), strategy="batched"), batch), rtol=0, atol=0)
    # A checkpoint's choice wins over the rule, so a resumed run computes exactly as before.
    saved = learner.state_dict()
    saved["_extra_state"] = {"chosen_strategy": "loop"}
    other = make(MAML, mlp(), strategy="auto")
    other.load_state_dict(saved)
    assert other.strategy_name == "loop"
    explicit = make(MAML, mlp(), strategy="vmap")
    explicit.load_state_dict(saved)
    assert explicit.strategy_name == "vmap"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_evaluation_reports_every_step_and_improves_with_adaptation(strategy):
    model, batch = mlp(), regression_batch(tasks=6)
    learner = make(MAML, model, steps=5, strategy=strategy)
    result = learner.evaluate(batch)
    assert result["loss"].shape == (6, 6)
    # Plain SGD with a small step on a smooth loss: the support loss falls, so does the query MSE on average.
    assert result["loss"][-1].mean() < result["loss"][0].mean()
    assert all(p.grad is None for p in learner.parameters())


def test_cpu_batched_strategy_chunks_by_a_fixed_rule_of_shapes():
    learner = make(MAML, conv(), "classification", strategy="batched")
    learner.chosen_strategy = "batched"

    def batch(tasks, support, query):
        return TaskBatch(
            torch.zeros(tasks, support, 1, 28, 28),
            torch.zeros(tasks, support),
            torch.zeros(tasks, query, 1, 28, 28),
            None,
        )

    assert learner.cache_chunk_size(batch(32, 5, 5)) == 16  # Omniglot 5-way 1-shot
    assert learner.cache_chunk_size(batch(32, 5, 75)) == 2  # 15 query images per class
    assert learner.cache_chunk_size(batch(16, 20, 20)) == 4  # 20-way 1-shot
    assert learner.cache_chunk_size(batch(3, 1, 1)) == 3  # fits in one chunk
    assert make(MAML, conv(), "classification", strategy="vmap").cache_chunk_size(batch(32, 5, 75)) is None


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_cache_sized_chunks_give_the_reference_meta_gradient(monkeypatch, first_order):
    import mamlrun.learner as base

    monkeypatch.setattr(base, "CHUNK_INPUT_ELEMENTS", 2 * 12 * 12 * 12)  # one task (12 images) per chunk
    model, batch = conv(), classification_batch()
    learner = make(MAML, model, "classification", steps=2, first_order=first_order, strategy="batched")
    learner.chosen_strategy = "batched"
    assert learner.cache_chunk_size(batch) == 2
    ref = reference_meta_grad(model, batch, 2, first_order, "classification")
    torch.testing.assert_close(meta_grad(learner, batch), ref, rtol=1e-9, atol=1e-11)
