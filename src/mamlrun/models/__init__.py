"""Networks usable through ``torch.func.functional_call`` (no running statistics, no in-place state)."""

from mamlrun.models.conv import Conv4
from mamlrun.models.mlp import MLP

__all__ = ["MLP", "Conv4"]
