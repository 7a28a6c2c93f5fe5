"""EMAML and BMAML against float64 references written from the papers' equations.

The references loop over tasks and particles with ``torch.autograd`` and share no code with the
engine except the network and the objectives.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlrun.algorithms import MAML
from mamlrun.algorithms.bmaml import BMAML, svgd_direction
from mamlrun.algorithms.emaml import EMAML
from mamlrun.algorithms.metasgd import key
from mamlrun.algorithms.platipus import PLATIPUS
from mamlrun.objectives import Classification, Regression, ensemble_log_probs
from tests.algorithms.test_gradients import (
    ALPHA,
    STRATEGIES,
    classification_batch,
    conv,
    make,
    meta_grad,
    mlp,
    regression_batch,
    smooth_mlp,
)


def particle_params(learner) -> list[dict[str, torch.Tensor]]:
    """Particle m's initial parameters, as the reference sees them (leaves of the learner)."""
    model, algorithm = learner.model, learner.algorithm
    out = [dict(model.named_parameters())]
    for m in range(algorithm.particles - 1):
        out.append({n: algorithm.other_particles[key(n)][m] for n, _ in model.named_parameters()})
    return out


def svgd_by_hand(thetas: list[torch.Tensor], scores: list[torch.Tensor], h: float) -> list[torch.Tensor]:
    """``phi_m = 1/M sum_j [k(theta_j, theta_m) score_j + d/dtheta_j k(theta_j, theta_m)]``, term by term."""
    m_count = len(thetas)
    phis = []
    for m in range(m_count):
        total = torch.zeros_like(thetas[m])
        for j in range(m_count):
            diff = thetas[j] - thetas[m]
            k = torch.exp(-(diff @ diff) / h)
            total = total + k * scores[j] - 2.0 / h * diff * k
        phis.append(total / m_count)
    return phis


