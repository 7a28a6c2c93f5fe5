"""Objects from config groups (``_target_`` and its settings), the device and dtype a run uses.

The checks made before a run starts are :mod:`mamlrun.validation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mamlrun.errors import MamlrunError

if TYPE_CHECKING:
    import torch

# Keys of a group file that describe it (for run names, task kinds) rather than being constructor arguments.
META_KEYS = ("name", "tag", "kind")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype ``hardware.dtype`` names (``float32`` or ``float64``)."""
    import torch

    return getattr(torch, name)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MamlrunError(f"hardware.device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MamlrunError("hardware.device=cuda but no CUDA device is available (use hardware=cpu or hardware=auto)")
    return device


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a group's ``_target_`` with its constructor arguments (``META_KEYS`` left out).

    A :class:`MamlrunError` raised by the constructor reaches the caller as itself, not wrapped.
    """
    spec = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in META_KEYS}
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MamlrunError):
            raise cause from None
        raise MamlrunError(f"cannot build {spec.get('_target_')}: {cause or exc}") from None
