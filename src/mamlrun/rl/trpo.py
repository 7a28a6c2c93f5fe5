"""Trust-region policy optimisation as an optimizer: conjugate gradient, KL constraint, line search."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mamlrun import parallel

Closure = Callable[[bool], tuple[torch.Tensor, torch.Tensor]]


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10, tol: float = 1e-10
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    References:
        Hestenes & Stiefel 1952; Schulman et al. 2015, appendix C (TRPO's use of it).
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class TRPO(torch.optim.Optimizer):
    """One TRPO update per :meth:`step`: maximise the surrogate within a KL trust region.

    The step direction solves ``H s = g`` by conjugate gradient, with ``H`` the Hessian of the KL
    (Hessian-vector products by double backward, plus ``cg_damping``); it is scaled so that the
    quadratic model of the KL equals ``max_kl``, then shrunk by ``ls_backtrack_ratio`` until the
    surrogate loss decreases and the exact KL stays within ``max_kl``. No acceptable step: the
    parameters stay as they were.

    Args:
        params: the policy's (meta-)parameters.
        max_kl: trust-region radius (mean KL between the old and new policies).
        cg_iters: conjugate-gradient iterations.
        cg_damping: added to ``H`` for stability.
        ls_max_steps: backtracking line-search steps.
        ls_backtrack_ratio: step shrink factor of the line search.

    References:
        Schulman et al. 2015, "Trust Region Policy Optimization"; Finn et al. 2017, section 5.3
        (TRPO as the meta-optimizer).
    """

    rl_only = True  # a meta-RL optimizer: supervised learners refuse it

    def __init__(
        self,
        params,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        ls_max_steps: int = 15,
        ls_backtrack_ratio: float = 0.8,
    ) -> None:
        defaults = dict(
            max_kl=max_kl,
            cg_iters=cg_iters,
            cg_damping=cg_damping,
            ls_max_steps=ls_max_steps,
            ls_backtrack_ratio=ls_backtrack_ratio,
        )
        super().__init__(params, defaults)

    def step(  # type: ignore[override]
        self, closure: Closure, fisher_vector: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """``closure(differentiable)`` returns ``(surrogate loss, mean KL)`` at the current parameters.

        With ``differentiable=False`` it may skip building the graph for derivatives (line search).
        ``fisher_vector(v)``, when given, returns the KL's Hessian times the flat vector ``v`` (without
        damping) in place of double backward through ``closure``'s KL. Returns the update's statistics:
        surrogate loss before and after, KL, line-search steps taken (``-1``: no acceptable step).
        """
        group = self.param_groups[0]
        params = [p for g in self.param_groups for p in g["params"]]
        loss, kl = closure(True)
        # Data-parallel: each rank's closure covers its share of the tasks; the means over ranks are
        # the meta-batch's gradient, curvature products and values, so every rank takes the same step.
        grad = parallel.mean(_flat(torch.autograd.grad(loss, params, retain_graph=True)))
        if fisher_vector is None:
            kl_grad = _flat(torch.autograd.grad(kl, params, create_graph=True))

            def fisher_vector(v: torch.Tensor) -> torch.Tensor:
                return _flat(torch.autograd.grad(kl_grad @ v, params, retain_graph=True))

        def damped(v: torch.Tensor) -> torch.Tensor:
            return parallel.mean(fisher_vector(v)) + group["cg_damping"] * v

        direction = conjugate_gradient(damped, grad, group["cg_iters"])
        curvature = 0.5 * (direction @ damped(direction)).item()
        loss_before = parallel.mean(loss).item()
        stats = {"surrogate_before": loss_before, "surrogate_after": loss_before, "kl": 0.0, "line_search_steps": -1}
        if not (curvature > 0 and math.isfinite(curvature)):
            return stats
        full_step = direction * math.sqrt(group["max_kl"] / curvature)
        old = [p.detach().clone() for p in params]
        for k in range(group["ls_max_steps"]):
            fraction = group["ls_backtrack_ratio"] ** k
            self._assign(params, old, full_step, fraction)
            new_loss, new_kl = (parallel.mean(v).item() for v in closure(False))
            if new_loss < loss_before and new_kl <= group["max_kl"]:
                stats.update(surrogate_after=new_loss, kl=new_kl, line_search_steps=k)
                return stats
        self._assign(params, old, full_step, 0.0)
        return stats

    @staticmethod
    def _assign(params, old, step: torch.Tensor, fraction: float) -> None:
        offset = 0
        with torch.no_grad():
            for p, p0 in zip(params, old):
                n = p.numel()
                p.copy_(p0 - fraction * step[offset : offset + n].view_as(p))
                offset += n
