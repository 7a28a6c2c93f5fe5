"""LEO: the generator's shapes, the latent step against finite differences, the meta-gradient, a learning run."""

from __future__ import annotations

import pytest
import torch

from mamlrun.algorithms.leo import LEO
from mamlrun.errors import MamlrunError
from tests.algorithms.test_bayesian import directional_derivatives
from tests.algorithms.test_gradients import classification_batch, conv, make, mlp, regression_batch


def leo(model, task_type, **kw):
    kw = {"latent_dim": 4, "finetune_steps": 2, **kw}
    learner = make(LEO, model, task_type, strategy="batched", **kw)
    learner.chosen_strategy = "batched"
    return learner


def test_generated_weights_have_one_row_per_class_or_the_output_layer_per_task():
    learner, batch = leo(conv(), "classification"), classification_batch(tasks=2)
    hq, (mean, std, _, adapted), weights = learner.algorithm.adapt_task(learner, batch, 3, False, True)
    assert mean.shape == std.shape == adapted.shape == (2, 3, 4)  # tasks, ways, latent_dim
    assert len(weights) == 1 + 3 + 2  # before, after every latent step, after every fine-tuning step
    assert weights[-1].shape == (2, 3, hq.shape[-1])
    assert learner.algorithm.logits(weights[-1], hq).shape == (2, batch.x_query.shape[1], 3)
    reg = leo(mlp(), "regression")
    rb = regression_batch(tasks=2)
    hq, (mean, *_), weights = reg.algorithm.adapt_task(reg, rb, 1, False, True)
    assert mean.shape == (2, 1, 4) and weights[-1].shape == (2, 1, 16 + 1)  # one code; weights and bias
    assert reg.algorithm.logits(weights[-1], hq).shape == rb.y_query.shape


def test_the_latent_step_is_a_gradient_step_on_the_support_loss_by_finite_differences():
    learner, batch = leo(conv(), "classification"), classification_batch(tasks=2)
    algorithm = learner.algorithm
    with torch.no_grad():
        algorithm.latent_lr.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
    with torch.no_grad():
        _, (_, _, z0, z1), _ = algorithm.adapt_task(learner, batch, 1, False, True)
        meta = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in learner.meta_params().items()}
        hs = algorithm.body(meta, batch.x_support)

        def loss(z):
            return learner.objective.task_losses(
                algorithm.logits(algorithm.decode(z, False), hs), batch.y_support
            ).sum()

        numeric = torch.zeros_like(z0)
        eps = 1e-6
        for i in range(z0.numel()):
            step = torch.zeros(z0.numel(), dtype=z0.dtype)
            step[i] = eps
            numeric.view(-1)[i] = (loss(z0 + step.view_as(z0)) - loss(z0 - step.view_as(z0))) / (2 * eps)
    torch.testing.assert_close(z1, z0 - algorithm.latent_lr * numeric, rtol=1e-6, atol=1e-9)


def leo_loss(learner, batch, seed=7):
    torch.manual_seed(seed)
    return learner.algorithm.meta_loss(learner, batch)[0].mean()


def test_leo_meta_gradient_matches_finite_differences():
    # encoder_penalty = 0: its stop-gradient on the adapted code is, by design, not the derivative
    learner, batch = (
        leo(mlp(), "regression", kl_weight=0.1, encoder_penalty=0.0, orthogonality_penalty=0.1),
        regression_batch(tasks=3),
    )
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(leo_loss(learner, batch), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    analytic, numeric = directional_derivatives(lambda: leo_loss(learner, batch), params, grads, seed=1)
    assert analytic == pytest.approx(numeric, rel=1e-5)
    named = dict(zip([n for n, p in learner.named_parameters() if p.requires_grad], grads))
    for part in ("encoder", "relation", "decoder", "latent_lr", "finetune_lr"):
        assert any(g.abs().sum() > 0 for n, g in named.items() if f"algorithm.{part}" in n), part
    assert named["model.0.weight"].abs().sum() > 0  # the body is meta-learned
    assert named["model.4.weight"].abs().sum() == 0  # the network's own output layer is generated instead


def test_leo_needs_a_final_linear_layer():
    with pytest.raises(MamlrunError, match="linear layer"):
        make(LEO, torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU()).double(), "regression")