def median_bandwidth(thetas: list[torch.Tensor]) -> float:
    """``med^2 / log M`` over the full matrix of squared distances (diagonal included), lower median."""
    sq = torch.stack([torch.stack([(a - b) @ (a - b) for b in thetas]) for a in thetas]).flatten()
    return (sq.sort().values[(sq.numel() - 1) // 2] / math.log(len(thetas))).item()


# -- SVGD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth", [0.7, None], ids=["fixed", "median"])
def test_svgd_direction_equals_the_hand_computed_update(bandwidth):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)  # 2 tasks, 3 particles, 4 dims
    score = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    phi = svgd_direction(theta, score, bandwidth)
    for t in range(2):
        thetas, scores = list(theta[t]), list(score[t])
        h = bandwidth if bandwidth is not None else median_bandwidth(thetas)
        torch.testing.assert_close(phi[t], torch.stack(svgd_by_hand(thetas, scores, h)), rtol=1e-12, atol=1e-12)


def test_svgd_with_one_particle_is_the_score():
    theta, score = torch.randn(3, 1, 5, dtype=torch.float64), torch.randn(3, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(svgd_direction(theta, score), score, rtol=0, atol=0)


def test_svgd_repulsion_pushes_identical_scores_apart():
    """With equal scores the kernel's gradient moves particles away from each other."""
    theta = torch.tensor([[[0.0], [0.1]]], dtype=torch.float64)
    phi = svgd_direction(theta, torch.zeros_like(theta), bandwidth=1.0)
    assert phi[0, 0, 0] < 0 < phi[0, 1, 0]


# -- EMAML ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_emaml_particles_get_exactly_their_own_maml_meta_gradients(strategy):
    model, batch = mlp(), regression_batch()
    learner = make(EMAML, model, "regression", steps=2, strategy=strategy, particles=3)
    got = meta_grad(learner, batch)
    # The same meta-gradient from three MAML learners, each initialised at one particle.
    expected = []
    for params in particle_params(learner):
        copy_model = mlp()
        with torch.no_grad():
            for n, p in copy_model.named_parameters():
                p.copy_(params[n])
        maml = make(MAML, copy_model, "regression", steps=2, strategy=strategy)
        maml.zero_grad()
        maml.meta_gradient(batch)
        expected.append({n: p.grad for n, p in copy_model.named_parameters()})
    # The network is particle 0; the algorithm holds each parameter's stack of the other particles.
    names = {key(n): n for n, _ in model.named_parameters()}
    flat = [
        expected[0][name.removeprefix("model.")].flatten()
        if name.startswith("model.")
        else torch.stack([e[names[name.rpartition(".")[2]]] for e in expected[1:]]).flatten()
        for name, _ in learner.named_parameters()
    ]
    torch.testing.assert_close(got, torch.cat(flat), rtol=1e-10, atol=1e-12)


def test_emaml_particles_start_apart_and_one_particle_is_maml():
    model, batch = mlp(), regression_batch()
    learner = make(EMAML, model, "regression", particles=4)
    firsts = [p["0.weight"] for p in particle_params(learner)]
    assert all(not torch.equal(firsts[0], w) for w in firsts[1:])
    single = make(EMAML, mlp(), "regression", particles=1)
    torch.testing.assert_close(meta_grad(single, batch), meta_grad(make(MAML, mlp(), "regression"), batch))


def test_ensemble_evaluation_scores_the_averaged_prediction():
    model, batch = conv(), classification_batch()
    learner = make(EMAML, model, "classification", strategy="batched", particles=3)
    outputs = learner.predictions(batch, 1)  # [steps + 1, tasks, particles, n, ways]
    assert outputs.shape[:3] == (2, batch.num_tasks, 3)
    metrics = learner.evaluate(batch, 1)
    assert set(metrics) == {"loss", "acc"}
    probs = F.softmax(outputs[1], -1).mean(1)
    expected = F.nll_loss(probs.log().flatten(0, 1), batch.y_query.flatten(), reduction="none").view(3, -1).mean(1)
    torch.testing.assert_close(metrics["loss"][1], expected)
    torch.testing.assert_close(metrics["acc"][1], (probs.argmax(-1) == batch.y_query).double().mean(1))


def test_regression_predictive_statistics_follow_their_definitions():
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(2, 5, 7, 1, generator=g, dtype=torch.float64)
    y = torch.randn(2, 7, 1, generator=g, dtype=torch.float64)
    mse, nll, coverage = Regression(noise_std=0.3).predictive_stats(samples, y)
    mean, var = samples.mean(1), samples.var(1, unbiased=False) + 0.09
    torch.testing.assert_close(mse, ((mean - y) ** 2).flatten(1).mean(1))
    gauss = torch.distributions.Normal(mean, var.sqrt())
    torch.testing.assert_close(nll, -gauss.log_prob(y).flatten(1).mean(1))
    inside = (y >= gauss.icdf(torch.tensor(0.025))) & (y <= gauss.icdf(torch.tensor(0.975)))
    torch.testing.assert_close(coverage, inside.double().flatten(1).mean(1))
    # a point estimate (one sample) has the predictive of its observation noise alone
    point = Regression(noise_std=0.3).predictive_stats(samples[:, :1], y)
    torch.testing.assert_close(point[1], -torch.distributions.Normal(samples[:, 0], 0.3).log_prob(y).flatten(1).mean(1))
    one = ensemble_log_probs(torch.randn(2, 1, 4, 3, dtype=torch.float64))
    torch.testing.assert_close(one.exp().sum(-1), torch.ones(2, 4, dtype=torch.float64))
    assert Classification().predictive_names == ("loss", "acc")


# -- BMAML ------------------------------------------------------------------------------------------
def chaser_by_hand(starts, neg_log_posterior, batch, steps, leader_steps, lr, first_order, distance=slice(None)):
    """The chaser loss of a per-task, per-particle loop of SVGD steps (median-heuristic bandwidth).

    ``starts``: every particle as a flat vector; ``neg_log_posterior(theta, x, y)``: the score's
    potential; ``distance``: the entries of a particle the chaser-to-leader distance counts.
    """

    def svgd_steps(thetas, x, y, count, graph):
        for _ in range(count):
            scores = [-torch.autograd.grad(neg_log_posterior(th, x, y), th, create_graph=graph)[0] for th in thetas]
            h = median_bandwidth([th.detach() for th in thetas])
            usable = thetas if graph else [th.detach() for th in thetas]
            thetas = [th + lr * phi for th, phi in zip(thetas, svgd_by_hand(usable, scores, h))]
        return thetas

    total = 0
    for t in range(batch.num_tasks):
        chaser = svgd_steps(list(starts), batch.x_support[t], batch.y_support[t], steps, not first_order)
        x_all = torch.cat([batch.x_support[t], batch.x_query[t]])
        y_all = torch.cat([batch.y_support[t], batch.y_query[t]])
        leader = [th.detach().requires_grad_() for th in chaser]
        leader = [th.detach() for th in svgd_steps(leader, x_all, y_all, leader_steps, False)]
        total = total + sum(((c[distance] - lead[distance]) ** 2).sum() for c, lead in zip(chaser, leader))
    return total / batch.num_tasks


def unflatten(model, vector) -> dict[str, torch.Tensor]:
    """The network's parameters from the leading entries of a flat particle."""
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n], i = vector[i : i + p.numel()].view_as(p), i + p.numel()
    return out


def reference_chaser(learner, batch, steps, leader_steps, lossf, first_order=False):
    """The chaser loss with the tempered posterior ``-(the task's mean loss)``."""
    model = learner.model
    starts = [torch.cat([p[n].flatten() for n, _ in model.named_parameters()]) for p in particle_params(learner)]

    def neg_log_posterior(theta, x, y):
        return lossf(functional_call(model, unflatten(model, theta), (x,)), y)

    return chaser_by_hand(starts, neg_log_posterior, batch, steps, leader_steps, ALPHA, first_order)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_bmaml_chaser_meta_gradient_equals_the_reference_loop(strategy, first_order):
    model, batch = mlp(), regression_batch(tasks=3)
    learner = make(BMAML, model, "regression", steps=2, first_order=first_order, strategy=strategy, particles=3)
    got = meta_grad(learner, batch)
    ref = reference_chaser(learner, batch, 2, 1, F.mse_loss, first_order)
    expected = torch.autograd.grad(ref, list(learner.parameters()))
    torch.testing.assert_close(got, torch.cat([e.flatten() for e in expected]), rtol=1e-9, atol=1e-11)


def test_bmaml_second_order_differs_from_first_order():
    batch = regression_batch(tasks=3)
    second = meta_grad(make(BMAML, mlp(), "regression", steps=2, particles=3), batch)
    first = meta_grad(make(BMAML, mlp(), "regression", steps=2, first_order=True, particles=3), batch)
    assert (second - first).abs().max() > 1e-4 * second.abs().max()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bmaml_with_one_particle_and_the_query_loss_is_maml(strategy):
    model, batch = conv(), classification_batch()
    bmaml = make(BMAML, model, "classification", steps=2, strategy=strategy, particles=1, meta_loss="query")
    maml = make(MAML, conv(), "classification", steps=2, strategy=strategy)
    torch.testing.assert_close(meta_grad(bmaml, batch), meta_grad(maml, batch), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bmaml.evaluate(batch, 2)["acc"], maml.evaluate(batch, 2)["acc"])


def bayesian_neg_log_posterior(model, theta, x, y, prior):
    """``-log p(w, log gamma, log lambda | x, y)`` of the BMAML code's Bayesian network, up to a constant.

    ``theta`` is the particle: the network's weights, then ``log gamma``, then ``log lambda``.
    """
    weights, log_gamma, log_lambda = theta[:-2], theta[-2], theta[-1]
    err = functional_call(model, unflatten(model, weights), (x,)) - y
    gamma, lam = log_gamma.exp(), log_lambda.exp()
    log_lik = (0.5 * log_gamma - 0.5 * gamma * err**2).sum()
    log_prior_w = 0.5 * weights.numel() * log_lambda - 0.5 * lam * (weights**2).sum()
    log_prior_gamma = (prior.a_g - 1) * log_gamma - prior.b_g * gamma + log_gamma
    log_prior_lambda = (prior.a_l - 1) * log_lambda - prior.b_l * lam + log_lambda
    return -(log_lik + log_prior_w + log_prior_gamma + log_prior_lambda)


def reference_bayesian_chaser(learner, batch, steps, lr, first_order=False):
    """The chaser loss with the BMAML code's posterior: particles carry their log precisions."""
    model, algorithm = learner.model, learner.algorithm
    names = [n for n, _ in model.named_parameters()]
    starts = [
        torch.cat([*(p[n].flatten() for n in names), algorithm.log_gamma[m : m + 1], algorithm.log_lambda[m : m + 1]])
        for m, p in enumerate(particle_params(learner))
    ]

    def neg_log_posterior(theta, x, y):
        return bayesian_neg_log_posterior(model, theta, x, y, algorithm.prior)

    return chaser_by_hand(starts, neg_log_posterior, batch, steps, 1, lr, first_order, distance=slice(0, -2))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_bmaml_bayesian_posterior_meta_gradient_equals_the_reference_loop(strategy, first_order):
    """The code's posterior (learned noise and prior precisions, summed log-likelihood) against autograd of it."""
    from types import SimpleNamespace

    from mamlrun.learner import MetaLearner

    torch.manual_seed(3)
    lr, batch = 2e-3, regression_batch(tasks=3)
    algorithm = BMAML(lr, 2, 2, first_order=first_order, particles=3, posterior="bayesian")
    learner = MetaLearner(mlp(), algorithm, SimpleNamespace(objective=Regression()), strategy=strategy)
    learner.meta_gradient(batch)
    got = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in learner.parameters()])
    ref = reference_bayesian_chaser(learner, batch, 2, lr, first_order)
    expected = torch.autograd.grad(ref, list(learner.parameters()), allow_unused=True)
    flat = torch.cat(
        [(e if e is not None else torch.zeros_like(p)).flatten() for e, p in zip(expected, learner.parameters())]
    )
    torch.testing.assert_close(got, flat, rtol=1e-9, atol=1e-11)
    # the precisions are meta-learned through the second-order term only
    assert (algorithm.log_gamma.grad is not None and algorithm.log_gamma.grad.abs().max() > 0) != first_order


