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
META_KEYS = ("name", "tag", "kind", "meta_train")
# Groups options that belong to reinforcement learning (datasets say so with ``kind: rl``).
RL_ONLY = {"model": "gaussian_mlp", "optimizer": "trpo"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype ``hardware.dtype`` names (``float32`` or ``float64``)."""
    import torch

    return getattr(torch, name)


def _check_task_kind(cfg: DictConfig) -> None:
    """RL datasets need a policy, TRPO and an algorithm with an RL form; the others need neither."""
    if cfg.dataset.get("kind") != "rl":
        for group, option in RL_ONLY.items():
            if cfg[group].get("name") == option:
                raise MamlrunError(f"{group}={option} is for RL datasets (dataset=navigation2d, halfcheetah_dir, ...)")
        return
    from mamlrun.rl.learner import RL_ALGORITHMS

    dataset = cfg.dataset.name
    if cfg.algorithm.name not in RL_ALGORITHMS:
        raise MamlrunError(
            f"algorithm={cfg.algorithm.name} has no RL form (dataset={dataset} takes one of {', '.join(RL_ALGORITHMS)})"
        )
    if cfg.algorithm.get("backend", "func") != "func":
        raise MamlrunError(f"dataset={dataset} runs on the func backend only (algorithm.backend=func)")
    for group, option in RL_ONLY.items():
        if cfg[group].get("name") != option:
            raise MamlrunError(f"dataset={dataset} needs {group}={option}, got {group}={cfg[group].get('name')}")


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
