"""PLATIPUS: probabilistic MAML, a Gaussian over the initialisation learned by amortised variational inference."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import Params, expand, inner_loop
from mamlrun.algorithms.metasgd import key
from mamlrun.errors import MamlrunError

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class PLATIPUS(Algorithm):
    """MAML over a distribution of initialisations: sample one, then adapt it by gradient descent.

    The prior over the initialisation is ``N(mu, sigma^2)`` (``mu``: the network's parameters,
    ``sigma``: a learned standard deviation per coordinate). For a task with support set ``D``:

    - the prior conditioned on it is ``p(theta | D) = N(mu - gamma_p grad L(mu, D), sigma^2)``;
    - at meta-training, the inference network is one gradient step on the query set ``D*``:
      ``q(theta | D, D*) = N(mu - gamma_q grad L(mu, D*), v_q)`` (``v_q``: learned variances);
      a ``theta`` sampled from ``q`` (reparameterised) adapts by ``inner_steps`` steps of size
      ``inner_lr`` on ``D``, and the loss is its query loss plus ``kl_weight`` times
      ``KL(q || p(theta | D))``, a closed form between diagonal Gaussians (reported as ``loss``;
      the ``kl`` is in the trainer's statistics through the loss only);
    - at test time ``samples`` initialisations are drawn from ``p(theta | D)`` and each adapts on
      ``D``: an ensemble scored like EMAML's
      (:meth:`~mamlrun.objectives.Objective.predictive_stats`).

    ``gamma_p`` and ``gamma_q`` are learned scalars (initialised at ``shift_lr``); the standard
    deviations are learned in log space (initialised at ``init_std``). The samples use the
    global random stream, which checkpoints save, so a resumed run draws the same samples.

    Args:
        kl_weight: the weight of the KL term (1 for regression in the reference code; the paper
            uses 0.05-0.15 for its ambiguous classification).
        samples: initialisations sampled per task at evaluation.
        train_samples: initialisations sampled per task at meta-training (their losses averaged).
        shift_lr: the initial ``gamma_p`` and ``gamma_q``.
        init_std: the initial ``sigma`` and ``sqrt(v_q)``.
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm`.

    References:
        Finn, Xu, Levine. "Probabilistic Model-Agnostic Meta-Learning." NeurIPS 2018,
        section 4 (Algorithm 1: meta-training; Algorithm 2: sampling at test time).
    """

    rl_form = False
    predictive = True

    def __init__(
        self,
        *args,
        kl_weight: float = 1.0,
        samples: int = 10,
        train_samples: int = 1,
        shift_lr: float = 0.01,
        init_std: float = 0.03,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if int(samples) < 1 or int(train_samples) < 1:
            raise MamlrunError("algorithm.samples and algorithm.train_samples must be at least 1")
        if float(init_std) <= 0:
            raise MamlrunError(f"algorithm.init_std must be positive, not {init_std}")
        self.kl_weight, self.samples, self.train_samples = float(kl_weight), int(samples), int(train_samples)
        self.shift_lr, self.init_std = float(shift_lr), float(init_std)

    def setup(self, model: nn.Module) -> None:
        def log_stds() -> nn.ParameterDict:
            return nn.ParameterDict(
                {key(n): nn.Parameter(torch.full_like(p, math.log(self.init_std))) for n, p in model.named_parameters()}
            )

        self.log_prior_std, self.log_q_std = log_stds(), log_stds()
        p = next(model.parameters())
        self.gamma_p = nn.Parameter(torch.tensor(self.shift_lr, dtype=p.dtype, device=p.device))
        self.gamma_q = nn.Parameter(torch.tensor(self.shift_lr, dtype=p.dtype, device=p.device))

    # -- the distributions ----------------------------------------------------------------------
    def shifted(self, learner: MetaLearner, x, y, gamma: torch.Tensor, create_graph: bool) -> Params:
        """``mu - gamma * grad L(mu, (x, y))`` for every task: ``[tasks, *shape]``."""
        mu = expand(learner.meta_params(), x.shape[0])
        g = learner.gradients(x, y)(mu, list(mu), 0, create_graph)
        return {n: m - gamma * g[n] for n, m in mu.items()}

    def sample(self, mean: Params, log_std: nn.ParameterDict, count: int) -> Params:
        """``count`` reparameterised samples per task: ``[tasks * count, *shape]`` (task-major)."""
        out = {}
        for n, m in mean.items():
            m = m.repeat_interleave(count, dim=0)
            out[n] = m + log_std[key(n)].exp() * torch.randn_like(m)
        return out

    def kl(self, mean_q: Params, mean_p: Params) -> torch.Tensor:
        """``KL(N(mean_q, v_q) || N(mean_p, sigma^2))`` per task, summed over every coordinate."""
        total = 0
        for n, mq in mean_q.items():
            log_q, log_p = self.log_q_std[key(n)], self.log_prior_std[key(n)]
            ratio = torch.exp(2 * (log_q - log_p))
            term = log_p - log_q + 0.5 * (ratio + (mq - mean_p[n]) ** 2 * torch.exp(-2 * log_p)) - 0.5
            total = total + term.flatten(1).sum(1)
        return total

    # -- the meta-objective and evaluation ------------------------------------------------------
    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        graph = not self.use_first_order()
        steps, s = self.train_inner_steps, self.train_samples
        mean_q = self.shifted(learner, batch.x_query, batch.y_query, self.gamma_q, graph)
        mean_p = self.shifted(learner, batch.x_support, batch.y_support, self.gamma_p, graph)
        theta = self.sample(mean_q, self.log_q_std, s)
        xs, ys = batch.x_support.repeat_interleave(s, 0), batch.y_support.repeat_interleave(s, 0)
        adapted = inner_loop(theta, learner.gradients(xs, ys), steps, self.step_size, None, not graph)[-1]
        xq, yq = batch.x_query.repeat_interleave(s, 0), batch.y_query.repeat_interleave(s, 0)
        stats = [t.view(-1, s).mean(1) for t in learner.query_stats(adapted, steps, xq, yq)]
        return (stats[0] + self.kl_weight * self.kl(mean_q, mean_p), *stats[1:])

    def predictions(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[torch.Tensor]:
        s = self.samples
        mean_p = self.shifted(learner, batch.x_support, batch.y_support, self.gamma_p, False)
        theta = self.sample(mean_p, self.log_prior_std, s)
        xs, ys = batch.x_support.repeat_interleave(s, 0), batch.y_support.repeat_interleave(s, 0)
        trajectory = inner_loop(theta, learner.gradients(xs, ys), steps, self.step_size, None, True)
        xq = batch.x_query.repeat_interleave(s, 0)
        outputs = [learner.outputs(p, k, xq) for k, p in enumerate(trajectory)]
        return [o.view(-1, s, *o.shape[1:]) for o in outputs]
