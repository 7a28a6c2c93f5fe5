"""Build what a run needs from its composed config: every component through its ``_target_``.

config -> task sampler (``dataset``) -> network (``model``) -> algorithm hooks (``algorithm``) ->
learner (``learner``: supervised or meta-RL, chosen by the dataset's recipe) -> optimizer and
learning-rate schedule (``optimizer``, ``schedule``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mamlrun.config import build

if TYPE_CHECKING:
    import torch


def build_run(cfg: DictConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """The task sampler and the learner (network and algorithm) that ``cfg`` describes (float32 by default)."""
    import torch

    dtype = dtype or torch.float32
    sampler = build(cfg.dataset).to(device, dtype)
    model = build(cfg.model, input_shape=tuple(sampler.input_shape), output_dim=sampler.output_dim)
    algorithm = build(cfg.algorithm)
    learner = build(cfg.learner, model=model, algorithm=algorithm, tasks=sampler)
    return sampler, learner.to(device=device, dtype=dtype)


def build_optimizer(cfg: DictConfig, learner: torch.nn.Module):
    """The meta-optimizer over every meta-parameter of ``learner``, and its schedule (``None``: constant)."""
    optimizer = build(cfg.optimizer, params=learner.parameters())
    if cfg.schedule.get("_target_") is None:
        return optimizer, None
    return optimizer, build(cfg.schedule, optimizer=optimizer)
