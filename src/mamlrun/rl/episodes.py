"""Trajectories of a meta-batch, discounted returns, the linear feature baseline and advantages.

Every tensor keeps the task as its leading dimension: ``[tasks, trajectories, horizon, ...]``.
Steps after an episode terminates are padding: their ``mask`` is 0 and so is their reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Episodes:
    """Trajectories of ``tasks x trajectories`` episodes of at most ``horizon`` steps.

    Attributes:
        obs: ``[tasks, trajectories, horizon, obs_dim]``, the observation each action was taken in.
        actions: ``[tasks, trajectories, horizon, act_dim]``, as sampled (before the env clips them).
        rewards: ``[tasks, trajectories, horizon]``.
        mask: ``[tasks, trajectories, horizon]``, 1.0 for steps that happened.
        speed: ``[tasks, trajectories, horizon]``, the forward velocity of each step (locomotion
            tasks; ``None`` elsewhere), for figures.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    speed: torch.Tensor | None = None

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of every trajectory: ``[tasks, trajectories]``."""
        return self.rewards.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def discounted_returns(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{t' >= t} discount^(t' - t) r_t'`` along the last dimension (one matmul)."""
    horizon = rewards.shape[-1]
    t = torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    lag = t.view(-1, 1) - t.view(1, -1)  # [t', t] = t' - t
    weights = torch.where(lag >= 0, discount ** lag.clamp(min=0), torch.zeros((), dtype=rewards.dtype))
    return rewards @ weights


def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """Features of the linear baseline: observation, its square, time, time^2, time^3 and a constant.

    References:
        Duan et al. 2016, "Benchmarking Deep Reinforcement Learning for Continuous Control" (rllab's
        LinearFeatureBaseline, the baseline of the MAML paper's RL experiments).
    """
    o = obs.clamp(-10, 10)
    horizon = obs.shape[-2]
    t = torch.arange(horizon, device=obs.device, dtype=obs.dtype) / 100.0
    t = t.view(*([1] * (obs.dim() - 2)), horizon, 1).expand(*obs.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], dim=-1)


def fit_baseline(episodes: Episodes, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """One ridge regression per task from features to returns-to-go: coefficients ``[T, features, 1]`` (float64).

    The regulariser grows tenfold (up to five times) when the normal equations are ill-conditioned.
    """
    tasks = returns.shape[0]
    x = baseline_features(episodes.obs).double()
    m = episodes.mask.double().unsqueeze(-1)
    xf = (x * m).reshape(tasks, -1, x.shape[-1])
    gram = xf.transpose(1, 2) @ xf
    rhs = xf.transpose(1, 2) @ (returns.double() * episodes.mask.double()).reshape(tasks, -1, 1)
    eye = torch.eye(x.shape[-1], dtype=gram.dtype, device=gram.device)
    for _ in range(5):
        coef = torch.linalg.solve(gram + reg * eye, rhs)
        if torch.isfinite(coef).all():
            break
        reg *= 10
    return coef


def predict_baseline(episodes: Episodes, coef: torch.Tensor) -> torch.Tensor:
    """The baseline with coefficients ``coef`` (:func:`fit_baseline`) at every step: ``[T, N, H]``."""
    x = baseline_features(episodes.obs).double()
    tasks = x.shape[0]
    return (x.reshape(tasks, -1, x.shape[-1]) @ coef).reshape(x.shape[:-1]).to(episodes.rewards.dtype)


def linear_baseline(episodes: Episodes, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """The linear baseline fitted on the task's own trajectories, at their steps: ``[T, N, H]``.

    Treated as a constant by the policy gradient.
    """
    return predict_baseline(episodes, fit_baseline(episodes, returns, reg))


def masked_normalize(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean and unit variance over each task's valid steps; padding stays 0."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dims, keepdim=True).clamp(min=1)
    mean = (values * mask).sum(dims, keepdim=True) / count
    var = (((values - mean) * mask) ** 2).sum(dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask


def advantages(
    episodes: Episodes,
    discount: float,
    baseline: bool = True,
    normalize: bool = True,
    coef: torch.Tensor | None = None,
) -> torch.Tensor:
    """``G_t - b(s_t)`` per step (``[T, N, H]``, zero on padding), optionally normalised per task.

    ``b`` is the linear baseline fitted on these episodes, or, given ``coef``, the baseline with those
    coefficients (rllab's order: fitted on the task's previous batch); ``baseline=False``: ``b = 0``.
    """
    returns = discounted_returns(episodes.rewards, discount)
    if baseline:
        returns = returns - (linear_baseline(episodes, returns) if coef is None else predict_baseline(episodes, coef))
    adv = returns * episodes.mask
    return masked_normalize(adv, episodes.mask) if normalize else adv
