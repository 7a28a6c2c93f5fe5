"""Run directories that never collide: every run claims a directory of its own before Hydra writes.

The directory a run (or a sweep) writes to is created here with ``os.mkdir``, which fails if the
directory exists, so two runs started in the same second, or two sweeps, never share one: the
second gets the next free name (``-2``, ``-3``, ...). A directory named explicitly on the command
line (``hydra.run.dir=...``) is taken only if it is new or empty, or with ``resume=true``.
Jobs of a sweep are named after the values they sweep (``3_algorithm-pretrain__shots-5``).

``resume=auto`` (what a job that a cluster may start again runs with) continues from
``<run dir>/checkpoints/last.pt`` when there is one and otherwise starts afresh, in the same
directory: its own earlier attempt's is fine, another run's never (:func:`resumes`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mamlrun.errors import MamlrunError

# Bookkeeping in a run or sweep directory (Hydra's files, the run's provenance): a directory holding
# nothing else, or only empty files, has no results.
BOOKKEEPING = {".hydra", "multirun.yaml", "provenance.json"}
MAX_NAME = 80  # characters of a job folder's name
MAX_TRIES = 1000  # suffixes tried before giving up on a unique name
# Characters that keep a folder name usable unquoted in a shell and in a Hydra override.
UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
AUTO = "auto"  # resume=auto
CONFIG_DIR = ".hydra"  # where Hydra keeps a run's config files (hydra.output_subdir)


def job_dirname(overrides: str, fallback: str) -> str:
    """A sweep job's folder name: its swept overrides, filesystem-safe and at most ``MAX_NAME`` long.

    Args:
        overrides: Hydra's ``hydra.job.override_dirname`` (the job's swept overrides).
        fallback: the name to use when nothing is swept (the run name).
    """
    name = UNSAFE.sub("-", str(overrides)).strip("-.") or UNSAFE.sub("-", str(fallback)).strip("-.") or "job"
    if len(name) > MAX_NAME:
        # Cut long names, keeping them distinct by a digest of the whole.
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


def register_resolvers() -> None:
    """``${mamlrun.dirname:...}`` for the sweep job folders in ``conf/hydra/mamlrun.yaml``."""
    OmegaConf.register_new_resolver("mamlrun.dirname", job_dirname, replace=True)


def claim(path: str | Path, *, explicit: bool, resume: bool | str, key: str) -> Path:
    """Create the directory a run or sweep writes to, never one that another run already uses.

    Args:
        path: the directory Hydra's config names.
        explicit: whether the user named it (``key=...``); otherwise it is a template's result
            and gets a counter suffix when taken.
        resume: ``True``: continue the run in ``path``, which must then exist; ``"auto"``: take
            ``path`` as it is, new or not (:func:`resumes` judges what it holds).
        key: the config key that names it, for messages.

    Returns:
        The directory the run must use.

    Raises:
        MamlrunError: the directory cannot be created, is already in use, or (resume) is missing.
    """
    path = Path(path)
    if resume is True:
        if not explicit:
            raise MamlrunError(f"resume=true needs {key}=<the directory of the run to continue>")
        if not path.is_dir():
            raise MamlrunError(f"resume=true but {key}={path} is not a directory")
        return path
    _make_parent(path, key)
    if explicit:
        return _claim_named(path, key, reuse=resume == AUTO)
    for n in range(1, MAX_TRIES + 1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if _mkdir(candidate, key):
            return candidate
    raise MamlrunError(f"cannot find a free name for {key}={path} (tried {MAX_TRIES})")


def _make_parent(path: Path, key: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MamlrunError(f"cannot create {key}={path}: a parent is a file") from None
    except OSError as exc:
        raise MamlrunError(f"cannot create {key}={path}: {os.strerror(exc.errno or 0)}") from None


def _mkdir(path: Path, key: str) -> bool:
    """Create ``path`` atomically; False if it exists, one line for any other failure."""
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise MamlrunError(f"cannot create {key}={path}: {os.strerror(exc.errno or 0)}") from None


def _claim_named(path: Path, key: str, reuse: bool = False) -> Path:
    if _mkdir(path, key):
        return path
    if not path.is_dir():
        raise MamlrunError(f"cannot create {key}={path}: a file of that name exists")
    if not reuse and any(path.iterdir()):
        raise MamlrunError(f"{key}={path} already holds a run; continue it with resume=true, or choose a new directory")
    return path  # an empty directory made for this run, or (resume=auto) the run's own


def first_missing(path: str | Path) -> Path | None:
    """The outermost of ``path`` and its ancestors that does not exist yet (``None``: ``path`` exists)."""
    path = Path(path).absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def discard_if_unused(path: str | Path, created: Path | None = None) -> None:
    """Remove a run or sweep directory that holds no results, only what Hydra wrote before a failure.

    Args:
        path: the run or sweep directory.
        created: the outermost folder this command created for it (see :func:`first_missing`):
            the folders between it and ``path`` go too when they are left empty.
    """
    path = Path(path)
    if path.is_dir():
        if not _unused(path):
            return
        shutil.rmtree(path, ignore_errors=True)
    if created is None:
        return
    created, folder = Path(created).absolute(), path.absolute().parent
    while folder.is_relative_to(created) and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _unused(folder: Path) -> bool:
    for entry in folder.iterdir():
        if entry.name in BOOKKEEPING:
            continue
        if entry.is_file() and (entry.suffix == ".log" or entry.stat().st_size == 0):
            continue
        if entry.is_dir() and not entry.is_symlink() and _unused(entry):
            continue
        return False
    return True


# -- resume=auto --------------------------------------------------------------------------------
def resumes(run_dir: str | Path, config: dict[str, Any], where: str | None = None) -> bool:
    """``resume=auto``: whether the run in ``run_dir`` continues from its checkpoint or starts afresh there.

    It continues when ``checkpoints/last.pt`` exists (the checkpoint must then have been written with
    the same config: the trainer checks). It starts afresh when the directory is new or holds no
    results (only what Hydra and mamlrun write at a start: an attempt stopped before its first
    checkpoint), or when its results are this run's own: its ``.hydra/config.yaml`` is ``config``,
    up to what a resumed run may change.

    Args:
        run_dir: the run's directory.
        config: the run's config as Hydra saves it (unresolved, without ``hydra``).
        where: how messages name the directory (default: the path).

    Raises:
        MamlrunError: the directory holds another run's results and no checkpoint to continue from.
    """
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return True
    if not run_dir.is_dir() or _unused(run_dir) or _same_run(run_dir / CONFIG_DIR / "config.yaml", config):
        return False
    raise MamlrunError(
        f"resume=auto but {where or run_dir} holds another run's results and no checkpoint to continue from "
        "(checkpoints/last.pt); choose a new directory"
    )


def _same_run(saved: Path, config: dict[str, Any]) -> bool:
    """Whether the config Hydra saved for an earlier start describes the same run as ``config``."""
    from mamlrun.train import _config_diff

    try:
        earlier = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception:  # missing, unreadable or not YAML: not recognisably this run's
        return False
    return isinstance(earlier, dict) and not _config_diff(earlier, config)


def task_config(config: DictConfig) -> dict[str, Any]:
    """A job's config as Hydra saves it in ``.hydra/config.yaml``: unresolved, without ``hydra``."""
    return {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}


class ResumeAuto(Callback):
    """Hydra callback: a job of a ``resume=auto`` sweep takes its directory as :func:`resumes` says.

    Which jobs of a sweep continue is known only once each job's directory is, so the sweep's jobs
    run with ``hydra.output_subdir=null`` (Hydra then writes no config files before this check):
    a job that continues keeps the config files it was started with, one that starts afresh gets
    them here. A job whose directory holds another run's results stops with one line (exit status 2).
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("resume") != AUTO or config.hydra.output_subdir is not None:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        job = task_config(config)
        try:
            if resumes(run_dir, job):
                return
        except MamlrunError as exc:
            from mamlrun.cli import INVALID, error

            error(str(exc))
            raise SystemExit(INVALID) from None
        saved = run_dir / CONFIG_DIR
        saved.mkdir(parents=True, exist_ok=True)
        for name, node in (
            ("config.yaml", job),
            ("hydra.yaml", OmegaConf.masked_copy(config, "hydra")),
            ("overrides.yaml", config.hydra.overrides.task),
        ):
            (saved / name).write_text(OmegaConf.to_yaml(node))
