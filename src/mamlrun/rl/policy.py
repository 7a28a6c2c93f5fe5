"""The Gaussian MLP policy, evaluated with per-task parameters for a whole meta-batch at once."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from mamlrun.algorithms.inner import expand

Params = dict[str, torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


class GaussianMLP(nn.Module):
    """A diagonal Gaussian policy: an MLP gives the mean, a learned state-independent log-std.

    Args:
        input_shape: ``(obs_dim,)``.
        output_dim: action dimension.
        hidden: hidden layer widths (the paper: two layers of 100 ReLU units).
        init_std: initial standard deviation of every action dimension.

    References:
        Finn et al. 2017, section 5.3 (policy network); Schulman et al. 2015 (TRPO's Gaussian MLP policy).
    """

    rl_only = True  # a policy: supervised learners refuse it

    def __init__(
        self, input_shape: tuple[int, ...], output_dim: int, hidden: tuple[int, ...] = (100, 100), init_std: float = 1.0
    ) -> None:
        super().__init__()
        sizes = [int(input_shape[-1]), *hidden, output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.log_std = nn.Parameter(torch.full((output_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action (a deterministic policy)."""
        for i, layer in enumerate(self.layers):
            obs = layer(obs)
            if i < len(self.layers) - 1:
                obs = torch.relu(obs)
        return obs

    def batched_params(self, tasks: int) -> Params:
        """The meta-parameters viewed once per task (differentiable back to them)."""
        return expand(dict(self.named_parameters()), tasks)

    def distribution(self, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[T, M, act]`` and log-std ``[T, 1, act]`` for per-task ``params`` and ``obs`` ``[T, M, obs]``."""
        h = obs
        for i in range(len(self.layers)):
            w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h, params["log_std"].unsqueeze(1)


def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-density of ``actions`` under the diagonal Gaussian, summed over action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)


def kl_divergence(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """``KL(p || q)`` between diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)
