"""Decoded datasets cached on disk as uint8 arrays, rebuilt when their sources change."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from mamlrun.files import save_torch


def default_cache_dir() -> Path:
    """``$MAMLRUN_CACHE``, else ``~/.cache/mamlrun``."""
    return Path(os.environ.get("MAMLRUN_CACHE") or Path.home() / ".cache" / "mamlrun")


def cache_path(kind: str, root: Path, image_size: int, cache_dir: str | Path | None) -> Path:
    """One cache file per dataset kind, source folder and image size (rewritten when the sources change)."""
    folder = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir or default_cache_dir()) / f"{kind}_{folder}_{image_size}.pt"


def fingerprint(sources: Iterable[Path], **settings) -> str:
    """A digest of the source files' names, sizes and modification times and of the decode settings."""
    items = sorted((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources)
    return hashlib.sha256(json.dumps([items, settings], sort_keys=True).encode()).hexdigest()[:16]


def cached(path: Path, key: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load ``path`` if it was built for ``key``; else ``build()`` and write it atomically.

    A cache file left by different sources (another ``key``) is replaced, never trusted.
    """
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            if blob.get("key") == key:
                return blob["arrays"]
        except (RuntimeError, EOFError, OSError, KeyError):
            pass  # a corrupt cache is rebuilt
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch({"key": key, "arrays": arrays}, path)
    return arrays
