"""Files written whole or not at all: checkpoints, metrics, dataset caches."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mamlrun.errors import MamlrunError

# Below this many free bytes a failed write is reported as a full disk: torch.save's own message
# ("[enforce fail at inline_container.cc]") does not say why it failed.
NEARLY_FULL = 64 * 1024 * 1024


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place.

    An interrupted write never leaves a broken ``path``; the temporary name carries the process id,
    so concurrent writers of one path (jobs of a sweep sharing a cache) never share a temporary file.

    Raises:
        MamlrunError: the file could not be written (full disk, no permission, ...); ``path`` is
            then untouched and no temporary file is left behind.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise MamlrunError(f"cannot write {path}: {write_failure(path, exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_failure(path: Path, exc: BaseException) -> str:
    """Why a write to ``path`` failed, in words (an OS error's text, else a full disk if it is one)."""
    cause: BaseException | None = exc
    while cause is not None:  # torch wraps the OSError of a failed write in a RuntimeError
        if isinstance(cause, OSError) and cause.errno is not None:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    try:
        if shutil.disk_usage(existing_parent(path)).free < NEARLY_FULL:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def save_torch(obj: object, path: Path) -> None:
    import torch  # here, not at the top: the CLI checks its input before it pays for importing torch

    def write(tmp: Path) -> None:
        # Through a Python file, so that a failed write keeps its OSError (errno) for the message.
        with tmp.open("wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def write_json(path: Path, data: dict | list) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"))
