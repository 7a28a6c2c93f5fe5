"""Metric logging: a list of loggers built from config, JSONL always, Weights & Biases when asked.

The trainer talks to :class:`MetricLogger` alone, which hands every call to the loggers the
``logger`` group names by ``_target_`` (``logger.writers``); only rank 0 logs. W&B is imported
lazily, defaults to offline mode (never needs an account or a network) and logs the resolved
config, metrics and images.
Every run also records where its numbers come from (:func:`provenance`: git commit, package
versions, machine) in ``provenance.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import netrc
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mamlrun.errors import MamlrunError
from mamlrun.files import write_failure, write_json
from mamlrun.parallel import rank
from mamlrun.paths import PACKAGE

# The packages whose versions decide a run's numbers (those installed are recorded).
PACKAGES = ("mamlrun", "torch", "numpy", "hydra-core", "omegaconf", "learn2learn", "wandb", "gymnasium", "mujoco")
WANDB_MODES = ("offline", "online", "disabled")
WANDB_URL = "https://api.wandb.ai"
CONNECT_TIMEOUT_S = 5.0


def to_python(value: Any) -> Any:
    import torch  # here, not at the top: the CLI checks its input before it pays for importing torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class RunInfo:
    """What a logger is told about its run.

    Args:
        dir: the run directory.
        name: the run's name (``run_name``).
        sweep: the sweep's name (its directory's) when the run is one job of a sweep, else ``None``.
        config: the resolved run config, for loggers that record it.
        resume_step: on resume, the step the run continues from: what was logged after it (work
            lost at the interruption) is dropped, so the record reads as if the run had never stopped.
    """

    def __init__(
        self,
        dir: str | Path,
        name: str | None = None,
        sweep: str | None = None,
        config: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.dir, self.name, self.sweep = Path(dir), name, sweep
        self.config, self.resume_step = config or {}, resume_step


class JsonlLogger:
    """``metrics.jsonl`` in the run directory: one JSON line per logged step."""

    def __init__(self, run: RunInfo) -> None:
        self.path = run.dir / "metrics.jsonl"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if run.resume_step is None:
                self.path.write_text("")
            elif self.path.exists():
                kept = [
                    ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= run.resume_step
                ]
                self.path.write_text("".join(ln + "\n" for ln in kept))
            self._file = self.path.open("a")
        except OSError as exc:
            raise MamlrunError(f"cannot write {self.path}: {write_failure(self.path, exc)}") from None

    def log(self, row: dict[str, Any], step: int) -> None:
        try:
            self._file.write(json.dumps({"step": step, **row}, allow_nan=True) + "\n")
            self._file.flush()
        except OSError as exc:
            raise MamlrunError(f"cannot write {self.path}: {write_failure(self.path, exc)}") from None

    def summary(self, values: dict[str, Any]) -> None:
        """The final metrics go to ``metrics.json``, written by the run itself."""

    def image(self, name: str, path: Path, step: int) -> None:
        """Figures stay in the run directory, where they were written."""

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # every line was flushed (or reported) when it was logged
            self._file.close()


class WandbLogger:
    """Weights & Biases: the resolved config, every metric, the summary and the figures.

    ``offline`` (the default) needs no account and no network; runs of one sweep share a group (the
    sweep's name) unless ``group`` is given. W&B is imported only when a run starts.
    """

    def __init__(
        self,
        run: RunInfo,
        project: str = "mamlrun",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        settings = {"project": project, "entity": entity, "mode": mode, "group": group or run.sweep}
        settings.update(tags=list(tags or []), name=name or run.name, id=id)
        self.wandb = _init_wandb(run.dir, settings, run.config)

    @classmethod
    def check_config(cls, settings: dict) -> None:
        if settings.get("mode") not in WANDB_MODES:
            raise MamlrunError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got {settings.get('mode')!r}")

    @classmethod
    def check_online(cls, settings: dict) -> None:
        check_wandb_online(settings)

    def log(self, row: dict[str, Any], step: int) -> None:
        self.wandb.log(row, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.wandb.summary.update({k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))})

    def image(self, name: str, path: Path, step: int) -> None:
        import wandb

        self.wandb.log({name: wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.wandb.finish()


class MetricLogger:
    """What the trainer logs to: every logger of a list, only on rank 0.

    Args:
        run_dir: with no ``loggers``, a :class:`JsonlLogger` writing ``<run_dir>/metrics.jsonl``.
        loggers: the loggers (a run builds them from its ``logger.writers`` config).
    """

    def __init__(self, run_dir: str | Path | None = None, loggers: list | None = None) -> None:
        if loggers is None:
            loggers = [JsonlLogger(RunInfo(run_dir))] if rank() == 0 and run_dir is not None else []
        self.loggers = list(loggers) if rank() == 0 else []

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {k: to_python(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log(row, step)

    def summary(self, metrics: dict[str, Any]) -> None:
        values = {k: to_python(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.summary(values)

    def image(self, name: str, path: str | Path, step: int) -> None:
        for logger in self.loggers:
            logger.image(name, Path(path), step)

    def finish(self) -> None:
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.finish()


def _init_wandb(run_dir: Path, cfg: dict, config: dict):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    try:
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
    except Exception as exc:  # wandb raises many types (network, auth, usage); all end the run
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise MamlrunError(f"W&B could not start ({reason}); use logger.mode=offline") from None


def wandb_url() -> str:
    """The W&B server this process talks to (``WANDB_BASE_URL``, else the public one)."""
    return os.environ.get("WANDB_BASE_URL") or WANDB_URL


def check_wandb_online(cfg: dict) -> None:
    """Fail fast, before any work, when W&B online mode has no API key or cannot reach its server.

    Offline and disabled modes need neither and are not checked.

    Raises:
        MamlrunError: no key (``wandb login`` / ``WANDB_API_KEY``) or no connection, with the
            advice to use ``logger.mode=offline``.
    """
    if cfg.get("mode", "offline") != "online":
        return
    url = urlparse(wandb_url())
    host = url.hostname or ""
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        raise MamlrunError(
            "logger.mode=online needs a W&B API key (run `wandb login` or set WANDB_API_KEY); "
            "or use logger.mode=offline and `wandb sync` later"
        )
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise MamlrunError(
            f"logger.mode=online cannot reach {wandb_url()} ({reason}); use logger.mode=offline and `wandb sync` later"
        ) from None


def _netrc_has(host: str) -> bool:
    """Whether ``~/.netrc`` (or ``$NETRC``), where ``wandb login`` stores keys, has one for ``host``."""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# -- provenance ------------------------------------------------------------------------------------
def provenance(overrides: list[str] | None = None) -> dict[str, Any]:
    """Where a run's numbers come from: git commit, package versions, Python, machine and device.

    Args:
        overrides: the run's command-line overrides, recorded with the rest.
    """
    import torch

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    commit, dirty = _git_state(PACKAGE)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": packages,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "overrides": list(overrides or []),
    }


def _git_state(folder: Path) -> tuple[str | None, bool | None]:
    """The commit checked out where mamlrun's source lives and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def record_provenance(run_dir: Path, info: dict[str, Any], **extra: Any) -> None:
    """Append this start of the run (a resume is another start) to ``<run_dir>/provenance.json``."""
    path = Path(run_dir) / "provenance.json"
    try:
        starts = json.loads(path.read_text()) if path.exists() else []
    except (OSError, ValueError):
        starts = []
    if not isinstance(starts, list):
        starts = []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(path, [*starts, {"started": started, **extra, **info}])
