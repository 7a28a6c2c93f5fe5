"""Training-mode batch norm whose second derivative costs a few fused passes.

Second-order MAML differentiates the inner gradient, so every batch norm in the network is
differentiated twice. PyTorch's own double backward of batch norm (``batchnorm_double_backward``)
is a generic chain of about sixty full-size elementwise operations: on the Omniglot 20-way 5-shot
step it was a third of the time of a meta-iteration, twenty times the cost of the fused backward
it differentiates. :func:`batch_norm` computes the same function, gradient and second derivative
with PyTorch's fused batch-norm kernels and the closed form below (about sixteen full-size passes).

Notation, per channel over its ``M`` elements: ``mu``, ``r = (var + eps)^-1/2``,
``xhat = (x - mu) r``, ``y = w xhat + b``. The backward of the upstream gradient ``gy`` is
``gx = r (a - E[a] - xhat E[a xhat])`` with ``a = w gy``, ``gw = sum(gy xhat)``, ``gb = sum(gy)``,
where ``P(g) = r (g - E[g] - xhat E[g xhat])`` is the fused backward kernel with unit weight. Its
derivative, for cotangents ``ggx, ggw, ggb`` of ``gx, gw, gb``:

- with respect to ``gy``: ``w P(ggx) + ggw xhat + ggb``;
- with respect to ``w``: ``sum(gy P(ggx))``;
- with respect to ``x``: ``P(v) - (g_r r^2 / M) xhat``, where ``v = -r E[a xhat] ggx + (ggw - w r
  E[ggx xhat]) gy`` is the cotangent reaching ``xhat`` and ``g_r = w sum(ggx gy) - E[a] sum(ggx) -
  E[a xhat] sum(ggx xhat)`` the one reaching ``r`` directly (``dr/dx = -r^2 xhat / M``).

The closed form is itself written in differentiable operations, so higher derivatives stay exact.
Outside the ``batched`` strategy (under ``torch.func`` transforms) :class:`~mamlrun.models.layers.BatchNorm`'s
elementary form is used instead.

References:
    Ioffe, Szegedy. "Batch Normalization." ICML 2015 (the forward and first derivative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` with a cheap double backward.

    ``x`` is ``[N, C, *spatial]``; ``weight`` and ``bias`` are ``[C]``. Falls back to
    ``F.batch_norm`` under ``torch.func`` transforms (an ``autograd.Function`` with a saved context
    does not run there).
    """
    if torch._C._are_functorch_transforms_active():
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _BatchNorm.apply(x, weight, bias, eps)


def _channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel ``[C]`` tensor shaped to broadcast against ``x`` (``[N, C, *spatial]``)."""
    return t.view(1, -1, *(1,) * (x.dim() - 2))


class _BatchNorm(torch.autograd.Function):
    """The forward: PyTorch's fused kernel; the backward: :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps)
        return gx, gw, gb, None


class _BatchNormBackward(torch.autograd.Function):
    """``(gy, x, w) -> (gx, gw, gb)``, differentiable by the closed form of the module docstring."""

    @staticmethod
    def forward(ctx, gy, x, weight, mean, invstd, eps):
        gx, gw, gb = _fused_backward(gy, x, weight, mean, invstd, eps)
        ctx.save_for_backward(gy, x, weight, mean, invstd, gw, gb)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # an unused output's cotangent stays None: no full-size zeros
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        gy, x, weight, mean, invstd, gw, gb = ctx.saved_tensors
        m = x.numel() / x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        r = invstd
        xhat = torch.addcmul(_channel(-mean * r, x), x, _channel(r, x))
        mean_a, mean_axhat = weight * gb / m, weight * gw / m  # E[a], E[a xhat] with a = w gy
        grad_gy = grad_w = grad_x = None
        coef_gy = ggw if ggw is not None else torch.zeros_like(weight)
        v = None
        if ggx is not None:
            h, s1, s0 = _fused_backward(ggx, x, None, mean, invstd, ctx.eps)  # P(ggx), sum(ggx xhat), sum(ggx)
            grad_gy = h * _channel(weight, x)
            grad_w = (gy * h).sum(dims)
            coef_gy = coef_gy - weight * r * s1 / m
            v = ggx * _channel(-r * mean_axhat, x)
            g_r = weight * (ggx * gy).sum(dims) - mean_a * s0 - mean_axhat * s1
        if ggw is not None:
            grad_gy = xhat * _channel(ggw, x) if grad_gy is None else torch.addcmul(grad_gy, xhat, _channel(ggw, x))
        if ggb is not None:
            grad_gy = _channel(ggb, x).expand_as(gy) if grad_gy is None else grad_gy + _channel(ggb, x)
        if ggx is not None or ggw is not None:
            v = gy * _channel(coef_gy, x) if v is None else torch.addcmul(v, gy, _channel(coef_gy, x))
            grad_x = _fused_backward(v, x, None, mean, invstd, ctx.eps)[0]
            if ggx is not None:
                grad_x = torch.addcmul(grad_x, xhat, _channel(-g_r * r * r / m, x))
        return grad_gy, grad_x, grad_w, None, None, None


def _fused_backward(g, x, weight, mean, invstd, eps):
    """PyTorch's fused training-mode backward: ``(P_w(g), sum(g xhat), sum(g))``."""
    return torch.ops.aten.native_batch_norm_backward(
        g, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
    )
