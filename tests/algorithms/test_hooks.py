"""ANIL, MAML++ and a new algorithm from one file: the hooks of the one inner loop, against float64 references.

The references are per-task ``torch.autograd`` loops written from the papers' equations; they share
no code with the engine except the network.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlrun.algorithms import ANIL, MAML, MAMLPlusPlus
from mamlrun.algorithms.mamlpp import msl_weights
from mamlrun.algorithms.metasgd import key
from tests.algorithms.test_gradients import (
    STRATEGIES,
    classification_batch,
    conv,
    make,
    meta_grad,
    mlp,
    regression_batch,
)

ALPHA = 0.01


def reference(model, batch, steps, first_order, lossf, adapts=None, rates=None, step_params=None, weights=None):
    """Meta-gradient of the (weighted) query losses of a per-task loop, w.r.t. every given tensor.

    ``adapts``: names that adapt (default all); ``rates(k, name)``: step sizes; ``step_params(p, k)``:
    the parameters the forward at step ``k`` uses; ``weights``: query-loss weights of steps 1..K.
    """
    names = [n for n, _ in model.named_parameters()]
    adapts = names if adapts is None else adapts
    rates = rates or (lambda k, n: ALPHA)
    step_params = step_params or (lambda p, k: p)
    total = 0
    for t in range(batch.num_tasks):
        params = dict(model.named_parameters())
        losses = []
        for k in range(steps):
            out = functional_call(model, step_params(params, k), (batch.x_support[t],))
            inner = lossf(out, batch.y_support[t])
            grads = torch.autograd.grad(inner, [params[n] for n in adapts], create_graph=not first_order)
            params = {**params, **{n: params[n] - rates(k, n) * g for n, g in zip(adapts, grads)}}
            out = functional_call(model, step_params(params, k + 1), (batch.x_query[t],))
            losses.append(lossf(out, batch.y_query[t]))
        w = [0.0] * (steps - 1) + [1.0] if weights is None else weights
        total = total + sum(wk * lk for wk, lk in zip(w, losses))
    return total / batch.num_tasks


def grads_of(value, tensors):
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, tensors, allow_unused=False)])


# -- ANIL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_anil_meta_gradient_equals_the_reference_and_only_the_head_adapts(strategy, first_order):
    model, batch = conv(), classification_batch()
    learner = make(ANIL, model, "classification", steps=2, first_order=first_order, strategy=strategy)
    head = ["head.weight", "head.bias"]
    assert learner.algorithm.head_names == head
    ref = reference(model, batch, 2, first_order, F.cross_entropy, adapts=head)
    expected = grads_of(ref, list(model.parameters()))
    torch.testing.assert_close(meta_grad(learner, batch), expected, rtol=1e-9, atol=1e-11)
    # The body gets no inner update: after adaptation its parameters are the meta-parameters.
    learner.chosen_strategy = learner.strategy_name
    adapted = learner.adapt(batch.x_support, batch.y_support, 2, first_order=True)[-1]
    for name, p in model.named_parameters():
        same = torch.equal(adapted[name], p.detach().expand_as(adapted[name]))
        assert same == (name not in head), name


def test_anil_body_gradient_is_second_order_through_the_head():
    """Second order differs from first order in the body, through the head's adaptation only."""
    model, batch = mlp(), regression_batch()
    second = meta_grad(make(ANIL, model, steps=1), batch)
    first = meta_grad(make(ANIL, model, steps=1, first_order=True), batch)
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("6."))
    assert (second[:body] - first[:body]).norm() > 1e-4 * second[:body].norm()


@pytest.mark.parametrize("net", ["conv", "mlp"])
def test_anil_batched_path_runs_the_body_once_per_set_and_matches_the_masked_maml(net):
    """The cheap path (body once on support and query, head adapted on features) is taken and is exact."""
    model, batch, kind = (
        (conv(), classification_batch(), "classification")
        if net == "conv"
        else (
            mlp(),
            regression_batch(),
            "regression",
        )
    )
    fast = make(ANIL, model, kind, steps=3, strategy="batched")
    calls = []
    body = fast.algorithm.body
    fast.algorithm.body = lambda p, x: calls.append(x.shape) or body(p, x)
    masked = make(ANIL, model, kind, steps=3, strategy="vmap")  # MAML's computation, the body's update masked
    torch.testing.assert_close(meta_grad(fast, batch), meta_grad(masked, batch), rtol=1e-9, atol=1e-12)
    assert calls == [batch.x_support.shape, batch.x_query.shape]
    # Evaluation (statistics after 0..4 steps) takes the same path, with the same values.
    fast_eval, masked_eval = fast.evaluate(batch, steps=4), masked.evaluate(batch, steps=4)
    assert len(calls) == 4 and set(fast_eval) == set(masked_eval) == set(fast.stat_names)
    for name in fast_eval:
        assert fast_eval[name].shape == (5, batch.num_tasks)
        torch.testing.assert_close(fast_eval[name], masked_eval[name], rtol=1e-9, atol=1e-12)


