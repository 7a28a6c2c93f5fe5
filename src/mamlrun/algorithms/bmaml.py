"""BMAML: Bayesian MAML, particles adapted by Stein variational gradient descent, meta-trained by the chaser loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.emaml import EMAML
from mamlrun.algorithms.inner import Gradients, Params, inner_loop
from mamlrun.errors import MamlrunError
from mamlrun.objectives import Regression

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class BMAML(EMAML):
    """EMAML whose particles adapt together by SVGD, meta-trained to chase a longer-adapted leader.

    **Inner loop (SVGD).** The ``M`` particles of a task move along
    ``phi(theta_m) = 1/M sum_j [k(theta_j, theta_m) grad log p(theta_j | D) + grad_{theta_j} k(theta_j, theta_m)]``
    with step size ``inner_lr``: the kernel-weighted gradients pull the particles to the
    posterior's modes, the kernel's gradient pushes them apart. The kernel is the RBF
    ``k(a, b) = exp(-||a - b||^2 / h)`` over all parameters, with the median heuristic
    ``h = med^2 / log M`` (``med``: the median distance between a task's particles; a constant
    of the meta-gradient), or a fixed ``bandwidth``. The posterior ``p(theta | D)`` is
    (``posterior``):

    - ``tempered``: ``log p = -(the task's mean loss)``, so that one particle takes exactly MAML's
      inner step;
    - ``bayesian`` (the paper's code): every particle also carries the log precisions of the
      observation noise (``log gamma``, regression only) and of a Gaussian prior on the weights
      (``log lambda``), which adapt and are meta-learned with it and enter the kernel;
      ``log p = sum_i log N(y_i | f(x_i), 1/gamma) + log N(w | 0, 1/lambda)
      + log Gamma(gamma | a_g, b_g) + log Gamma(lambda | a_l, b_l)`` (the Gamma densities over the
      log precisions, Jacobian included). Data terms are *summed* over the points (classification:
      the summed log-likelihood of the labels), so a step's size grows with the data as in the
      paper; ``gamma`` and ``lambda`` start at ``1 / m_g`` and ``1 / m_l``.

    **Meta-loss** (``meta_loss: chaser``, the paper's): the chaser is the particles after
    ``inner_steps`` SVGD steps on the support set; the leader continues from the chaser for
    ``leader_steps`` more steps on the support and query sets together. The loss is the squared
    distance from the chaser to the leader, which is a constant (no gradient):
    ``sum_m ||theta_m^n - stopgrad(theta_m^{n+s})||^2``, reported as ``loss``.
    ``meta_loss: query`` trains on the particles' mean query loss instead; with one particle it
    is MAML exactly.

    Args:
        particles: the number of particles M.
        leader_steps: the leader's extra SVGD steps ``s``.
        meta_loss: ``chaser`` or ``query``.
        bandwidth: the kernel's ``h`` (``None``: the median heuristic).
        posterior: ``tempered`` or ``bayesian`` (above).
        prior: the ``bayesian`` posterior's hyper-parameters ``a_g, b_g, m_g, a_l, b_l, m_l``
            (the paper's code: 2, 0.2, 0.01, 2, 2, 1).
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm`.

    References:
        Kim, Yoon, Dia, Kim, Bengio, Ahn. "Bayesian Model-Agnostic Meta-Learning." NeurIPS 2018,
        section 3 (SVGD in the inner loop, Algorithm 1 and the chaser loss, equation 6).
        Liu, Wang. "Stein Variational Gradient Descent." NeurIPS 2016, equation (8) and the
        median heuristic of section 5.
        The BMAML authors' code (jsikyoon/bmaml, ``bnn.py``): the Bayesian neural network's
        log-likelihood and priors.
    """

    def __init__(
        self,
        *args,
        leader_steps: int = 1,
        meta_loss: str = "chaser",
        bandwidth: float | None = None,
        posterior: str = "tempered",
        prior: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if meta_loss not in ("chaser", "query"):
            raise MamlrunError(f"algorithm.meta_loss must be 'chaser' or 'query', not {meta_loss!r}")
        if int(leader_steps) < 1:
            raise MamlrunError(f"algorithm.leader_steps must be at least 1, not {leader_steps}")
        if posterior not in ("tempered", "bayesian"):
            raise MamlrunError(f"algorithm.posterior must be 'tempered' or 'bayesian', not {posterior!r}")
        self.leader_steps, self.loss_kind, self.posterior = int(leader_steps), meta_loss, posterior
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.prior = Prior(**(prior or {}))

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        if self.posterior == "bayesian":
            # Per particle, as the code initialises them: log(1 / m) plus a little noise.
            like = next(model.parameters())
            noise = torch.randn(2, self.particles, dtype=like.dtype, device=like.device) * 1e-3
            self.log_gamma = nn.Parameter(noise[0] - math.log(self.prior.m_g))
            self.log_lambda = nn.Parameter(noise[1] - math.log(self.prior.m_l))

    def initial(self, learner: MetaLearner, tasks: int) -> Params:
        params = super().initial(learner, tasks)
        if self.posterior == "bayesian":
            for name in PRECISIONS:
                params[name] = getattr(self, name).unsqueeze(0).expand(tasks, -1).reshape(-1, 1)
        return params

    def step_params(self, params: Params, step: int) -> Params:
        return {n: p for n, p in params.items() if n not in PRECISIONS}

    def gradients(self, learner: MetaLearner, x: torch.Tensor, y: torch.Tensor) -> Gradients:
        """The negative SVGD direction of every particle (``inner_loop`` subtracts it)."""
        loss_gradients = learner.gradients(x, y)

        def directions(params: Params, names: list[str], step: int, create_graph: bool) -> Params:
            if self.posterior == "bayesian":
                g = self.neg_log_posterior_gradients(learner, loss_gradients, params, names, step, create_graph, x, y)
            else:
                g = loss_gradients(params, names, step, create_graph)
            theta = torch.cat([self.per_task(params[n]).flatten(2) for n in names], dim=2)
            grad = torch.cat([self.per_task(g[n]).flatten(2) for n in names], dim=2)
            if not create_graph:
                theta = theta.detach()
            phi = svgd_direction(theta, -grad, self.bandwidth)
            out, start = {}, 0
            for n in names:
                size = params[n][0].numel()
                out[n] = -phi[..., start : start + size].reshape(params[n].shape)
                start += size
            return out

        return directions

    def neg_log_posterior_gradients(
        self, learner: MetaLearner, loss_gradients: Gradients, params: Params, names, step, create_graph, x, y
    ) -> Params:
        """Gradients of ``-log p(theta, log gamma, log lambda | x, y)`` of every particle (the ``bayesian`` posterior).

        From the gradient ``g`` of the task's mean loss over its ``n`` points (mean squared error,
        or cross-entropy): the weights get ``s g + lambda w`` with ``s = n gamma / 2`` (regression)
        or ``n`` (classification); ``log gamma`` gets ``n/2 (gamma mse - 1) + b_g gamma - a_g``;
        ``log lambda`` gets ``lambda ||w||^2 / 2 - D/2 + b_l lambda - a_l`` (``D``: the number of weights).
        """
        weights = [n for n in names if n not in PRECISIONS]
        g = loss_gradients(params, weights, step, create_graph)
        n_points = y[0].numel()  # observations per task (points x outputs; labels)
        gamma, lam = params["log_gamma"].exp(), params["log_lambda"].exp()  # [tasks * particles, 1]
        regression = isinstance(learner.objective, Regression)
        scale = n_points * gamma / 2 if regression else torch.full_like(gamma, float(n_points))
        flat = {w: params[w].flatten(1) for w in weights}
        out = {w: (scale * g[w].flatten(1) + lam * flat[w]).view_as(params[w]) for w in weights}
        prior = self.prior
        squares = sum(v.pow(2).sum(1, keepdim=True) for v in flat.values())
        count = sum(v.shape[1] for v in flat.values())
        out["log_lambda"] = lam * squares / 2 - count / 2 + prior.b_l * lam - prior.a_l
        if regression:
            mse = learner.objective.task_losses(learner.outputs(params, step, x), y).unsqueeze(1)
            out["log_gamma"] = n_points / 2 * (gamma * mse - 1) + prior.b_g * gamma - prior.a_g
        else:
            out["log_gamma"] = torch.zeros_like(gamma)  # no observation noise in a categorical likelihood
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    # The particles are coupled by the kernel: the meta-gradient is the loss's own, not scaled per particle.
    meta_gradient = Algorithm.meta_gradient

    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        if self.loss_kind == "query":
            return super().meta_loss(learner, batch)
        steps, first_order = self.train_inner_steps, self.use_first_order()
        chaser = self.particle_trajectory(learner, batch.x_support, batch.y_support, steps, first_order)[-1]
        x = self.repeat(torch.cat([batch.x_support, batch.x_query], dim=1))
        y = self.repeat(torch.cat([batch.y_support, batch.y_query], dim=1))
        with torch.no_grad():
            start = {n: p.detach() for n, p in chaser.items()}
            leader = inner_loop(start, self.gradients(learner, x, y), self.leader_steps, self.step_size)[-1]
        distance = sum(
            self.per_task(chaser[n] - leader[n]).flatten(1).pow(2).sum(1) for n in chaser if n not in PRECISIONS
        )
        stats = learner.query_stats(chaser, steps, self.repeat(batch.x_query), self.repeat(batch.y_query))
        return (distance, *(self.per_task(s).mean(1) for s in stats[1:]))


# The ``bayesian`` posterior's per-particle log precisions, adapted with the weights (not network parameters).
PRECISIONS = ("log_gamma", "log_lambda")


@dataclass(frozen=True)
class Prior:
    """Gamma hyper-priors of the ``bayesian`` posterior's precisions and their initial values (``1 / m``)."""

    a_g: float = 2.0
    b_g: float = 0.2
    m_g: float = 0.01
    a_l: float = 2.0
    b_l: float = 2.0
    m_l: float = 1.0


def svgd_direction(theta: torch.Tensor, score: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """The SVGD update direction of particles ``theta`` ``[tasks, M, D]`` with scores ``grad log p`` ``[tasks, M, D]``.

    ``phi(theta_m) = 1/M sum_j [k_jm score_j + grad_{theta_j} k_jm]`` with the RBF kernel
    ``k_jm = exp(-||theta_j - theta_m||^2 / h)``; ``h`` is ``bandwidth`` or, per task, the median
    heuristic ``med^2 / log M``, held constant. One particle: ``phi = score``.

    References:
        Liu, Wang. "Stein Variational Gradient Descent." NeurIPS 2016, equation (8), section 5.
    """
    m = theta.shape[1]
    if m == 1:  # k = 1 and no repulsion: plain gradient ascent on log p, exactly
        return score
    norms = theta.pow(2).sum(-1)
    sq = (norms.unsqueeze(2) + norms.unsqueeze(1) - 2 * theta @ theta.transpose(1, 2)).clamp_min(0)
    if bandwidth is not None:
        h = theta.new_full((theta.shape[0], 1, 1), bandwidth)
    else:
        h = (sq.detach().flatten(1).median(dim=1).values / math.log(m)).clamp_min(1e-12).view(-1, 1, 1)
    k = torch.exp(-sq / h)  # symmetric: k[t, j, m]
    attraction = k.transpose(1, 2) @ score  # sum_j k_jm score_j
    # grad_{theta_j} k_jm = -2 / h (theta_j - theta_m) k_jm, summed over j:
    repulsion = 2 / h * (theta * k.sum(1).unsqueeze(-1) - k.transpose(1, 2) @ theta)
    return (attraction + repulsion) / m
