"""Build what a run needs from its composed config: the task sampler and the meta-learner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mamlrun.config import build

if TYPE_CHECKING:
    import torch


def build_run(cfg: DictConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """The task sampler and the meta-learner (with its network) that ``cfg`` describes (float32 by default)."""
    import torch

    dtype = dtype or torch.float32
    sampler = build(cfg.dataset).to(device, dtype)
    model = build(cfg.model, input_shape=tuple(sampler.input_shape), output_dim=sampler.output_dim)
    if sampler.task_type == "rl":
        from mamlrun.rl import MetaRL

        algorithm = cfg.algorithm
        learner = MetaRL(
            model,
            sampler,
            inner_lr=algorithm.inner_lr,
            inner_steps=0 if algorithm.name == "pretrain" else algorithm.inner_steps,
            test_inner_steps=algorithm.test_inner_steps,
            shots=cfg.shots,
            query_shots=cfg.query_shots,
            first_order=algorithm.get("first_order", False),
            later_inner_lr=OmegaConf.select(cfg, "rl.later_inner_lr"),
        )
    else:
        learner = build(
            cfg.algorithm,
            model=model,
            task_type=sampler.task_type,
            chunk_size=cfg.hardware.get("chunk_size"),
            strategy=cfg.hardware.strategy,
        )
    return sampler, learner.to(device=device, dtype=dtype)
