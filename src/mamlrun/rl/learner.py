"""MAML for reinforcement learning: policy-gradient inner steps, TRPO on the meta-objective.

References:
    Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
    Algorithm 3 and section 5.3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from mamlrun import parallel
from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import batched_gradients, inner_loop
from mamlrun.errors import MamlrunError
from mamlrun.rl.envs import Draws, EnvTaskBatch, EnvTasks
from mamlrun.rl.episodes import Episodes, advantages, discounted_returns, fit_baseline
from mamlrun.rl.policy import GaussianMLP, Params, kl_divergence, log_prob

TEST_BASELINES = ("own", "previous")


class MetaObjective(NamedTuple):
    """What one meta-iteration optimises (see :meth:`MetaRL.meta_objective`)."""

    closure: Callable[[bool], tuple[torch.Tensor, torch.Tensor]]
    fisher_vector: Callable[[torch.Tensor], torch.Tensor]
    returns: list[torch.Tensor]
    surrogate: Callable[[Params], tuple[torch.Tensor, torch.Tensor]]
    supports: list[tuple[Episodes, torch.Tensor]]
    query: tuple[Episodes, torch.Tensor, dict[str, torch.Tensor]]  # episodes, advantages, old policy


def mean_return(episodes: Episodes) -> torch.Tensor:
    """Average undiscounted return per task over its trajectories (``[T]``; padding trajectories left out)."""
    sampled = (episodes.lengths > 0).to(episodes.rewards.dtype)
    return (episodes.returns * sampled).sum(1) / sampled.sum(1).clamp(min=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each task's valid steps: ``[T, N, H] -> [T]``."""
    return (values * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)