def test_bmaml_bayesian_classification_posterior_is_the_summed_log_likelihood_and_the_weight_prior():
    """One particle (SVGD = the score): the inner direction is the gradient of the summed cross-entropy plus the
    Gaussian weight prior and its hyper-prior; a categorical likelihood has no noise precision to adapt."""
    from types import SimpleNamespace

    from mamlrun.learner import MetaLearner

    batch = classification_batch(tasks=2)
    algorithm = BMAML(1e-3, 1, 1, particles=1, posterior="bayesian")
    learner = MetaLearner(conv(), algorithm, SimpleNamespace(objective=Classification()), strategy="loop")
    params = algorithm.initial(learner, batch.num_tasks)
    names = list(params)
    got = algorithm.gradients(learner, batch.x_support, batch.y_support)(params, names, 0, False)
    prior, model = algorithm.prior, learner.model
    for t in range(batch.num_tasks):
        w = {n: params[n][t].detach().requires_grad_() for n, _ in model.named_parameters()}
        log_lambda = params["log_lambda"][t, 0].detach().requires_grad_()
        lam, flat = log_lambda.exp(), torch.cat([v.flatten() for v in w.values()])
        nlp = F.cross_entropy(functional_call(model, w, (batch.x_support[t],)), batch.y_support[t], reduction="sum")
        nlp = nlp + 0.5 * lam * (flat**2).sum() - 0.5 * flat.numel() * log_lambda
        nlp = nlp - (prior.a_l - 1) * log_lambda + prior.b_l * lam - log_lambda
        expected = torch.autograd.grad(nlp, [*w.values(), log_lambda])
        for n, e in zip(w, expected):
            torch.testing.assert_close(got[n][t], e, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["log_lambda"][t, 0], expected[-1], rtol=1e-10, atol=1e-12)
        assert got["log_gamma"][t, 0] == 0


