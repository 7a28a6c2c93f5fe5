"""Layers that stay exact under ``torch.func`` transforms."""

from __future__ import annotations

import torch
from torch import nn


class BatchNorm(nn.Module):
    """Batch norm that always uses the current batch's statistics (no running averages).

    This is the paper's transductive batch norm: at training and at test time each batch (a
    task's support set, or its query set) is normalised with its own per-channel mean and
    population variance, followed by a learned affine transform. Inputs are ``[N, C]`` or
    ``[N, C, H, W]``.

    It is written with elementary tensor operations rather than ``torch.nn.BatchNorm*``: under
    ``vmap(grad(...))`` with an outer backward (second-order MAML with batched tasks), the
    batching rule of PyTorch's fused batch-norm backward gives wrong second-order gradients for
    the affine parameters (pytorch/functorch#534; reproduced with torch 2.13 in
    ``tests/models/test_layers.py``). The forward value equals ``nn.BatchNorm*d`` with
    ``track_running_stats=False``.

    References:
        Ioffe, Szegedy. "Batch Normalization." ICML 2015. Finn et al. 2017, section 5.2 (batch
        statistics at test time).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, *range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, transductive"
