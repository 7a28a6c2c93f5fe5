"""Fully connected networks: the sinusoid regressor and the paper's no-conv Omniglot baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from mamlrun.models.layers import BatchNorm


class MLP(nn.Sequential):
    """``Linear -> [BatchNorm] -> ReLU`` blocks followed by a linear head.

    Batch norm, when enabled, is :class:`~mamlrun.models.layers.BatchNorm`: always the statistics
    of the batch it sees (the paper's transductive setting), exact under ``torch.func``.

    Args:
        input_shape: shape of one example; flattened.
        output_dim: size of the output (1 for regression, ``ways`` for classification).
        hidden: widths of the hidden layers, e.g. ``[40, 40]`` (sinusoid) or ``[256, 128, 64, 64]``.
        batch_norm: add batch norm after every hidden linear layer.

    References:
        Finn et al. 2017, section 5.1 (1-40-40-1 ReLU) and appendix A.1 (256-128-64-64 with BN).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_dim: int,
        hidden: Sequence[int] = (40, 40),
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(BatchNorm(h))
            layers.append(nn.ReLU())
            width = h
        layers.append(nn.Linear(width, output_dim))
        super().__init__(*layers)