def test_bmaml_rejects_bad_options():
    from mamlrun.errors import MamlrunError

    with pytest.raises(MamlrunError, match="meta_loss"):
        BMAML(ALPHA, 1, 1, meta_loss="elbo")
    with pytest.raises(MamlrunError, match="posterior"):
        BMAML(ALPHA, 1, 1, posterior="exact")
    with pytest.raises(MamlrunError, match="particles"):
        EMAML(ALPHA, 1, 1, particles=0)


def directional_derivatives(loss, params, grads, seed, eps=1e-6) -> tuple[float, float]:
    """Along a random direction: the derivative from ``grads`` and the central difference of ``loss()``."""
    g = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        values.append(loss().item())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, direction)).item()
    return analytic, (values[0] - values[1]) / (2 * eps)


# -- PLATIPUS ---------------------------------------------------------------------------------------
def platipus_loss(learner, batch, seed=3) -> torch.Tensor:
    """The mean over tasks of PLATIPUS's objective with the samples of ``seed``."""
    torch.manual_seed(seed)
    learner.chosen_strategy = learner.strategy_name
    return learner.algorithm.meta_loss(learner, batch)[0].mean()


@pytest.mark.parametrize("strategy", ["batched", "vmap"])
def test_platipus_objective_gradient_matches_finite_differences(strategy):
    model, batch = smooth_mlp(), regression_batch(tasks=3)
    learner = make(PLATIPUS, model, "regression", steps=2, strategy=strategy, kl_weight=0.5, init_std=0.2)
    with torch.no_grad():  # move away from the symmetric start: KL > 0, both shifts in play
        for p in learner.algorithm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(learner.parameters())
    grads = torch.autograd.grad(platipus_loss(learner, batch), params)
    analytic, numeric = directional_derivatives(lambda: platipus_loss(learner, batch), params, grads, seed=5)
    assert analytic == pytest.approx(numeric, rel=1e-6)
    # every kind of meta-parameter gets a gradient: the mean, both deviations, both shifts
    assert all(gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_platipus_with_zero_variance_and_no_shift_is_maml(strategy):
    model, batch = mlp(), regression_batch()
    learner = make(PLATIPUS, model, "regression", steps=2, strategy=strategy, samples=3)
    algorithm = learner.algorithm
    with torch.no_grad():
        algorithm.gamma_p.zero_()
        algorithm.gamma_q.zero_()
        for p in [*algorithm.log_prior_std.values(), *algorithm.log_q_std.values()]:
            p.fill_(-300.0)  # sigma = 5e-131: below float64's resolution of the weights
    maml = make(MAML, mlp(), "regression", steps=2, strategy=strategy)
    learner.zero_grad()
    learner.meta_gradient(batch)
    mu_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(mu_grad, meta_grad(maml, batch), rtol=1e-10, atol=1e-12)
    outputs = learner.predictions(batch, 2)
    assert outputs.shape[2] == 3  # three samples per task, all the same model
    torch.testing.assert_close(outputs[:, :, 1], outputs[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(learner.evaluate(batch, 2)["loss"], maml.evaluate(batch, 2)["loss"])


def test_platipus_kl_is_the_closed_form_of_two_diagonal_gaussians():
    learner = make(PLATIPUS, mlp(), "regression", init_std=0.1)
    algorithm = learner.algorithm
    with torch.no_grad():
        for p in algorithm.log_q_std.values():
            p.add_(0.3 * torch.randn_like(p))
    mean_q = {n: torch.randn(2, *p.shape, dtype=p.dtype) for n, p in learner.model.named_parameters()}
    mean_p = {n: torch.randn(2, *p.shape, dtype=p.dtype) for n, p in learner.model.named_parameters()}
    expected = 0
    for n in mean_q:
        q = torch.distributions.Normal(mean_q[n], algorithm.log_q_std[key(n)].exp())
        p = torch.distributions.Normal(mean_p[n], algorithm.log_prior_std[key(n)].exp())
        expected = expected + torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(algorithm.kl(mean_q, mean_p), expected)