class MetaRL(nn.Module):
    """MAML with a policy-gradient inner loop and a TRPO outer loop (paper Algorithm 3).

    Per task, ``shots`` trajectories sampled with the current policy give a REINFORCE gradient
    (advantages from a linear feature baseline fitted to the task's returns); the algorithm's
    ``inner_steps`` such steps of size ``inner_lr`` adapt the policy, sampling new trajectories
    before each. The adapted policies then sample ``query_shots`` trajectories per task, and TRPO
    improves the importance-weighted surrogate of their advantages, differentiated through the
    adaptation: exactly to second order, or to first order when the algorithm says so (the inner
    gradients held constant). With the pretraining algorithm (no training inner steps) this is
    TRPO on the task distribution itself (the paper's pretrained policy). Adaptation runs the
    inner loop of every learner (:func:`~mamlrun.algorithms.inner.inner_loop`).

    Evaluation reports the average undiscounted return after 0, 1, ... steps; test-time steps after
    the first use ``later_inner_lr`` (the paper: 0.1, then 0.05).

    Args:
        model: a :class:`~mamlrun.rl.policy.GaussianMLP`.
        algorithm: the algorithm's hooks; one with an RL form (``rl_form``: MAML, first-order
            MAML, the pretraining and random baselines).
        tasks: the task distribution whose ``rollout`` samples trajectories.
        shots: trajectories per task for every adaptation step.
        query_shots: trajectories per task sampled with the adapted policies for the meta-update.
        later_inner_lr: step size of evaluation steps after the first (``None``: ``inner_lr``).
        test_shots: trajectories per task for every evaluation step (``None``: ``shots``).
        test_transitions: if set, every evaluation step samples whole trajectories per task (in
            batches of ``test_shots``) until they hold at least this many transitions, as rllab's
            sampler does with its ``batch_size`` (the paper's code tests 2D navigation with 4000:
            40 trajectories before adaptation, about 100 once most episodes stop at the goal).
        test_baseline: the linear baseline of every evaluation step's advantages: ``own`` (fitted on
            the step's own trajectories, as in meta-training) or ``previous`` (rllab's order, which
            the paper's test scripts follow: predicted by the fit on the task's previous step, and
            zero before the first step, as from a freshly built baseline; fitted after).
    """

    progress_stat = "return_post"

    def __init__(
        self,
        model: GaussianMLP,
        algorithm: Algorithm,
        tasks: EnvTasks,
        shots: int,
        query_shots: int,
        later_inner_lr: float | None = None,
        test_shots: int | None = None,
        test_transitions: int | None = None,
        test_baseline: str = "own",
    ) -> None:
        super().__init__()
        if not isinstance(model, GaussianMLP):
            raise MamlrunError(f"RL tasks need a policy (model=gaussian_mlp), not {type(model).__name__}")
        if not algorithm.rl_form:
            name = type(algorithm).__name__
            raise MamlrunError(f"{name} has no meta-RL form here (use maml, fomaml, pretrain or random)")
        self.policy, self.algorithm, self.tasks, self.objective = model, algorithm, tasks, tasks.objective
        algorithm.setup(model)
        self.shots, self.query_shots = int(shots), int(query_shots)
        self.test_shots = self.shots if test_shots is None else int(test_shots)
        self.test_transitions = None if test_transitions is None else int(test_transitions)
        if self.test_transitions is not None and self.test_transitions < 1:
            raise MamlrunError(f"rl.test_transitions must be a positive number, got {test_transitions}")
        if test_baseline not in TEST_BASELINES:
            raise MamlrunError(f"rl.test_baseline must be one of {', '.join(TEST_BASELINES)}, not {test_baseline!r}")
        self.test_baseline = test_baseline
        self.later_inner_lr = float(algorithm.inner_lr if later_inner_lr is None else later_inner_lr)
        self._step: tuple = ()

    @classmethod
    def check_components(cls, cfg) -> None:
        """Meta-RL needs a policy, TRPO and an algorithm with an RL form (classes, not names, decide)."""
        from hydra.utils import get_class

        from mamlrun.rl.trpo import TRPO

        dataset = cfg.dataset.get("name")
        if not getattr(get_class(cfg.algorithm._target_), "rl_form", False):
            raise MamlrunError(
                f"algorithm={cfg.algorithm.get('name')} has no RL form "
                f"(dataset={dataset} takes one of maml, fomaml, pretrain, random)"
            )
        for group, base, option in (("model", GaussianMLP, "gaussian_mlp"), ("optimizer", TRPO, "trpo")):
            if not issubclass(get_class(cfg[group]._target_), base):
                raise MamlrunError(f"dataset={dataset} needs {group}={option}, got {group}={cfg[group].get('name')}")

    @property
    def inner_lr(self) -> float:
        return self.algorithm.inner_lr

    @property
    def inner_steps(self) -> int:
        return self.algorithm.train_inner_steps

    @property
    def test_inner_steps(self) -> int:
        return self.algorithm.test_inner_steps

    @property
    def first_order(self) -> bool:
        return self.algorithm.use_first_order()

    # -- pieces ---------------------------------------------------------------------------------
    def actor(self, params: Params, draws: Draws):
        """A sampling function for ``rollout``: Gaussian actions from per-task ``params``."""

        def act(obs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                mean, log_std = self.policy.distribution(params, obs)
                return mean + torch.exp(log_std) * draws.normal(mean.shape).to(mean.device, mean.dtype)

        return act

    def sample(self, params: Params, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        return self.tasks.rollout(self.actor(params, draws), goals, trajectories, draws)

    def sample_test(self, params: Params, goals: torch.Tensor, draws: Draws) -> Episodes:
        """The trajectories of one evaluation step: ``test_shots`` per task, or, with
        ``test_transitions``, whole trajectories until each task has that many transitions.

        Trajectories are drawn in batches of ``test_shots``; a task keeps every trajectory that
        starts before its count reaches ``test_transitions`` and the rest become padding (mask 0,
        length 0), so tasks whose episodes end early (at the goal) get more of them.

        References:
            Duan et al. 2016, rllab (``BatchSampler``: paths are sampled whole until ``batch_size``
            transitions); cbfinn/maml_rl ``test_maml_point.py`` (``batch_size=4000``).
        """
        batches = [self.sample(params, goals, self.test_shots, draws)]
        if self.test_transitions is None:
            return batches[0]
        # Every rank draws as many batches as the rank that needs most (the rollouts step in lockstep).
        # Test time: the host syncs are fine.
        while parallel.any_rank(
            bool((torch.cat([b.lengths for b in batches], 1).sum(1) < self.test_transitions).any())
        ):
            batches.append(self.sample(params, goals, self.test_shots, draws))
        joined = {
            f.name: None if getattr(batches[0], f.name) is None else torch.cat([getattr(b, f.name) for b in batches], 1)
            for f in dataclasses.fields(Episodes)
        }
        lengths = joined["mask"].sum(-1)
        keep = ((lengths.cumsum(1) - lengths) < self.test_transitions).to(lengths.dtype).unsqueeze(-1)
        joined.update(rewards=joined["rewards"] * keep, mask=joined["mask"] * keep)
        return Episodes(**joined)

    def log_probs(self, params: Params, episodes: Episodes) -> torch.Tensor:
        t, n, h = episodes.mask.shape
        mean, log_std = self.policy.distribution(params, episodes.obs.reshape(t, n * h, -1))
        return log_prob(mean, log_std, episodes.actions.reshape(t, n * h, -1)).view(t, n, h)

    def inner_loss(self, params: Params, episodes: Episodes, adv: torch.Tensor) -> torch.Tensor:
        """REINFORCE loss per task: ``-mean_t log pi(a_t | s_t) * A_t`` over valid steps, ``[T]``.

        References:
            Williams 1992 (REINFORCE); Finn et al. 2017, Algorithm 3, line 6.
        """
        return -masked_mean(self.log_probs(params, episodes) * adv, episodes.mask)

    def adapt_step(self, params: Params, episodes: Episodes, adv: torch.Tensor, lr: float, create_graph: bool):
        """One policy-gradient step on every task (tasks are independent: one backward gives all)."""
        # Without create_graph the gradient is a constant: the result still depends on ``params`` (to
        # first order, through the identity) unless they are detached themselves.
        gradients = batched_gradients(lambda p, _: self.inner_loss(p, episodes, adv))
        return inner_loop(params, gradients, 1, lambda *_: lr, first_order=not create_graph)[-1]

    def adapt(self, tasks: int, supports: list[tuple[Episodes, torch.Tensor]], create_graph: bool) -> Params:
        """The adapted parameters as a function of the meta-parameters, replaying the support data."""
        gradients = batched_gradients(lambda p, step: self.inner_loss(p, *supports[step]))
        params = self.policy.batched_params(tasks)
        step_size = self.algorithm.step_size
        return inner_loop(params, gradients, len(supports), step_size, first_order=not create_graph)[-1]

    def kl_hessian_vector(self, tasks, supports, query: Episodes, old_mean, old_log_std):
        """``v -> H v`` for ``H`` the Hessian of the surrogate's KL with respect to the meta-parameters.

        At the current parameters the adapted policies equal the old ones, where the KL's gradient
        in the adapted parameters vanishes, so ``H = J^T F J`` exactly: ``F`` the KL's Hessian in the
        adapted parameters (on the query trajectories), ``J = prod_j (I - alpha H_j)`` the Jacobian
        of the adaptation with ``H_j`` the inner loss's Hessian at step ``j`` (``J = I`` to first
        order). Products with ``H_j`` and ``F`` are double-backward passes through first-order
        graphs, much cheaper than differentiating the KL's gradient through the adaptation.
        """
        inner = []
        # Copies, not views: the products stay valid after the optimizer updates the parameters in place.
        params = {k: v.detach().clone() for k, v in self.policy.batched_params(tasks).items()}
        for episodes, adv in supports:
            leaf = {k: v.requires_grad_(True) for k, v in params.items()}
            g = torch.autograd.grad(self.inner_loss(leaf, episodes, adv).sum(), list(leaf.values()), create_graph=True)
            inner.append((list(leaf.values()), g))
            params = {k: (v - self.inner_lr * gk).detach() for (k, v), gk in zip(leaf.items(), g)}
        leaf = [v.requires_grad_(True) for v in params.values()]
        t, n, h = query.mask.shape
        mean, log_std = self.policy.distribution(dict(zip(params, leaf)), query.obs.reshape(t, n * h, -1))
        kl = masked_mean(kl_divergence(old_mean, old_log_std, mean, log_std).view(t, n, h), query.mask).mean()
        kl_grad = torch.autograd.grad(kl, leaf, create_graph=True)
        shapes = [p.shape for p in self.policy.parameters()]

        def product(grads, inputs, vector):
            dot = sum((g * v).sum() for g, v in zip(grads, vector))
            return torch.autograd.grad(dot, inputs, retain_graph=True)

        def jacobian(vector, steps):
            if self.first_order:
                return vector
            for inputs, grads in steps:
                vector = [v - self.inner_lr * hv for v, hv in zip(vector, product(grads, inputs, vector))]
            return vector

        def fisher_vector(flat: torch.Tensor) -> torch.Tensor:
            parts = flat.split([s.numel() for s in shapes])
            vector = [p.view(s).unsqueeze(0).expand(tasks, *s) for p, s in zip(parts, shapes)]
            vector = jacobian(product(kl_grad, leaf, jacobian(vector, inner)), reversed(inner))
            return torch.cat([v.sum(0).reshape(-1) for v in vector])

        return fisher_vector

    # -- what the trainer calls -----------------------------------------------------------------
    def meta_objective(self, batch: EnvTaskBatch) -> MetaObjective:
        """Sample the meta-batch's trajectories; return the TRPO objective over them.

        ``closure(differentiable)`` gives the surrogate loss ``-mean_i E[pi_theta'_i / pi_old * A]``
        over the query trajectories and the mean KL from the sampling (old) adapted policies, both as
        functions of the meta-parameters through the adaptation; ``surrogate`` gives the same from
        given adapted parameters; ``fisher_vector`` multiplies by the KL's Hessian
        (:meth:`kl_hessian_vector`); ``returns`` holds the mean return before each adaptation step
        and after the last.
        """
        gen = batch.draws()
        tasks, discount = batch.num_tasks, self.tasks.discount
        params = {k: v.detach() for k, v in self.policy.batched_params(tasks).items()}
        supports, returns = [], []
        for _ in range(self.inner_steps):
            episodes = self.sample(params, batch.goals, self.shots, gen)
            adv = advantages(episodes, discount)
            supports.append((episodes, adv))
            returns.append(episodes.returns.mean())
            params = self.adapt_step(params, episodes, adv, self.inner_lr, create_graph=False)
        query = self.sample(params, batch.goals, self.query_shots, gen)
        returns.append(query.returns.mean())
        query_adv = advantages(query, discount)
        t, n, h = query.mask.shape
        obs, actions = query.obs.reshape(t, n * h, -1), query.actions.reshape(t, n * h, -1)
        with torch.no_grad():
            old_mean, old_log_std = self.policy.distribution(params, obs)
            old_logp = log_prob(old_mean, old_log_std, actions).view(t, n, h)

        def surrogate(adapted: Params) -> tuple[torch.Tensor, torch.Tensor]:
            mean, log_std = self.policy.distribution(adapted, obs)
            ratio = torch.exp(log_prob(mean, log_std, actions).view(t, n, h) - old_logp)
            loss = -masked_mean(ratio * query_adv, query.mask).mean()
            kl = kl_divergence(old_mean, old_log_std, mean, log_std).view(t, n, h)
            return loss, masked_mean(kl, query.mask).mean()

        def closure(differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
            return surrogate(self.adapt(tasks, supports, create_graph=differentiable and not self.first_order))

        fisher_vector = self.kl_hessian_vector(tasks, supports, query, old_mean, old_log_std)
        old = {"mean": old_mean.view(t, n, h, -1), "log_std": old_log_std, "logp": old_logp}
        return MetaObjective(closure, fisher_vector, returns, surrogate, supports, (query, query_adv, old))

    def start_iteration(self, iteration: int) -> None:
        self.algorithm.start_iteration(iteration)

    def meta_gradient(self, batch: EnvTaskBatch) -> dict[str, torch.Tensor]:
        """Sample, adapt and sample again; the TRPO step on it is :meth:`step_args` for the trainer's optimizer."""
        objective = self.meta_objective(batch)
        self._step = (objective.closure, objective.fisher_vector)
        returns = objective.returns
        out = {f"return_step{k}": r for k, r in enumerate(returns)}
        out["return_pre"], out["return_post"] = returns[0], returns[-1]
        return out

    def step_args(self) -> tuple:
        """``(closure, fisher_vector)`` of the last meta-batch: what :class:`~mamlrun.rl.trpo.TRPO` steps on."""
        step, self._step = self._step, ()
        return step

    def evaluate(self, batch: EnvTaskBatch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Average return per task after 0..steps adaptation steps: ``{"return": [steps + 1, tasks]}``."""
        steps = self.test_inner_steps if steps is None else steps
        return {"return": torch.stack([mean_return(e) for e in self.trajectories(batch, steps)])}

    def trajectories(self, batch: EnvTaskBatch, steps: int) -> list[Episodes]:
        """The episodes sampled before and after each of ``steps`` adaptation steps."""
        gen = batch.draws()
        params = {k: v.detach() for k, v in self.policy.batched_params(batch.num_tasks).items()}
        out, discount, coef = [], self.tasks.discount, None
        for k in range(steps + 1):
            episodes = self.sample_test(params, batch.goals, gen)
            out.append(episodes)
            if k == steps:
                break
            if self.test_baseline == "own":
                adv = advantages(episodes, discount)
            else:  # rllab: predict with the previous fit (none before the first step), then fit
                adv = advantages(episodes, discount, baseline=coef is not None, coef=coef)
                coef = fit_baseline(episodes, discounted_returns(episodes.rewards, discount))
            params = self.adapt_step(params, episodes, adv, self.inner_lr if k == 0 else self.later_inner_lr, False)
        return out
