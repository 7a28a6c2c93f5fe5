"""Conjugate gradient, the TRPO step, and the meta-objective's exact derivatives (float64)."""

from __future__ import annotations

import pytest
import torch

from mamlrun.algorithms import MAML
from mamlrun.rl import TRPO, GaussianMLP, MetaRL, Navigation2D
from mamlrun.rl.policy import kl_divergence, log_prob
from mamlrun.rl.trpo import conjugate_gradient


def test_conjugate_gradient_solves_a_known_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    x_true = torch.randn(12, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=12, tol=0.0)
    assert torch.allclose(x, x_true, atol=1e-8)
    few = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=3)
    assert (few - x_true).norm() < x_true.norm()  # partial solves still head the right way


def gaussian_surrogate(max_kl: float):
    """A 4-D Gaussian policy on fixed samples: importance-weighted surrogate and KL from the sampling policy."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    log_std = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    actions = torch.randn(5000, 4, generator=gen, dtype=torch.float64)
    adv = actions @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64) + (actions**2).sum(-1) - 4
    old_logp = log_prob(torch.zeros(4), torch.zeros(4), actions).double()

    def closure(differentiable: bool = True):
        ratio = torch.exp(log_prob(mean, log_std, actions) - old_logp)
        kl = kl_divergence(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), mean, log_std)
        return -(ratio * adv).mean(), kl

    return TRPO([mean, log_std], max_kl=max_kl), closure


@pytest.mark.parametrize("max_kl", [0.01, 0.05])
def test_trpo_step_respects_the_kl_constraint_and_improves_the_surrogate(max_kl):
    optimizer, closure = gaussian_surrogate(max_kl)
    before = closure()[0].item()
    stats = optimizer.step(closure)
    after, kl = (v.item() for v in closure())
    assert stats["line_search_steps"] >= 0
    assert after < before - 1e-3 and after == pytest.approx(stats["surrogate_after"])
    assert 0.3 * max_kl < kl <= max_kl  # uses the trust region, never leaves it
    assert kl == pytest.approx(stats["kl"])


def test_trpo_keeps_the_parameters_when_no_step_improves():
    optimizer, closure = gaussian_surrogate(0.01)
    params = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    stats = optimizer.step(lambda differentiable: (closure()[0] * (1 if differentiable else -1), closure()[1]))
    assert stats["line_search_steps"] == -1
    assert all(torch.equal(p, q) for p, q in zip(params, optimizer.param_groups[0]["params"]))


def tiny_learner(first_order: bool, inner_steps: int = 1) -> tuple[MetaRL, object]:
    torch.manual_seed(0)
    tasks = Navigation2D(horizon=6, goal_tolerance=0.0).to("cpu", torch.float64)
    policy = GaussianMLP((2,), 2, hidden=(5,), init_std=0.3).double()
    learner = MetaRL(policy, MAML(0.5, inner_steps, 1, first_order=first_order), tasks, shots=3, query_shots=3)
    return learner, tasks.sample(2, "train", torch.Generator().manual_seed(1))


def flat_grad(value, params) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params, retain_graph=True)])


def finite_differences(fn, params, eps=1e-6) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for p in params:
            for i in range(p.numel()):
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + eps
                up = fn()
                p.view(-1)[i] = old - eps
                down = fn()
                p.view(-1)[i] = old
                out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_second_order_meta_gradient_equals_finite_differences(inner_steps):
    learner, batch = tiny_learner(first_order=False, inner_steps=inner_steps)
    closure = learner.meta_objective(batch).closure
    params = list(learner.parameters())
    exact = flat_grad(closure(True)[0], params)
    numeric = finite_differences(lambda: closure(False)[0].item(), params)
    assert torch.allclose(exact, numeric, rtol=1e-5, atol=1e-8), (exact - numeric).abs().max()

    first, _ = tiny_learner(first_order=True, inner_steps=inner_steps)
    first_closure = first.meta_objective(batch).closure  # same seed: the same trajectories
    first_grad = flat_grad(first_closure(True)[0], list(first.parameters()))
    assert first_closure(False)[0].item() == pytest.approx(closure(False)[0].item())
    assert (first_grad - exact).norm() > 1e-3 * exact.norm()  # the second-order term matters here


def adapted_leaves(learner: MetaRL, objective, tasks: int) -> dict[str, torch.Tensor]:
    """The adapted parameters of every task as independent leaves."""
    adapted = learner.adapt(tasks, objective.supports, create_graph=False)
    return {k: v.detach().requires_grad_(True) for k, v in adapted.items()}


def test_first_order_meta_gradient_is_the_gradient_at_the_adapted_parameters():
    learner, batch = tiny_learner(first_order=True)
    objective = learner.meta_objective(batch)
    first = flat_grad(objective.closure(True)[0], list(learner.parameters()))
    leaves = adapted_leaves(learner, objective, batch.num_tasks)
    per_task = torch.autograd.grad(objective.surrogate(leaves)[0], list(leaves.values()))
    assert torch.allclose(first, torch.cat([g.sum(0).reshape(-1) for g in per_task]), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("first_order", [False, True])
def test_kl_hessian_vector_equals_double_backward(first_order):
    learner, batch = tiny_learner(first_order=first_order, inner_steps=2)
    objective = learner.meta_objective(batch)
    params = list(learner.parameters())
    _, kl = objective.closure(True)
    assert kl.item() == pytest.approx(0.0, abs=1e-12)
    kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params, create_graph=True)])
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(kl_grad.numel(), generator=gen, dtype=torch.float64)
        if first_order:
            # To first order the adaptation's Jacobian is the identity: H = F at the adapted parameters.
            leaves = adapted_leaves(learner, objective, batch.num_tasks)
            grads = torch.autograd.grad(objective.surrogate(leaves)[1], list(leaves.values()), create_graph=True)
            per_task = [
                v_part.view(p.shape).expand_as(g)
                for v_part, p, g in zip(v.split([p.numel() for p in params]), params, grads)
            ]
            dot = sum((g * u).sum() for g, u in zip(grads, per_task))
            exact = torch.cat([h.sum(0).reshape(-1) for h in torch.autograd.grad(dot, list(leaves.values()))])
        else:
            exact = flat_grad(kl_grad @ v, params)
        assert torch.allclose(objective.fisher_vector(v), exact, rtol=1e-6, atol=1e-10)
