"""Mamlrun's batch norm: same forward as PyTorch's, exact second order under vmap where PyTorch's is not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from mamlrun.models import MLP, Conv4
from mamlrun.models.layers import BatchNorm


@pytest.mark.parametrize("shape", [(7, 5), (6, 4, 3, 3)])
def test_forward_equals_torch_batch_norm_without_running_stats(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    ours = BatchNorm(shape[1]).double()
    theirs = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1], track_running_stats=False).double()
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-1, 1)
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), theirs(x))


def vmap_vs_loop_second_order(norm: nn.Module) -> float:
    """Max difference between vmap(grad) and a per-task loop for one second-order MAML step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), norm, nn.ReLU(), nn.Linear(8, 3)).double()
    theta = dict(model.named_parameters())
    xs, xq = torch.randn(3, 6, 6, dtype=torch.float64), torch.randn(3, 6, 6, dtype=torch.float64)
    y = torch.arange(3).repeat(2).repeat(3, 1)

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x,)), t)

    def task(a, b, c, d):
        g = grad(loss)(theta, a, b)
        return loss({k: theta[k] - 0.4 * g[k] for k in theta}, c, d)

    batched = torch.autograd.grad(vmap(task)(xs, y, xq, y).mean(), list(theta.values()))
    total = 0
    for t in range(3):
        g = torch.autograd.grad(loss(theta, xs[t], y[t]), list(theta.values()), create_graph=True)
        total = total + loss({k: v - 0.4 * gi for (k, v), gi in zip(theta.items(), g)}, xq[t], y[t]) / 3
    looped = torch.autograd.grad(total, list(theta.values()))
    return max((a - b).abs().max().item() for a, b in zip(batched, looped))


def test_our_batch_norm_is_exact_under_vmap_second_order():
    assert vmap_vs_loop_second_order(BatchNorm(8)) < 1e-12


def test_torch_batch_norm_under_vmap_second_order_is_still_wrong():
    """Why BatchNorm exists. If this starts failing, PyTorch fixed pytorch/functorch#534."""
    assert vmap_vs_loop_second_order(nn.BatchNorm1d(8, track_running_stats=False)) > 1e-6


def test_models_use_the_exact_batch_norm():
    for model in (Conv4((1, 28, 28), 5), MLP((28, 28), 5, hidden=(256, 128), batch_norm=True)):
        kinds = {type(m) for m in model.modules()}
        assert BatchNorm in kinds and not kinds & {nn.BatchNorm1d, nn.BatchNorm2d}


@pytest.mark.parametrize(("pool", "filters", "size", "features"), [("stride", 64, 28, 64), ("max", 32, 84, 800)])
def test_conv4_shapes_follow_the_paper(pool, filters, size, features):
    model = Conv4((3 if pool == "max" else 1, size, size), 5, filters=filters, pool=pool)
    assert model.head.in_features == features
    assert model(torch.randn(4, 3 if pool == "max" else 1, size, size)).shape == (4, 5)