# -- MAML++ ----------------------------------------------------------------------------------------
def test_msl_weights_sum_to_one_and_anneal_to_the_last_step():
    previous = None
    for epoch in range(12):
        w = msl_weights(5, epoch, 10)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12) and (w > 0).all()
        if previous is not None:
            assert (w[:-1] <= previous[:-1]).all() and w[-1] >= previous[-1]
        previous = w
    assert torch.allclose(msl_weights(5, 0, 10), torch.full((5,), 0.2, dtype=torch.float64))
    assert msl_weights(5, 10, 10)[:-1].tolist() == pytest.approx([0.006] * 4)
    algo = MAMLPlusPlus(0.1, 5, 5, msl_epochs=2, iterations_per_epoch=3)
    algo.start_iteration(5)
    assert algo.step_weights() is not None
    algo.start_iteration(6)  # epoch 2: the last step's loss alone
    assert algo.step_weights() is None


def test_derivative_order_annealing_switches_at_the_configured_iteration():
    model, batch = mlp(), regression_batch()
    learner = make(
        MAMLPlusPlus,
        model,
        steps=2,
        first_order_epochs=1,
        iterations_per_epoch=3,
        multi_step_loss=False,
        per_step_batch_norm=False,
        learned_step_sizes=False,
    )
    refs = {fo: grads_of(reference(model, batch, 2, fo, F.mse_loss), list(model.parameters())) for fo in (True, False)}
    for iteration, first_order in ((0, True), (2, True), (3, False), (7, False)):
        learner.start_iteration(iteration)
        assert learner.algorithm.use_first_order() == first_order
        torch.testing.assert_close(meta_grad(learner, batch), refs[first_order], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mamlpp_meta_gradient_equals_the_reference_with_every_fix(strategy):
    """MSL + LSLR + per-step batch norm on the conv net, second order, against a per-task loop."""
    model, batch = conv(), classification_batch()
    steps = 3
    learner = make(MAMLPlusPlus, model, "classification", steps=steps, strategy=strategy, iterations_per_epoch=2)
    algo = learner.algorithm
    with torch.no_grad():  # make every per-step tensor differ, so that the test sees which one is used
        for p in algo.step_sizes.values():
            p.uniform_(0.05, 0.5)
        for p in algo.bn_params.values():
            p.add_(0.1 * torch.randn_like(p))
    learner.start_iteration(5)  # epoch 2 of 10: annealed, not uniform, weights
    weights = algo.step_weights()
    assert weights is not None and not torch.allclose(weights, weights[0])
    bn = algo.bn_names
    assert len(bn) == 8 and all(".1." in n or ".4." in n or ".7." in n or ".10." in n for n in bn)

    def rates(k, n):
        return algo.step_sizes[key(n)][k]

    def step_params(p, k):
        return {**p, **{n: algo.bn_params[key(n)][k] for n in bn}}

    adapts = [n for n, _ in model.named_parameters() if n not in bn]
    ref = reference(model, batch, steps, False, F.cross_entropy, adapts, rates, step_params, weights.tolist())
    tensors = [*model.parameters(), *algo.parameters()]
    expected = grads_of_used(ref, tensors)
    learner.zero_grad()
    learner.meta_gradient(batch)
    ours = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in tensors])
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-11)
    # The learned rates get gradients; the network's own batch-norm parameters are replaced per step.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.step_sizes.values())
    assert all(dict(model.named_parameters())[n].grad is None for n in bn)


def grads_of_used(value, tensors):
    grads = torch.autograd.grad(value, tensors, allow_unused=True)
    return torch.cat([torch.zeros_like(t).flatten() if g is None else g.flatten() for t, g in zip(tensors, grads)])


def test_mamlpp_with_every_fix_off_is_maml():
    model, batch = conv(), classification_batch()
    off = dict(multi_step_loss=False, per_step_batch_norm=False, learned_step_sizes=False)
    plain = meta_grad(make(MAML, model, "classification", steps=2), batch)
    torch.testing.assert_close(meta_grad(make(MAMLPlusPlus, model, "classification", steps=2, **off), batch), plain)
