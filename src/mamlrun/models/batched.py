"""Forward passes with a separate set of parameters for every task, without ``vmap``.

``batched_forward(model, params, x)`` takes parameters with a leading task dimension
(``[tasks, *shape]``) and inputs ``[tasks, n, *input_shape]``, and computes every task's forward
pass with batched kernels: ``baddbmm`` for linear layers, one grouped convolution for all tasks'
convolutions, batch norm over each task's own examples. For the small networks of meta-learning,
this does the same arithmetic as ``vmap(functional_call)`` with less per-operation overhead.

Models built from the supported layers (``nn.Sequential`` of ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``, ``MaxPool2d`` and :class:`~mamlrun.models.layers.BatchNorm`, or any module defining
``batched_forward(params, x)`` in terms of these) are supported; :func:`supports` tells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.models.layers import BatchNorm

LEAVES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d, BatchNorm)


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
    return sequential(model, params, x, "")


def sequential(seq: nn.Sequential, params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str) -> torch.Tensor:
    for name, layer in seq.named_children():
        x = layer_forward(layer, params, x, f"{prefix}{name}.")
    return x


def layer_forward(layer: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str) -> torch.Tensor:
    tasks, n = x.shape[:2]
    if isinstance(layer, nn.Linear):
        w, b = params[prefix + "weight"], params.get(prefix + "bias")
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    if isinstance(layer, nn.Conv2d):
        w, b = params[prefix + "weight"], params.get(prefix + "bias")
        out_ch, in_ch = w.shape[1], w.shape[2]
        # Tasks become groups: [tasks, n, c, h, w] -> [n, tasks * c, h, w].
        merged = x.transpose(0, 1).reshape(n, tasks * in_ch, *x.shape[3:])
        out = F.conv2d(
            merged,
            w.reshape(tasks * out_ch, *w.shape[2:]),
            None if b is None else b.reshape(-1),
            layer.stride,
            layer.padding,
            layer.dilation,
            groups=tasks * layer.groups,
        )
        return out.reshape(n, tasks, out_ch, *out.shape[2:]).transpose(0, 1)
    if isinstance(layer, BatchNorm):
        dims = (1, *range(3, x.dim()))
        shape = (tasks, 1, -1) + (1,) * (x.dim() - 3)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        w, b = params[prefix + "weight"].view(shape), params[prefix + "bias"].view(shape)
        return (x - mean) * torch.rsqrt(var + layer.eps) * w + b
    if isinstance(layer, nn.ReLU):
        return x.relu()
    if isinstance(layer, nn.Flatten):
        return x.flatten(2)
    if isinstance(layer, nn.MaxPool2d):
        out = F.max_pool2d(x.flatten(0, 1), layer.kernel_size, layer.stride, layer.padding)
        return out.unflatten(0, (tasks, n))
    if isinstance(layer, nn.Sequential):
        return sequential(layer, params, x, prefix)
    raise TypeError(f"batched_forward does not support {type(layer).__name__}")
