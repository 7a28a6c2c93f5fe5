"""The paper's four-block convolutional networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mamlrun.errors import MamlrunError
from mamlrun.models.layers import BatchNorm


class Conv4(nn.Module):
    """Four ``[3x3 conv, batch norm, ReLU]`` blocks and a linear head.

    Two variants, as in the paper's code:

    - Omniglot (``pool="stride"``, 64 filters): stride-2 convolutions; the head reads the
      features averaged over the remaining spatial positions.
    - MiniImagenet (``pool="max"``, 32 filters): stride-1 convolutions each followed by 2x2 max
      pooling; the head reads the flattened feature map.

    Batch norm is :class:`~mamlrun.models.layers.BatchNorm`: the current batch's statistics at
    training and test time alike (the paper's transductive setting), exact under ``torch.func``.

    References:
        Finn et al. 2017, section 5.2 and appendix A.1; the architecture of Vinyals et al. 2016.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_dim: int,
        filters: int = 64,
        pool: str = "stride",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            shape = tuple(input_shape)
            raise MamlrunError(f"Conv4 needs image inputs [channels, height, width]; the dataset gives {shape}")
        if pool not in ("stride", "max"):
            raise ValueError(f"pool must be 'stride' or 'max', not {pool!r}")
        channels = input_shape[0]
        blocks: list[nn.Module] = []
        for _ in range(4):
            stride = 2 if pool == "stride" else 1
            blocks.append(nn.Conv2d(channels, filters, 3, stride=stride, padding=1))
            if batch_norm:
                blocks.append(BatchNorm(filters))
            blocks.append(nn.ReLU())
            if pool == "max":
                blocks.append(nn.MaxPool2d(2))
            channels = filters
        self.features = nn.Sequential(*blocks)
        self.pool = pool
        with torch.no_grad():
            size = self.features(torch.zeros(2, *input_shape)).shape
        head_in = filters if pool == "stride" else size[1] * size[2] * size[3]
        self.head = nn.Linear(head_in, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = h.mean(dim=(2, 3)) if self.pool == "stride" else h.flatten(1)
        return self.head(h)

    def batched_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """One parameter set per task (see :mod:`mamlrun.models.batched`)."""
        from mamlrun.models.batched import layer_forward

        return layer_forward(self.head, params, self.batched_features(params, x), "head.")

    def batched_features(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Every task's input to the head, ``[tasks, n, head features]`` (the body of ANIL)."""
        from mamlrun.models.batched import Grouped, sequential, tasks_first

        h = sequential(self.features, params, x, "features.")
        if self.pool == "stride":
            return h.channel_means() if isinstance(h, Grouped) else h.mean(dim=(3, 4))
        return tasks_first(h).flatten(2)
