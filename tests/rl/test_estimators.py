"""The policy-gradient estimator is unbiased and the linear baseline reduces its variance."""

from __future__ import annotations

import math

import pytest
import torch

from mamlrun.algorithms import MAML
from mamlrun.errors import MamlrunError
from mamlrun.rl import GaussianMLP, MetaRL, Navigation2D
from mamlrun.rl.episodes import Episodes, advantages, discounted_returns, linear_baseline

C = 0.7  # the reward's optimum: r(a) = -(a - C)^2


def bandit(policy: GaussianMLP, samples: int, gen: torch.Generator, obs: torch.Tensor | None = None) -> Episodes:
    """One-step episodes of a 1-D Gaussian policy on r(a) = -(a - C)^2 (+ an offset that depends on the state)."""
    obs = torch.ones(1, samples, 1, 1, dtype=torch.float64) if obs is None else obs
    params = {k: v.detach() for k, v in policy.batched_params(1).items()}
    mean, log_std = policy.distribution(params, obs.view(1, samples, 1))
    actions = mean + log_std.exp() * torch.randn(mean.shape, generator=gen, dtype=torch.float64)
    rewards = -((actions - C) ** 2).view(1, samples, 1) + 50 * obs.view(1, samples, 1)
    return Episodes(obs, actions.view(1, samples, 1, 1), rewards, torch.ones_like(rewards))


def reinforce_gradient(learner: MetaRL, episodes: Episodes, adv: torch.Tensor) -> torch.Tensor:
    """The REINFORCE estimate of the gradient of the expected return (minus the inner loss's gradient)."""
    loss = learner.inner_loss(learner.policy.batched_params(1), episodes, adv).sum()
    return -torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(learner.policy.parameters()))])


def make_learner() -> MetaRL:
    torch.manual_seed(0)
    policy = GaussianMLP((1,), 1, hidden=(), init_std=0.5).double()  # mean = w * obs + b
    with torch.no_grad():
        policy.layers[0].weight.fill_(0.1)
        policy.layers[0].bias.fill_(0.0)
    return MetaRL(policy, MAML(0.1, 1, 1), Navigation2D(), shots=1, query_shots=1)


def test_policy_gradient_is_unbiased():
    learner = make_learner()
    gen = torch.Generator().manual_seed(0)
    # With obs = 1: mean mu = w + b, J = -((mu - C)^2 + sigma^2) + 50, dJ/dlog_sigma = -2 sigma^2,
    # dJ/dw = dJ/db = -2 (mu - C). (Parameters in the policy's order: log_std, weight, bias.)
    mu, sigma = 0.1, 0.5
    exact = torch.tensor([-2 * sigma**2, -2 * (mu - C), -2 * (mu - C)], dtype=torch.float64)
    estimates = []
    for _ in range(40):
        episodes = bandit(learner.policy, 20000, gen)
        estimates.append(reinforce_gradient(learner, episodes, episodes.rewards))
    estimates = torch.stack(estimates)
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert ((estimates.mean(0) - exact).abs() < 4 * stderr).all(), (estimates.mean(0), exact, stderr)
    assert (stderr < 0.25 * exact.abs()).all()  # precise enough that a biased estimator would fail


def test_linear_baseline_reduces_variance_and_keeps_the_mean():
    learner = make_learner()
    gen = torch.Generator().manual_seed(1)
    plain, based = [], []
    for _ in range(60):
        obs = torch.rand(1, 200, 1, 1, generator=gen, dtype=torch.float64)  # reward offset 50 * obs
        episodes = bandit(learner.policy, 200, gen, obs)
        returns = discounted_returns(episodes.rewards, 0.99)
        plain.append(reinforce_gradient(learner, episodes, returns))
        based.append(reinforce_gradient(learner, episodes, returns - linear_baseline(episodes, returns)))
    plain, based = torch.stack(plain), torch.stack(based)
    assert (based.var(0) < 0.05 * plain.var(0)).all(), (based.var(0), plain.var(0))
    stderr = plain.std(0) / math.sqrt(len(plain))
    assert ((based.mean(0) - plain.mean(0)).abs() < 4 * stderr).all()


def test_discounted_returns_and_advantages():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    expected = torch.zeros_like(rewards)
    running = torch.zeros(2, 3, dtype=torch.float64)
    for t in reversed(range(7)):
        running = rewards[..., t] + 0.9 * running
        expected[..., t] = running
    assert torch.allclose(discounted_returns(rewards, 0.9), expected)
    mask = torch.ones_like(rewards)
    mask[0, 0, 4:] = 0
    episodes = Episodes(
        torch.randn(2, 3, 7, 2, generator=gen, dtype=torch.float64), torch.zeros(2, 3, 7, 1), rewards * mask, mask
    )
    adv = advantages(episodes, 0.9)
    assert adv[0, 0, 4:].abs().sum() == 0
    for task in range(2):
        valid = adv[task][mask[task] > 0]
        assert abs(valid.mean()) < 1e-9 and abs(valid.std(unbiased=False) - 1) < 1e-6


