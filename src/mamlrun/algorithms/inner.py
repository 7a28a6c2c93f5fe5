"""The inner loop: every learner's adaptation, for every algorithm and every strategy.

:func:`inner_loop` takes parameters batched over tasks (a dict of ``[tasks, *shape]`` tensors), a
per-task gradient function, a per-step step size, which parameters adapt, and the order of the
meta-gradient; it returns the parameters after every step. The gradient function is where the
strategies differ (all exact, all differentiable to any order):

- :func:`batched_gradients`: one backward pass of the summed per-task losses (tasks are
  independent, so that is every task's gradient); the losses come from one batched forward;
- :func:`vmap_gradients`: ``torch.func.vmap`` over ``torch.func.grad`` of one task's loss;
- :func:`loop_gradients`: one task at a time with ``torch.autograd.grad``.

A loss function receives the step index, so an algorithm may use step-dependent parameters (MAML++'s
per-step batch norm). Supervised learners and the meta-RL learner adapt through this one function.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks."
    ICML 2017, Algorithm 2, line 6 (the inner update), and section 5.2 (first-order approximation).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch.func import grad, vmap

Params = dict[str, torch.Tensor]
# (batched parameters, names to differentiate, step index, create_graph) -> per-task gradients by name
Gradients = Callable[[Params, list[str], int, bool], Params]
StepSize = Callable[[int, str], "torch.Tensor | float"]


def expand(params: Params, tasks: int) -> Params:
    """One copy of ``params`` per task (a broadcast view: gradients flow back to the original)."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def inner_loop(
    params: Params,
    gradients: Gradients,
    steps: int,
    step_size: StepSize,
    adapt: Collection[str] | None = None,
    first_order: bool = False,
) -> list[Params]:
    """``steps`` gradient steps on every task: ``theta_{k+1} = theta_k - alpha(k, name) * g_k``.

    Args:
        params: batched parameters ``[tasks, *shape]`` (e.g. :func:`expand` of the meta-parameters).
        gradients: per-task gradients of the step-``k`` loss (:func:`batched_gradients`, ...).
        steps: the number of inner steps.
        step_size: ``alpha(k, name)``: a float, or a tensor broadcasting against the parameter
            (Meta-SGD's per-coordinate rates, MAML++'s learned per-step rates).
        adapt: the names of the parameters that adapt (``None``: all); the others stay as given.
        first_order: treat the inner gradients as constants (no second-order term through them).

    Returns:
        The parameters before and after every step: ``steps + 1`` dicts. Differentiable with
        respect to ``params`` (and to tensor step sizes) for an enclosing backward pass.
    """
    names = [n for n in params if adapt is None or n in adapt]
    trajectory = [params]
    for k in range(steps):
        g = gradients(params, names, k, not first_order)
        params = {n: p - step_size(k, n) * g[n] if n in g else p for n, p in params.items()}
        trajectory.append(params)
    return trajectory


def _inputs(params: Params, names: list[str]) -> tuple[Params, bool]:
    """The parameters to differentiate, and whether an enclosing graph exists.

    Without one (evaluation, or values only), ``names`` become fresh leaves so the inner gradient
    can still be taken, and nothing is recorded for the caller.
    """
    needs_graph = torch.is_grad_enabled() and any(v.requires_grad for v in params.values())
    if needs_graph:
        return params, True
    return {k: v.detach().requires_grad_(k in names) for k, v in params.items()}, False


def batched_gradients(losses: Callable[[Params, int], torch.Tensor]) -> Gradients:
    """Gradients from ``losses(params, step) -> [tasks]`` computed for all tasks at once."""

    def gradients(params: Params, names: list[str], step: int, create_graph: bool) -> Params:
        inputs, needs_graph = _inputs(params, names)
        with torch.enable_grad():
            total = losses(inputs, step).sum()
            flat = torch.autograd.grad(
                total, [inputs[n] for n in names], create_graph=create_graph and needs_graph, retain_graph=True
            )
        return dict(zip(names, flat))

    return gradients


def loop_gradients(loss: Callable[..., torch.Tensor], *data: torch.Tensor) -> Gradients:
    """Gradients of ``loss(params_t, step, *data_t)`` one task at a time (the textbook computation)."""

    def gradients(params: Params, names: list[str], step: int, create_graph: bool) -> Params:
        inputs, needs_graph = _inputs(params, names)
        per_task = []
        with torch.enable_grad():
            for t in range(data[0].shape[0]):
                p_t = {k: v[t] for k, v in inputs.items()}
                value = loss(p_t, step, *(d[t] for d in data))
                per_task.append(
                    torch.autograd.grad(
                        value, [p_t[n] for n in names], create_graph=create_graph and needs_graph, retain_graph=True
                    )
                )
        return {n: torch.stack([g[i] for g in per_task]) for i, n in enumerate(names)}

    return gradients


def vmap_gradients(loss: Callable[..., torch.Tensor], *data: torch.Tensor) -> Gradients:
    """Gradients of ``loss(params_t, step, *data_t)`` by ``vmap(grad(...))`` over tasks."""

    def gradients(params: Params, names: list[str], step: int, create_graph: bool) -> Params:
        adapted = {n: params[n] for n in names}
        rest = {k: v for k, v in params.items() if k not in adapted}

        def one(a: Params, r: Params, *d: torch.Tensor) -> Params:
            g = grad(lambda p: loss({**r, **p}, step, *d))(a)
            return g if create_graph else {k: v.detach() for k, v in g.items()}

        return vmap(one)(adapted, rest, *data)

    return gradients
