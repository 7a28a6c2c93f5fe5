"""The batched kernels: the same values and derivatives (to second order) as one network per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from mamlrun.models import MLP, Conv4
from mamlrun.models.batched import Grouped, batched_forward, layer_forward
from mamlrun.models.convolution import grouped_conv2d
from mamlrun.models.layers import BatchNorm


def _double(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(
    ("size", "stride", "bias", "tasks"),
    [(5, 2, True, 2), (6, 2, False, 2), (4, 1, True, 2), (5, 2, True, 1), (6, 2, True, 3)],
)
def test_grouped_conv_equals_per_task_conv_to_second_order(size, stride, bias, tasks):
    n, cin, cout = 2, 2, 2
    x = _double(n, tasks * cin, size, size, seed=1)
    w = _double(tasks * cout, cin, 3, 3, seed=2)
    b = _double(tasks * cout, seed=3) if bias else None

    def ours(x, w, b=None):
        return grouped_conv2d(x, w, b, stride, 1, 1, tasks)

    def reference(x, w, b=None):
        xs, ws = x.chunk(tasks, 1), w.chunk(tasks, 0)
        bs = b.chunk(tasks) if b is not None else [None] * tasks
        return torch.cat([F.conv2d(a, c, d, stride, 1) for a, c, d in zip(xs, ws, bs)], 1)

    inputs = (x, w, b) if bias else (x, w)
    torch.testing.assert_close(ours(*inputs), reference(*inputs), rtol=1e-12, atol=1e-12)
    # First and second derivatives against finite differences (gradcheck) ...
    assert gradcheck(ours, inputs, fast_mode=True)
    assert gradgradcheck(ours, inputs, fast_mode=True)
    # ... and against the per-task convolutions' autograd, including a Hessian-vector product.
    v = torch.randn_like(ours(*inputs))
    g_ours = torch.autograd.grad((ours(*inputs) * v).sum(), inputs, create_graph=True)
    g_ref = torch.autograd.grad((reference(*inputs) * v).sum(), inputs, create_graph=True)
    for a, c in zip(g_ours, g_ref):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    hv_ours = torch.autograd.grad(sum((g**2).sum() for g in g_ours), inputs, materialize_grads=True)
    hv_ref = torch.autograd.grad(sum((g**2).sum() for g in g_ref), inputs, materialize_grads=True)
    for a, c in zip(hv_ours, hv_ref):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_grouped_batch_norm_is_each_tasks_batch_norm_to_second_order():
    tasks, n, c = 2, 3, 2
    layer = BatchNorm(c)
    w, b = _double(tasks, c, seed=4), _double(tasks, c, seed=5)

    def ours(x, w, b):
        g = layer_forward(layer, {"weight": w, "bias": b}, Grouped.of(x), "")
        return g.tasks_first()

    def reference(x, w, b):
        return torch.stack([functional_call(layer, {"weight": w[t], "bias": b[t]}, (x[t],)) for t in range(tasks)])

    x = _double(tasks, n, c, 2, 2, seed=6)
    torch.testing.assert_close(ours(x, w, b), reference(x, w, b), rtol=1e-12, atol=1e-12)
    assert gradcheck(ours, (x, w, b), fast_mode=True)
    assert gradgradcheck(ours, (x, w, b), fast_mode=True)


@pytest.mark.parametrize(
    "model",
    [
        lambda: Conv4((1, 12, 12), 3, filters=4),
        lambda: Conv4((3, 16, 16), 3, filters=4, pool="max"),
        lambda: MLP((6, 6), 3, hidden=(8, 8), batch_norm=True),
    ],
    ids=["conv4_stride", "conv4_max", "mlp_bn"],
)
def test_batched_forward_equals_each_tasks_forward(model):
    torch.manual_seed(0)
    net = model().double()
    tasks = 3
    params = {k: v.detach() + 0.1 * torch.randn(tasks, *v.shape, dtype=v.dtype) for k, v in net.named_parameters()}
    shape = (3, 16, 16) if isinstance(net, Conv4) and net.pool == "max" else (1, 12, 12)
    x = torch.randn(tasks, 5, *(shape if isinstance(net, Conv4) else (6, 6)), dtype=torch.float64)
    expected = torch.stack([functional_call(net, {k: v[t] for k, v in params.items()}, (x[t],)) for t in range(tasks)])
    torch.testing.assert_close(batched_forward(net, params, x), expected, rtol=1e-12, atol=1e-12)


def test_unsupported_layers_are_refused():
    with pytest.raises(TypeError, match="Tanh"):
        layer_forward(nn.Tanh(), {}, torch.zeros(2, 3, 4), "")


@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("differentiated", [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)])
def test_grouped_conv_second_order_term_equals_pytorchs_for_every_subset_of_inner_gradients(tasks, differentiated):
    """A MAML-like use: a function of the gradient with respect to some inputs, differentiated again.

    The inner gradients that are not taken leave cotangents undefined (``None``) in the closed-form
    double backward; every branch must still give PyTorch's own second derivative.
    """
    x, w, b = _double(3, tasks * 2, 7, 7, seed=7), _double(tasks * 4, 2, 3, 3, seed=8), _double(tasks * 4, seed=9)
    c = torch.randn(3, tasks * 4, 4, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    results = []
    for f in (grouped_conv2d, lambda *a: F.conv2d(*a[:6], a[6] * a[7])):
        y = f(x, w, b, 2, 1, 1, tasks, 1)
        loss = (y * c).sum() ** 2 / (1 + (y**3 * c).sum().abs())
        inner = torch.autograd.grad(loss, [(x, w, b)[i] for i in differentiated], create_graph=True)
        outer = sum((g * torch.sin(g)).sum() for g in inner)
        results.append(torch.autograd.grad(outer, (x, w, b), allow_unused=True, materialize_grads=True))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