def test_evaluation_samples_test_shots_trajectories_per_step():
    """``test_shots`` sets the test-time trajectories per step (the paper's code tests with more than it trains)."""
    tasks = Navigation2D(horizon=5)
    batch = tasks.sample(3, "test", torch.Generator().manual_seed(0))
    default = MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 2), tasks, shots=4, query_shots=4)
    wider = MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 2), tasks, shots=4, query_shots=4, test_shots=7)
    assert [e.mask.shape[1] for e in default.trajectories(batch, 2)] == [4, 4, 4]
    assert [e.mask.shape[1] for e in wider.trajectories(batch, 2)] == [7, 7, 7]
    assert default.evaluate(batch)["return"].shape == wider.evaluate(batch)["return"].shape == (3, 3)


def test_test_transitions_draws_whole_trajectories_until_each_task_has_enough():
    """rllab's ``batch_size`` rule: whole paths until the transitions reach it; short episodes give more paths."""
    from mamlrun.rl.learner import mean_return

    tasks = Navigation2D(horizon=10, goal_tolerance=0.3)  # episodes near the origin's goals end early
    batch = tasks.sample(6, "test", torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    learner = MetaRL(
        GaussianMLP((2,), 2), MAML(0.1, 1, 2), tasks, shots=4, query_shots=4, test_shots=4, test_transitions=30
    )
    for episodes in learner.trajectories(batch, 2):
        lengths = episodes.lengths
        kept = lengths > 0
        total = lengths.sum(1)
        last = kept.sum(1) - 1  # trajectories are kept from the first one on, then padding only
        assert torch.equal(kept, torch.arange(lengths.shape[1]) <= last.unsqueeze(1))
        assert (total >= 30).all()
        assert (total - lengths.gather(1, last.unsqueeze(1)).squeeze(1) < 30).all()  # the last one was needed
        assert lengths.shape[1] % 4 == 0  # drawn in batches of test_shots
        assert (episodes.rewards[~kept] == 0).all() and (episodes.mask[~kept] == 0).all()
        manual = torch.stack([episodes.returns[t][kept[t]].mean() for t in range(6)])
        assert torch.allclose(mean_return(episodes), manual)
    most = [int((e.lengths > 0).sum(1).max()) for e in learner.trajectories(batch, 2)]
    assert max(most) > 4  # a task whose paths ended early needed a second batch of them
    assert learner.evaluate(batch)["return"].shape == (3, 6)


def test_test_baseline_previous_predicts_with_the_previous_steps_fit():
    """rllab's order: step 0's advantages have no baseline; step k's use the fit on step k - 1's paths."""
    from mamlrun.rl.episodes import fit_baseline, masked_normalize, predict_baseline

    tasks = Navigation2D(horizon=10)
    batch = tasks.sample(3, "test", torch.Generator().manual_seed(2))
    seen = {}
    for order in ("own", "previous"):
        torch.manual_seed(0)
        learner = MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 3), tasks, shots=5, query_shots=5, test_baseline=order)
        recorded = []
        learner.adapt_step = _recording(learner.adapt_step, recorded)
        seen[order] = (learner.trajectories(batch, 3), recorded)
    episodes, adv = seen["previous"]
    assert len(adv) == 3
    returns = [discounted_returns(e.rewards, tasks.discount) for e in episodes]
    assert torch.allclose(adv[0], masked_normalize(returns[0] * episodes[0].mask, episodes[0].mask))
    for k in (1, 2):
        lagged = returns[k] - predict_baseline(episodes[k], fit_baseline(episodes[k - 1], returns[k - 1]))
        assert torch.allclose(adv[k], masked_normalize(lagged * episodes[k].mask, episodes[k].mask), atol=1e-6)
        assert not torch.allclose(adv[k], advantages(episodes[k], tasks.discount), atol=1e-3)
    own_episodes, own_adv = seen["own"]
    for k in range(3):
        assert torch.allclose(own_adv[k], advantages(own_episodes[k], tasks.discount))
    with pytest.raises(MamlrunError, match="test_baseline must be one of own, previous"):
        MetaRL(GaussianMLP((2,), 2), MAML(0.1, 1, 3), tasks, shots=5, query_shots=5, test_baseline="next")


def _recording(adapt_step, advantages_seen: list):
    """``adapt_step`` that also keeps the advantages it is given."""

    def step(params, episodes, adv, lr, create_graph):
        advantages_seen.append(adv)
        return adapt_step(params, episodes, adv, lr, create_graph)

    return step
