"""The ``MetaLearner`` interface and the torch.func machinery the algorithms share.

Every algorithm is an ``nn.Module`` that owns the network (and any other meta-parameters, such as
Meta-SGD's step sizes), so one optimizer, one ``state_dict`` and one ``.to(device)`` serve them all.
The trainer only calls :meth:`MetaLearner.update` and :meth:`MetaLearner.evaluate`.

Parameters adapted to the tasks of a meta-batch are held *batched*: a dict of tensors whose
leading dimension is the task. One inner SGD step on all tasks runs by one of three strategies,
all exact and all differentiable to any order:

- ``vmap``: ``torch.func.vmap`` over ``torch.func.grad`` of the per-task loss;
- ``batched``: one forward pass of all tasks with batched kernels (:mod:`mamlrun.models.batched`;
  a ``vmap``-ed forward for models it does not cover), then one ``torch.autograd.grad`` of the
  summed task losses with respect to the batched parameters (tasks are independent, so that is
  every task's gradient). On CPU it runs the meta-batch in cache-sized chunks of tasks
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
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError
from mamlrun.models.batched import batched_forward, supports

Params = dict[str, torch.Tensor]
STRATEGIES = ("auto", "vmap", "batched", "loop")
# Input elements per chunk of the batched strategy on CPU (``MetaLearner.cache_chunk_size``):
# 160 Omniglot images, the best of the chunk sizes measured on the Omniglot benchmark shapes.
CHUNK_INPUT_ELEMENTS = 160 * 28 * 28


class MetaLearner(nn.Module):
    """What the trainer knows of an algorithm.

    Subclasses implement :meth:`meta_gradient`; evaluation (fine-tune on the support set, measure on
    the query set after every inner step) is shared.

    Args:
        model: a network whose forward works under ``functional_call`` and ``vmap``.
        task_type: ``"regression"`` (MSE) or ``"classification"`` (cross-entropy and accuracy).
        inner_lr: step size alpha of the inner SGD updates.
        inner_steps: inner updates during meta-training.
        test_inner_steps: inner updates at validation/test time (metrics are kept after every one).
        first_order: drop the second-order term of the meta-gradient.
        chunk_size: tasks per chunk of the meta-batch (``None``: the whole meta-batch at once).
        strategy: one of ``auto``, ``vmap``, ``batched``, ``loop`` (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        task_type: str,
        inner_lr: float,
        inner_steps: int,
        test_inner_steps: int,
        first_order: bool = False,
        chunk_size: int | None = None,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if task_type not in ("regression", "classification"):
            raise MamlrunError(f"unknown task type {task_type!r}")
        if strategy not in STRATEGIES:
            raise MamlrunError(f"hardware.strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self.model = model
        self.task_type = task_type
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.test_inner_steps = int(test_inner_steps)
        self.first_order = bool(first_order)
        self.chunk_size = int(chunk_size) if chunk_size else None
        self.strategy = strategy
        # Fixed at the first meta-batch (``auto`` then knows the device); restored from checkpoints.
        self.chosen_strategy: str | None = None if strategy == "auto" else strategy
        self._has_batched_kernels = supports(model)

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
        return ("loss", "acc") if self.task_type == "classification" else ("loss",)

    # -- what the trainer calls -------------------------------------------------------------
    def meta_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad`` of the meta-parameters.

        Returns detached training statistics (``loss`` and, for classification, ``acc``), kept on
        the device so that the hot loop never waits for a host copy.
        """
        self.chosen_strategy = self.strategy_name
        return self.task_gradient(batch)

    def update(self, batch: TaskBatch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One meta-iteration: the meta-gradient of ``batch``, then one optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        stats = self.meta_gradient(batch)
        optimizer.step()
        return stats

    def task_gradient(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """The algorithm's meta-gradient with ``self.chosen_strategy`` (implemented by subclasses)."""
        raise NotImplementedError

    def evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Fine-tune on each task's support set; query metrics after 0..steps inner updates.

        Returns ``loss`` (and ``acc`` for classification) of shape ``[steps + 1, tasks]``.
        """
        steps = self.test_inner_steps if steps is None else steps
        out = [self.query_metrics(p, batch.x_query, batch.y_query) for p in self._adaptation(batch, steps)]
        return {name: torch.stack([o[i] for o in out]).detach() for i, name in enumerate(self.stat_names)}

    def predictions(self, batch: TaskBatch, steps: int) -> torch.Tensor:
        """Outputs on ``batch.x_query`` after 0..steps inner updates: ``[steps + 1, tasks, n, out]``."""
        forward = vmap(self.forward_with)
        return torch.stack([forward(p, batch.x_query).detach() for p in self._adaptation(batch, steps)])

    def _adaptation(self, batch: TaskBatch, steps: int):
        """Batched parameters before and after each of ``steps`` first-order inner updates."""
        self.chosen_strategy = self.strategy_name
        meta = self.detached_meta()
        params = self.expand(meta["params"], batch.num_tasks)
        yield params
        for _ in range(steps):
            params = {
                k: v.detach()
                for k, v in self.inner_step(meta, params, batch.x_support, batch.y_support, first_order=True).items()
            }
            yield params

    # -- functional pieces ------------------------------------------------------------------
    def meta_state(self) -> dict[str, Params]:
        """The meta-parameters as the functional code sees them (``params`` plus extras)."""
        return {"params": dict(self.model.named_parameters())}

    def detached_meta(self) -> dict[str, Params]:
        return {k: {n: t.detach() for n, t in v.items()} for k, v in self.meta_state().items()}

    def step_size(self, meta: dict[str, Params], name: str) -> torch.Tensor | float:
        """The inner step size for parameter ``name`` (a scalar; Meta-SGD learns a tensor)."""
        return self.inner_lr

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.forward_with(params, x)
        return F.cross_entropy(out, y) if self.task_type == "classification" else F.mse_loss(out, y)

    def metrics(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Loss (and accuracy) of one task's examples."""
        out = self.forward_with(params, x)
        if self.task_type == "classification":
            return F.cross_entropy(out, y), (out.argmax(-1) == y).to(out.dtype).mean()
        return (F.mse_loss(out, y),)

    @staticmethod
    def expand(params: Params, num_tasks: int) -> Params:
        """One copy of ``params`` per task (a broadcast view: gradients flow back to the original)."""
        return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}

    def inner_step(
        self, meta: dict[str, Params], params: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool
    ) -> Params:
        """One SGD step on every task: ``theta'_i = theta_i - alpha * grad L_i(theta_i)``.

        ``params`` and the returned dict are batched over tasks. The step stays differentiable for
        the enclosing autograd (second order) unless ``first_order`` (FOMAML), which treats the
        inner gradient as a constant.
        """
        strategy = self.chosen_strategy
        if strategy == "vmap":

            def one(p, xt, yt):
                g = grad(self.loss)(p, xt, yt)
                return {k: g[k].detach() if first_order else g[k] for k in g}

            grads = vmap(one)(params, x, y)
        else:
            names = list(params)
            needs_graph = torch.is_grad_enabled() and any(v.requires_grad for v in params.values())
            if not needs_graph:  # evaluation: differentiate a fresh leaf copy
                params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            with torch.enable_grad():
                if strategy == "batched":
                    total = self.batched_losses(params, x, y).sum()
                    flat = torch.autograd.grad(
                        total,
                        [params[k] for k in names],
                        create_graph=not first_order and needs_graph,
                        retain_graph=True,
                    )
                else:
                    per_task = []
                    for t in range(x.shape[0]):
                        p_t = {k: params[k][t] for k in names}
                        per_task.append(
                            torch.autograd.grad(
                                self.loss(p_t, x[t], y[t]),
                                list(p_t.values()),
                                create_graph=not first_order and needs_graph,
                                retain_graph=True,
                            )
                        )
                    flat = [torch.stack(gs) for gs in zip(*per_task)]
            grads = dict(zip(names, flat))
            if not needs_graph:
                params = {k: v.detach() for k, v in params.items()}
        # A learned step size (Meta-SGD) has the parameter's shape and broadcasts over tasks.
        return {k: p - self.step_size(meta, k) * grads[k] for k, p in params.items()}

    def adapt(self, meta: dict[str, Params], x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool) -> Params:
        """``steps`` inner updates from the meta-parameters on every task of ``x``, ``y``."""
        params = self.expand(meta["params"], x.shape[0])
        for _ in range(steps):
            params = self.inner_step(meta, params, x, y, first_order)
        return params

    def query_metrics(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task metrics of batched ``params`` on ``x``, ``y``: each a ``[tasks]`` tensor."""
        if self.chosen_strategy == "loop":
            per_task = [self.metrics({k: v[t] for k, v in params.items()}, x[t], y[t]) for t in range(x.shape[0])]
            return tuple(torch.stack(m) for m in zip(*per_task))
        if self.chosen_strategy == "batched":
            return self.batched_metrics(params, x, y)
        return vmap(self.metrics)(params, x, y)

    def batched_metrics(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-task metrics from one batched forward pass (vmap-ed when the model has no batched kernels)."""
        if not self._has_batched_kernels:
            return vmap(self.metrics)(params, x, y)
        out = batched_forward(self.model, params, x)
        if self.task_type == "classification":
            return self._task_losses(out, y), (out.argmax(-1) == y).to(out.dtype).mean(1)
        return (self._task_losses(out, y),)

    def batched_losses(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task losses only: what an inner step differentiates (no accuracy in the hot path)."""
        if not self._has_batched_kernels:
            return vmap(self.loss)(params, x, y)
        return self._task_losses(batched_forward(self.model, params, x), y)

    def _task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task_type == "classification":
            return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        return ((out - y) ** 2).flatten(1).mean(1)

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
