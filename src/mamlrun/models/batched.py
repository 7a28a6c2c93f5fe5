"""Forward passes with a separate set of parameters for every task, without ``vmap``.

``batched_forward(model, params, x)`` takes parameters with a leading task dimension
(``[tasks, *shape]``) and inputs ``[tasks, n, *input_shape]``, and computes every task's forward
pass with batched kernels: ``baddbmm`` for linear layers, one grouped convolution for all tasks'
convolutions, batch norm over each task's own examples. For the small networks of meta-learning,
this does the same arithmetic as ``vmap(functional_call)`` with less per-operation overhead.

Image activations between convolutions stay in the *grouped* layout ``[n, tasks * channels, h, w]``
(:class:`Grouped`): the layout a grouped convolution reads and writes, in which every task's
channel is a channel of its own. Batch norm over each task's own examples is then PyTorch's fused
batch norm over those channels, and ReLU and pooling run on it unchanged; nothing is transposed
or copied between layers. The convolutions (:mod:`mamlrun.models.convolution`) and batch norms
(:mod:`mamlrun.models.batch_norm`) have closed-form second derivatives, exact to any order.

Models built from the supported layers (``nn.Sequential`` of ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``, ``MaxPool2d`` and :class:`~mamlrun.models.layers.BatchNorm`, or any module defining
``batched_forward(params, x)`` in terms of these) are supported; :func:`supports` tells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.models import batch_norm as fused
from mamlrun.models.convolution import grouped_conv2d
from mamlrun.models.layers import BatchNorm, batch_norm

LEAVES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d, BatchNorm)


class Grouped(NamedTuple):
    """Image activations of every task in the grouped-convolution layout.

    Attributes:
        data: ``[n, tasks * channels, h, w]``; channel ``t * channels + c`` is channel ``c`` of task ``t``.
        tasks: the number of tasks.
    """

    data: torch.Tensor
    tasks: int

    @staticmethod
    def of(x: torch.Tensor) -> Grouped:
        """From the task-major layout ``[tasks, n, c, h, w]``."""
        tasks, n = x.shape[:2]
        return Grouped(x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:]), tasks)

    def tasks_first(self) -> torch.Tensor:
        """The task-major view ``[tasks, n, c, h, w]`` (no copy)."""
        n = self.data.shape[0]
        return self.data.view(n, self.tasks, -1, *self.data.shape[2:]).transpose(0, 1)

    def channel_means(self) -> torch.Tensor:
        """Every example's per-channel spatial mean, task-major: ``[tasks, n, c]``."""
        n = self.data.shape[0]
        return self.data.mean((2, 3)).view(n, self.tasks, -1).transpose(0, 1)


def supports(model: nn.Module) -> bool:
    """Whether :func:`batched_forward` can run ``model``."""
    if hasattr(model, "batched_forward"):
        return True
    if not isinstance(model, nn.Sequential):
        return False
    return all(isinstance(m, LEAVES) or supports(m) for m in model.children())


def batched_forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every task's output: ``[tasks, n, *output_shape]``."""
    if hasattr(model, "batched_forward"):
        return model.batched_forward(params, x)
    return tasks_first(sequential(model, params, x, ""))


def linear_head(model: nn.Module, head: str) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None:
    """The body of ``model`` below its final linear module ``head``, as a batched function.

    Returns ``body(params, x) -> [tasks, n, features]``, every task's input to ``head`` (so that
    ``layer_forward(head_module, params, body(params, x), head + ".")`` is :func:`batched_forward`),
    or ``None`` when ``head`` is not a final ``nn.Linear`` that :func:`batched_forward` reaches last:
    a model defining ``batched_features`` with a linear ``head``, or a supported ``nn.Sequential``
    ending in it.
    """
    if hasattr(model, "batched_features"):
        return model.batched_features if isinstance(getattr(model, head, None), nn.Linear) else None
    if not (isinstance(model, nn.Sequential) and supports(model)):
        return None
    children = list(model.named_children())
    if not children or children[-1][0] != head or not isinstance(children[-1][1], nn.Linear):
        return None

    def body(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for name, layer in children[:-1]:
            x = layer_forward(layer, params, x, f"{name}.")
        return tasks_first(x)

    return body


def tasks_first(x: torch.Tensor | Grouped) -> torch.Tensor:
    """Activations in the task-major layout ``[tasks, n, ...]``."""
    return x.tasks_first() if isinstance(x, Grouped) else x


def sequential(
    seq: nn.Sequential, params: dict[str, torch.Tensor], x: torch.Tensor | Grouped, prefix: str
) -> torch.Tensor | Grouped:
    """The children of ``seq`` in order; the result may be :class:`Grouped` (see :func:`tasks_first`)."""
    for name, layer in seq.named_children():
        x = layer_forward(layer, params, x, f"{prefix}{name}.")
    return x


def layer_forward(
    layer: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor | Grouped, prefix: str
) -> torch.Tensor | Grouped:
    """One layer on every task: task-major tensors in, task-major tensors or :class:`Grouped` out."""
    if isinstance(layer, nn.Conv2d):
        g = x if isinstance(x, Grouped) else Grouped.of(x)
        w, b = params[prefix + "weight"], params.get(prefix + "bias")
        out = grouped_conv2d(
            g.data,
            w.reshape(g.tasks * w.shape[1], *w.shape[2:]),
            None if b is None else b.reshape(-1),
            layer.stride,
            layer.padding,
            layer.dilation,
            g.tasks,
            layer.groups,
        )
        return Grouped(out, g.tasks)
    if isinstance(layer, BatchNorm):
        w, b = params[prefix + "weight"], params[prefix + "bias"]
        if isinstance(x, Grouped) or x.dim() > 3:
            g = x if isinstance(x, Grouped) else Grouped.of(x)
            out = fused.batch_norm(g.data, w.reshape(-1), b.reshape(-1), layer.eps)
            return Grouped(out, g.tasks)
        # [tasks, n, c]: statistics over dimension 1, per task and channel.
        return batch_norm(x, w.unsqueeze(1), b.unsqueeze(1), (1,), layer.eps)
    if isinstance(layer, nn.ReLU):
        return Grouped(x.data.relu(), x.tasks) if isinstance(x, Grouped) else x.relu()
    if isinstance(layer, nn.MaxPool2d):
        if isinstance(x, Grouped):  # pooling is per channel: the grouped layout pools as it is
            return Grouped(F.max_pool2d(x.data, layer.kernel_size, layer.stride, layer.padding), x.tasks)
        out = F.max_pool2d(x.flatten(0, 1), layer.kernel_size, layer.stride, layer.padding)
        return out.unflatten(0, x.shape[:2])
    if isinstance(layer, nn.Sequential):
        return sequential(layer, params, x, prefix)
    x = tasks_first(x)
    if isinstance(layer, nn.Linear):
        w, b = params[prefix + "weight"], params.get(prefix + "bias")
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    if isinstance(layer, nn.Flatten):
        return x.flatten(2)
    raise TypeError(f"batched_forward does not support {type(layer).__name__}")
