"""MAML and first-order MAML."""

from __future__ import annotations

from mamlrun.algorithms.base import Algorithm


class MAML(Algorithm):
    """Model-Agnostic Meta-Learning with exact meta-gradients through every inner step.

    Per task: ``inner_steps`` SGD updates on the support set give ``theta'``; the meta-loss is the
    query loss at ``theta'``, averaged over the meta-batch. The meta-gradient passes through the
    inner updates (Hessian-vector products, nested ``inner_steps`` deep) unless ``first_order``,
    in which case it is the query gradient evaluated at ``theta'`` (FOMAML; ``algorithm=fomaml``
    is this class with ``first_order: true``). Every hook is :class:`Algorithm`'s default.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks." ICML 2017, Algorithm 2 and section 5.2 (first-order approximation).
    """
