"""Decoded datasets cached on disk as uint8 arrays, rebuilt when their sources change.

A cache file stores a SHA-256 digest of every array beside it: a file damaged on disk (random
bytes, flipped bits inside the images) is detected when it is loaded and rebuilt, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from mamlrun.errors import MamlrunError
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


def checksum(array: torch.Tensor) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    data = array.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    return digest.hexdigest()


def cached(path: Path, key: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load ``path`` if it was built for ``key`` and is intact; else ``build()`` and write it atomically.

    A cache file left by different sources (another ``key``) is replaced, never trusted. A damaged
    one (unreadable, or an array whose checksum does not match) is rebuilt, saying so in one line.

    Raises:
        MamlrunError: the data cannot be decoded, or the cache cannot be written.
    """
    if path.exists():
        arrays, problem = load(path, key)
        if arrays is not None:
            return arrays
        if problem:
            print(f"mamlrun: dataset cache {path} {problem}; rebuilding it", file=sys.stderr, flush=True)
    arrays = _decode(build, path.stem.split("_")[0])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = os.strerror(exc.errno or 0)
        raise MamlrunError(f"cannot create the dataset cache folder {path.parent}: {reason}") from None
    save_torch({"key": key, "arrays": arrays, "sha256": {k: checksum(v) for k, v in arrays.items()}}, path)
    return arrays


def load(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The arrays of an intact cache built for ``key``, else ``None`` and what is wrong (``None``: just stale)."""
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:  # random or truncated bytes fail torch.load in many ways; all mean "rebuild"
        return None, f"is unreadable ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
    if not isinstance(blob, dict) or not isinstance(blob.get("arrays"), dict):
        return None, "is not a mamlrun dataset cache"
    if blob.get("key") != key:
        return None, None  # the sources changed
    sums = blob.get("sha256")
    if not isinstance(sums, dict):
        return None, "has no checksums (written by an older mamlrun)"
    arrays = blob["arrays"]
    for name, array in arrays.items():
        if not isinstance(array, torch.Tensor) or sums.get(name) != checksum(array):
            return None, f"is damaged (checksum of '{name}' does not match)"
    if set(sums) != set(arrays):
        return None, "is damaged (arrays missing)"
    return arrays, None


def _decode(build: Callable[[], dict[str, torch.Tensor]], name: str) -> dict[str, torch.Tensor]:
    """Run a dataset's decoder; a broken archive member or image is one line, not a traceback."""
    try:
        return build()
    except MamlrunError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # PIL's UnidentifiedImageError and truncated-image errors are OSErrors; an in-memory
        # file's repr (<_io.BytesIO object at 0x...>) says nothing to the user.
        reason = re.sub(r"\s*<[^>]* object at 0x[0-9a-f]+>", "", str(exc).strip())
        reason = reason.splitlines()[0] if reason else type(exc).__name__
        raise MamlrunError(f"cannot decode the {name} data: {reason}") from None
