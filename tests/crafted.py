"""Hostile and broken files for the trust tests: code-running pickles, damaged checkpoints and archives."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from mamlrun.assemble import build_run
from mamlrun.config import build
from mamlrun.train import Schedule, Trainer
from tests.conftest import compose_config


class Payload:
    """Unpickling this calls ``exec``, which creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A MiniImagenet-shaped pickle cache whose loading would run code."""
    blob = {"image_data": Payload(marker), "class_dict": {"n0": [0]}}
    path.write_bytes(pickle.dumps(blob))
    return path


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file, written by ``torch.save``, whose loading would run code."""
    torch.save({"learner": {"w": Payload(marker)}, "iteration": 1}, path)
    return path


def real_checkpoint(run_dir: Path, *overrides: str) -> Path:
    """``<run_dir>/checkpoints/last.pt`` as a training run with ``overrides`` writes it (no iterations)."""
    cfg = compose_config(*overrides)
    _, learner = build_run(cfg)
    optimizer = build(cfg.optimizer, params=learner.parameters())
    schedule = Schedule(meta_iterations=0, meta_batch_size=cfg.meta_batch_size)
    config = OmegaConf.to_container(cfg, resolve=True)
    return Trainer(learner, None, optimizer, schedule, run_dir, config, progress=False).save()


def nan_checkpoint(path: Path, source: Path) -> Path:
    """``source`` with its parameters replaced by NaN (what a diverged run used to leave)."""
    state = torch.load(source, weights_only=True)
    state["learner"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state["learner"].items()
        if isinstance(v, torch.Tensor)
    }
    torch.save(state, path)
    return path


def png(size: int = 12, seed: int = 0) -> bytes:
    """A small random black-and-white PNG, like an Omniglot drawing."""
    pixels = (np.random.default_rng(seed).random((size, size)) > 0.5).astype(np.uint8) * 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def omniglot_zip(path: Path, characters: int = 5, drawings: int = 4, extra: dict[str, bytes] | None = None) -> Path:
    """An archive in Omniglot's layout (``images_background/<Alphabet>/<character>/*.png``) plus ``extra`` members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for c in range(characters):
            for d in range(drawings):
                z.writestr(f"images_background/Alpha/character{c:02d}/{c:02d}{d:02d}.png", png(seed=c * 100 + d))
        for member, data in (extra or {}).items():
            z.writestr(member, data)
    return path
