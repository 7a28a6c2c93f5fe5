"""The ``mamlrun`` command (also ``python -m mamlrun``): check the whole command, claim its run directory, run it.

1. :func:`mamlrun.validation.plan` composes and validates every job the command asks for; a bad
   config ends here with one line on stderr and exit status 2, before anything is written.
2. :func:`mamlrun.validation.claim_run_dir` creates the directory the command writes to (a new one,
   or the one it resumes) and points Hydra there.
3. Hydra runs each job with :func:`mamlrun.run.execute`. A job that fails or is interrupted leaves no
   empty run directory behind (exit status 2, or 130 after Ctrl-C with the command that resumes).

torch and the training code are imported only once the command is known to be good.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mamlrun import parallel, rundirs
from mamlrun.errors import MamlrunError
from mamlrun.paths import CONF_DIR
from mamlrun.validation import claim_run_dir, plan

INVALID = 2
INTERRUPTED = 130  # the shell's exit status for a command stopped by Ctrl-C

rundirs.register_resolvers()


def error(message: str) -> None:
    print(f"mamlrun: error: {message}", file=sys.stderr)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float:
    from mamlrun.run import execute, interrupted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return execute(cfg)
    except MamlrunError as exc:
        error(str(exc))
        code = INVALID
    except KeyboardInterrupt:
        error(interrupted(run_dir))
        code = INTERRUPTED
    except Exception as exc:
        if not parallel.peer_failed(exc):
            raise
        error(parallel.peer_failed(exc))
        code = INVALID
    if parallel.rank() == 0 and not cfg.get("resume"):
        rundirs.discard_if_unused(run_dir)
    sys.exit(code)


def main() -> None:
    """Console-script entry point."""
    claimed = created = None
    parallel.adopt_slurm_environment()
    try:
        job = plan(sys.argv[1:])
        argv = job.argv
        if job.info:
            pass
        elif parallel.distributed():
            argv = argv + parallel.join(job, sys.argv[1:])
        else:
            claimed, created, extra = claim_run_dir(job)
            argv = argv + extra
    except MamlrunError as exc:
        error(str(exc))
        sys.exit(INVALID)
    except KeyboardInterrupt:
        error("interrupted before the run started; nothing was written")
        sys.exit(INTERRUPTED)
    sys.argv = [sys.argv[0], *argv]
    try:
        _hydra_entry()
    finally:
        if claimed is not None and not job.resume:
            rundirs.discard_if_unused(claimed, created)
        parallel.shutdown()
