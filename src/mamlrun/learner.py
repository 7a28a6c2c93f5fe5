"""The supervised meta-learner: a network, an algorithm's hooks and a task family's objective.

The trainer sees a learner through a small protocol, the same for supervised tasks and for
meta-RL (:class:`~mamlrun.rl.MetaRL`): ``start_iteration``, ``meta_gradient`` (then the trainer's
own ``optimizer.step(*learner.step_args())``), ``evaluate``, ``objective``, ``state_dict``.

Parameters adapted to the tasks of a meta-batch are held *batched*: a dict of tensors whose
leading dimension is the task. Every adaptation runs :func:`~mamlrun.algorithms.inner.inner_loop`;
its per-task gradients come from one of three strategies, all exact and all differentiable to any
order:

- ``vmap``: ``torch.func.vmap`` over ``torch.func.grad`` of the per-task loss;
- ``batched``: one forward pass of all tasks with batched kernels (:mod:`mamlrun.models.batched`;
  a ``vmap``-ed forward for models it does not cover), then one ``torch.autograd.grad`` of the
  summed task losses. On CPU it runs the meta-batch in cache-sized chunks of tasks
  (:meth:`MetaLearner.cache_chunk_size`);
- ``loop``: one task at a time with ``torch.autograd.grad`` (the textbook computation; the fewest
  live tensors).

``auto`` is a fixed rule of the model and the device (:func:`auto_strategy`; no timing, so the same
model on the same device always computes the same way): ``batched`` for models it covers, else
``vmap``. The choice is fixed at the first meta-batch, readable before it as
:attr:`MetaLearner.strategy_name`, and saved in the ``state_dict``, so a resumed run computes
exactly as before, even one whose checkpoint chose differently. ``chunk_size`` bounds memory by
running the meta-batch in chunks and accumulating the meta-gradient, exact because the meta-loss
is a mean over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import (
    Gradients,
    Params,
    batched_gradients,
    expand,
    inner_loop,
    loop_gradients,
    vmap_gradients,
)
from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError
from mamlrun.models.batched import batched_forward, supports

STRATEGIES = ("auto", "vmap", "batched", "loop")
# Input elements per chunk of the batched strategy on CPU (``MetaLearner.cache_chunk_size``):
# 160 Omniglot images, the best of the chunk sizes measured on the Omniglot benchmark shapes.
CHUNK_INPUT_ELEMENTS = 160 * 28 * 28


class MetaLearner(nn.Module):
    """Meta-learning on supervised tasks (regression, classification).

    Args:
        model: a network whose forward works under ``functional_call`` and ``vmap``.
        algorithm: the algorithm's hooks (:class:`~mamlrun.algorithms.base.Algorithm`).
        tasks: the task distribution; its ``objective`` gives the loss and the statistics.
        strategy: one of ``auto``, ``vmap``, ``batched``, ``loop`` (see the module docstring).
        chunk_size: tasks per chunk of the meta-batch (``None``: the whole meta-batch at once).
    """

    def __init__(
        self,
        model: nn.Module,
        algorithm: Algorithm,
        tasks,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise MamlrunError(f"hardware.strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self.model, self.algorithm, self.objective = model, algorithm, tasks.objective
        algorithm.setup(model)
        self.strategy = algorithm.strategy or strategy
        self.chunk_size = int(chunk_size) if chunk_size else None
        # Fixed at the first meta-batch (``auto`` then knows the device); restored from checkpoints.
        self.chosen_strategy: str | None = None if self.strategy == "auto" else self.strategy
        self._has_batched_kernels = supports(model)

    @classmethod
    def check_components(cls, cfg) -> None:
        """Refuse the components of meta-RL (``rl_only`` classes: the policy, TRPO) in a supervised run."""
        from hydra.utils import get_class

        for group in ("model", "optimizer"):
            if getattr(get_class(cfg[group]._target_), "rl_only", False):
                option = cfg[group].get("name")
                raise MamlrunError(f"{group}={option} is for RL datasets (dataset=navigation2d, halfcheetah_dir, ...)")

    @property
    def strategy_name(self) -> str:
        """The strategy this learner computes with: the configured one, or what ``auto`` chooses.

        Before the first meta-batch, ``auto`` resolves by :func:`auto_strategy` for the model's
        current device; afterwards (and after loading a checkpoint) it is the strategy in use.
        """
        if self.chosen_strategy is not None:
            return self.chosen_strategy
        return auto_strategy(self.model, _device_of(self.model))

    @property
    def stat_names(self) -> tuple[str, ...]:
        return self.objective.stat_names

    @property
    def test_inner_steps(self) -> int:
        return self.algorithm.test_inner_steps

    # -- what the trainer calls -------------------------------------------------------------
    def start_iteration(self, iteration: int) -> None:
        self.algorithm.start_iteration(iteration)

    def meta_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad`` of the meta-parameters.

        Returns detached training statistics (``loss`` and, for classification, ``acc``), kept on
        the device so that the hot loop never waits for a host copy.
        """
        self.chosen_strategy = self.strategy_name
        return self.algorithm.meta_gradient(self, batch)

    def step_args(self) -> tuple:
        """Arguments of the trainer's ``optimizer.step`` after :meth:`meta_gradient` (none: a gradient step)."""
        return ()

    def evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Fine-tune on each task's support set; query metrics after 0..steps inner updates.

        Returns ``loss`` (and ``acc`` for classification) of shape ``[steps + 1, tasks]``.
        """
        steps = self.test_inner_steps if steps is None else steps
        self.chosen_strategy = self.strategy_name
        with torch.no_grad():
            out = self.algorithm.evaluate(self, batch, steps)
        names = self.algorithm.eval_stat_names(self.objective)
        return {name: torch.stack([o[i] for o in out]) for i, name in enumerate(names)}

    def predictions(self, batch: TaskBatch, steps: int) -> torch.Tensor:
        """Outputs on ``batch.x_query`` after 0..steps inner updates: ``[steps + 1, tasks, samples, n, out]``.

        ``samples`` is 1 for point estimates, the number of particles or posterior samples for the
        algorithms that adapt several models per task (:meth:`Algorithm.predictions`).
        """
        self.chosen_strategy = self.strategy_name
        with torch.no_grad():
            return torch.stack(self.algorithm.predictions(self, batch, steps))

    # -- functional pieces ------------------------------------------------------------------
    def meta_params(self) -> Params:
        """The network's meta-parameters (the initialisation every task adapts from)."""
        return dict(self.model.named_parameters())

    def forward_with(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """One task's outputs with ``params`` at inner step ``step``."""
        return functional_call(self.model, self.algorithm.step_params(params, step), (x,))

    def outputs(self, params: Params, step: int, x: torch.Tensor) -> torch.Tensor:
        """Every task's outputs from batched ``params``: ``[tasks, n, *out]``."""
        if self._has_batched_kernels:
            return batched_forward(self.model, self.algorithm.step_params(params, step), x)
        return vmap(lambda p, xt: self.forward_with(p, xt, step))(params, x)

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> Gradients:
        """The per-task inner gradients on ``x``, ``y`` by the chosen strategy."""
        strategy = self.chosen_strategy
        if strategy == "batched":
            return batched_gradients(lambda p, step: self.objective.task_losses(self.outputs(p, step, x), y))
        make = vmap_gradients if strategy == "vmap" else loop_gradients
        return make(lambda p, step, xt, yt: self.objective.loss(self.forward_with(p, xt, step), yt), x, y)

    def adapt(
        self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool, params: Params | None = None
    ) -> list[Params]:
        """The parameters before and after each of ``steps`` inner updates on every task of ``x``, ``y``."""
        params = expand(self.meta_params() if params is None else params, x.shape[0])
        algorithm = self.algorithm
        return inner_loop(
            params, self.gradients(x, y), steps, algorithm.step_size, algorithm.adapts(list(params)), first_order
        )

    def query_stats(self, params: Params, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task statistics of batched ``params`` (after ``step`` updates) on ``x``, ``y``: each ``[tasks]``."""
        if self.chosen_strategy == "loop":
            per_task = [
                self.objective.stats(self.forward_with({k: v[t] for k, v in params.items()}, x[t], step), y[t])
                for t in range(x.shape[0])
            ]
            return tuple(torch.stack(m) for m in zip(*per_task))
        if self.chosen_strategy == "batched":
            return self.objective.task_stats(self.outputs(params, step, x), y)
        return vmap(lambda p, xt, yt: self.objective.stats(self.forward_with(p, xt, step), yt))(params, x, y)

    def accumulate(
        self, objective: Callable[[TaskBatch], tuple[torch.Tensor, ...]], batch: TaskBatch
    ) -> dict[str, torch.Tensor]:
        """Backpropagate the mean over tasks of ``objective``'s first output, chunk by chunk.

        Each chunk's graph is freed after its backward, so memory is bounded by ``chunk_size``
        tasks whatever the meta-batch size.
        """
        total, stats = batch.num_tasks, []
        for chunk in batch.chunks(self.chunk_size or self.cache_chunk_size(batch)):
            results = objective(chunk)
            (results[0].sum() / total).backward()
            stats.append(torch.stack([r.detach().sum() for r in results]))
        return dict(zip(self.stat_names, torch.stack(stats).sum(0) / total))

    def cache_chunk_size(self, batch: TaskBatch) -> int | None:
        """Tasks per chunk that keep the ``batched`` strategy's activations cache-sized on CPU.

        All tasks at once makes every activation a tensor of ``tasks x examples`` rows; past a few
        megabytes each elementwise pass (batch norm, ReLU, their derivatives) streams from memory.
        On CPU the batched strategy therefore runs the meta-batch in equal chunks of at most
        :data:`CHUNK_INPUT_ELEMENTS` input elements (support and query); exact, like any chunking.
        A fixed rule of the batch's shapes: e.g. Omniglot 5-way 1-shot (10 images of 28x28 per
        task) runs 16 tasks per chunk, 20-way 1-shot 4, 5-way with 15 query images 2. Elsewhere
        (GPU, other strategies) ``None``: the whole meta-batch at once.
        """
        x = batch.x_support
        if self.chosen_strategy != "batched" or x.device.type != "cpu" or batch.num_tasks < 2:
            return None
        per_task = (x[0].numel() + batch.x_query[0].numel()) or 1
        chunks = math.ceil(batch.num_tasks / max(1, CHUNK_INPUT_ELEMENTS // per_task))
        return math.ceil(batch.num_tasks / chunks)

    def get_extra_state(self) -> dict:
        return {"chosen_strategy": self.chosen_strategy}

    def set_extra_state(self, state: dict) -> None:
        if self.strategy == "auto" and state.get("chosen_strategy"):
            self.chosen_strategy = state["chosen_strategy"]


def auto_strategy(model: nn.Module, device: torch.device | str) -> str:
    """What ``hardware.strategy=auto`` computes ``model`` with on ``device``: a fixed rule, no timing.

    ``batched`` wherever :func:`~mamlrun.models.batched.supports` the model: on CPU it was the
    fastest strategy on every benchmark shape (``make bench``: the sinusoid MLP, the Omniglot conv
    net with 1 or 15 query images per class, 20-way with 5 inner steps; tied with ``vmap`` on the
    no-conv Omniglot MLP); on a GPU it issues the fewest kernels (one grouped kernel per layer for all tasks, where
    ``loop`` issues one per task and ``vmap`` adds batching-rule overhead). Other models get
    ``vmap``, which runs any ``functional_call``-able network.
    """
    del device  # the same rule on every device today; kept so that the rule may depend on it
    return "batched" if supports(model) else "vmap"


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
