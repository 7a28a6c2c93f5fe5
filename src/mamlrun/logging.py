"""Metric logging: JSONL always, Weights & Biases when asked; only rank 0 writes.

The trainer talks to :class:`MetricLogger` alone. W&B is imported lazily, defaults to offline
mode (never needs an account or a network) and logs the resolved config, metrics and images.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class MetricLogger:
    """Writes ``metrics.jsonl`` (one line per logged step) and mirrors it to W&B.

    Args:
        run_dir: where ``metrics.jsonl`` goes.
        wandb_cfg: ``None`` for no W&B, else the ``logger`` config (``project``, ``mode``, ``group``,
            ``name``, ``entity``, ``tags``).
        config: the resolved run config, recorded by W&B.
        resume_step: on resume, lines logged after this step (work lost at the interruption)
            are dropped, so the file reads as if the run had never stopped.
    """

    def __init__(
        self,
        run_dir: str | Path,
        wandb_cfg: dict | None = None,
        config: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = rank() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._file = self.path.open("a")
        if wandb_cfg is not None:
            self.wandb = _init_wandb(Path(run_dir), wandb_cfg, config or {})

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        row = {k: to_python(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **row}, allow_nan=True) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb is not None:
            values = {k: to_python(v) for k, v in metrics.items()}
            self.wandb.summary.update({k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))})

    def image(self, name: str, path: str | Path, step: int) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _init_wandb(run_dir: Path, cfg: dict, config: dict):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=cfg.get("project", "mamlrun"),
        entity=cfg.get("entity"),
        group=cfg.get("group"),
        name=cfg.get("name"),
        tags=list(cfg.get("tags") or []),
        mode=cfg.get("mode", "offline"),
        dir=str(run_dir),
        config=config,
        id=cfg.get("id"),
        resume="allow" if cfg.get("id") else None,
        settings=wandb.Settings(init_timeout=30, x_disable_stats=True),
    )
