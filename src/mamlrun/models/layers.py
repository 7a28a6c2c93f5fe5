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
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return batch_norm(x, self.weight.view(shape), self.bias.view(shape), (0, *range(2, x.dim())), self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, transductive"


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dims: tuple[int, ...], eps: float):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with statistics over ``dims`` of ``x``.

    ``weight`` and ``bias`` broadcast against the statistics (``keepdim`` shape). The population
    variance and the mean come from one ``var_mean`` pass, and the affine transform is folded into
    the normalisation (one ``addcmul`` on the full-size tensor instead of three elementwise
    operations), which roughly halves the full-size tensors that the first and second derivatives
    have to traverse. Plain tensor operations throughout: exact under ``torch.func`` to any order.
    """
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return torch.addcmul(bias, x - mean, weight * torch.rsqrt(var + eps))
