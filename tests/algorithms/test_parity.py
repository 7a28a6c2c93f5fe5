"""Parity with the peers: learn2learn's MAML / MetaSGD and higher give the same meta-gradients as the engine.

Float64, the same network and the same task batch; one meta-step each. learn2learn is installed by
``make install-l2l`` (``make test`` does it); higher is in requirements.lock.
"""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mamlrun.algorithms import MAML, MetaSGD
from mamlrun.algorithms.metasgd import key
from mamlrun.errors import MamlrunError
from mamlrun.learner import MetaLearner
from tests.algorithms.test_gradients import ALPHA, OBJECTIVES, classification_batch, conv, mlp, regression_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    l2l = pytest.importorskip("learn2learn", reason="learn2learn missing: run `make install-l2l`")
    higher = pytest.importorskip("higher")

pytestmark = pytest.mark.parity
CASES = {
    "mlp": (mlp, regression_batch, "regression", F.mse_loss, ALPHA),
    "conv_bn": (conv, classification_batch, "classification", F.cross_entropy, 0.4),
}


def l2l_meta_grad(wrapper, batch, steps, lossf, params):
    for p in params:
        p.grad = None
    for t in range(batch.num_tasks):
        learner = wrapper.clone()
        for _ in range(steps):
            learner.adapt(lossf(learner(batch.x_support[t]), batch.y_support[t]))
        (lossf(learner(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()
    return torch.cat([p.grad.flatten() for p in params])


def learner_of(cls, model, task_type, lr, steps, first_order=False, strategy="batched"):
    tasks = SimpleNamespace(objective=OBJECTIVES[task_type])
    return MetaLearner(model, cls(lr, steps, steps, first_order=first_order), tasks, strategy=strategy)


def ours(cls, model, case, steps, first_order, strategy):
    _, batch_fn, task_type, _, lr = CASES[case]
    learner = learner_of(cls, model, task_type, lr, steps, first_order, strategy)
    learner.zero_grad()
    learner.meta_gradient(batch_fn())
    return learner


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    ("steps", "first_order"), [(1, False), (3, False), (1, True)], ids=["maml1", "maml3", "fomaml"]
)
@pytest.mark.parametrize("strategy", ["vmap", "batched"])
def test_maml_matches_learn2learn(case, steps, first_order, strategy):
    make, batch_fn, _, lossf, lr = CASES[case]
    model = make()
    learner = ours(MAML, model, case, steps, first_order, strategy)
    mine = torch.cat([p.grad.flatten() for p in model.parameters()])
    theirs = l2l_meta_grad(
        l2l.algorithms.MAML(model, lr=lr, first_order=first_order),
        batch_fn(),
        steps,
        lossf,
        list(model.parameters()),
    )
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)
    assert learner is not None


@pytest.mark.parametrize("case", CASES)
def test_metasgd_matches_learn2learn(case):
    make, batch_fn, _, lossf, lr = CASES[case]
    model = make()
    learner = learner_of(MetaSGD, model, CASES[case][2], lr, 2)
    with torch.no_grad():
        for p in learner.algorithm.step_sizes.values():
            p.uniform_(0.5 * lr, 1.5 * lr)
    learner.zero_grad()
    learner.meta_gradient(batch_fn())
    names = [n for n, _ in model.named_parameters()]
    lrs = [learner.algorithm.step_sizes[key(n)] for n in names]
    mine = torch.cat([p.grad.flatten() for p in [*model.parameters(), *lrs]])
    wrapper = l2l.algorithms.MetaSGD(model, lr=lr)
    with torch.no_grad():
        for theirs, mine_lr in zip(wrapper.lrs, lrs):
            theirs.copy_(mine_lr)
    theirs = l2l_meta_grad(wrapper, batch_fn(), 2, lossf, [*model.parameters(), *wrapper.lrs])
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_maml_matches_higher(case, steps):
    make, batch_fn, _, lossf, lr = CASES[case]
    model = make()
    ours(MAML, model, case, steps, False, "batched")
    mine = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    batch = batch_fn()
    inner = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(batch.num_tasks):
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(lossf(fmodel(batch.x_support[t]), batch.y_support[t]))
            (lossf(fmodel(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()
    theirs = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cls_name", ["Learn2LearnMAML", "Learn2LearnMetaSGD"])
def test_the_learn2learn_backend_trains_with_the_same_gradients(cls_name):
    from mamlrun.algorithms import l2l as backend

    reference_cls = MAML if cls_name == "Learn2LearnMAML" else MetaSGD
    grads = []
    for cls in (reference_cls, getattr(backend, cls_name)):
        learner = learner_of(cls, conv(), "classification", 0.4, 2)
        learner.zero_grad()
        stats = learner.meta_gradient(classification_batch())
        grads.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
        assert set(stats) == {"loss", "acc"}
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-11)


def test_missing_learn2learn_names_the_install_command(monkeypatch):
    from mamlrun.algorithms.l2l import import_learn2learn

    monkeypatch.setitem(sys.modules, "learn2learn", None)
    with pytest.raises(MamlrunError, match="make install-l2l"):
        import_learn2learn()
