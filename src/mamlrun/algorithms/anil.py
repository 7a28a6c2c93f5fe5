"""ANIL: almost no inner loop."""

from __future__ import annotations

from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.errors import MamlrunError


class ANIL(Algorithm):
    """MAML whose inner loop adapts only the network's head; the body is meta-learned only.

    The body gets no inner-loop update, and its meta-gradient flows through the head's
    adaptation (the head's inner gradient depends on the body's features), exactly to second
    order unless ``first_order``.

    Args:
        head: the module whose parameters adapt (``None``: the module holding the network's last
            parameter, e.g. ``head`` of the conv nets, the final ``Linear`` of an MLP).
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm`.

    References:
        Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
        Effectiveness of MAML." ICLR 2020, section 4 (ANIL).
    """

    rl_form = False  # the meta-RL learner's KL Hessian adapts every parameter

    def __init__(self, *args, head: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = head
        self.head_names: list[str] = []

    def setup(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        head = self.head if self.head is not None else names[-1].rpartition(".")[0]
        self.head_names = [n for n in names if n.startswith(f"{head}.")]
        if not self.head_names:
            raise MamlrunError(f"algorithm.head={head!r} names no module with parameters in {type(model).__name__}")

    def adapts(self, names: list[str]) -> list[str]:
        return self.head_names
