"""The batch norm with a closed-form double backward: the same function and derivatives as PyTorch's."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mamlrun.models.batch_norm import batch_norm

SHAPES = [(6, 3, 4, 4), (7, 5)]


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = (shape, shape[1:2], shape[1:2])
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def ours(x, w, b):
    return batch_norm(x, w, b, 1e-5)


def torchs(x, w, b):
    return F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_first_and_second_derivatives_match_finite_differences(shape):
    inputs = tuple(_inputs(shape))
    torch.testing.assert_close(ours(*inputs), torchs(*inputs), rtol=1e-12, atol=1e-12)
    assert gradcheck(ours, inputs)
    assert gradgradcheck(ours, inputs)


@pytest.mark.parametrize(
    ("shape", "differentiated"),
    list(itertools.product(SHAPES, [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)])),
)
def test_second_order_term_equals_pytorchs_for_every_subset_of_inner_gradients(shape, differentiated):
    """A MAML-like use: a function of the gradient with respect to some inputs, differentiated again.

    The inner gradients that are not taken leave their cotangents undefined (``None``) in the
    closed form; each branch must still give PyTorch's own second derivative.
    """
    x, w, b = _inputs(shape, seed=1)
    c = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for f in (ours, torchs):
        y = f(x, w, b)
        loss = (y * c).sum() ** 2 / (1 + (y**3 * c).sum().abs())
        inner = torch.autograd.grad(loss, [(x, w, b)[i] for i in differentiated], create_graph=True)
        outer = sum((g * torch.sin(g)).sum() for g in inner)
        results.append(torch.autograd.grad(outer, (x, w, b), allow_unused=True))
    for a, r in zip(*results):
        if r is None:
            assert a is None or not a.abs().max()
        else:
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_under_torch_func_it_is_pytorchs_batch_norm():
    x, w, b = (t.detach() for t in _inputs((4, 2, 3, 3)))
    g = torch.func.grad(lambda w: ours(x, w, b).pow(3).sum())(w)
    torch.testing.assert_close(g, torch.func.grad(lambda w: torchs(x, w, b).pow(3).sum())(w))
