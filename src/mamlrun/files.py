"""Files written whole or not at all: checkpoints, metrics, dataset caches."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place.

    An interrupted write never leaves a broken ``path``; the temporary name carries the process id,
    so concurrent writers of one path (jobs of a sweep sharing a cache) never share a temporary file.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj: object, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"))
