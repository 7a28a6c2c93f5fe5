"""Runs kept in the repository: a run's record and, while it trains, its checkpoints, under ``results/``.

A paper table is trained over many sessions, and ``outputs/`` (ignored by git) does not travel with
a clone. So every run of a table is kept in ``results/<table>/runs/<run>/``: its config, overrides,
Hydra's record, learning curve, provenance, the ledger of its training sessions, the test metrics of
every checkpoint tested (``test_metrics_it<N>.json``) or of the finished run (``test_metrics.json``)
and, while the run is unfinished, its ``checkpoints/last.pt`` and ``best.pt`` (a conv net's are
about 1.5 MB). On a fresh clone, :func:`restore` rebuilds ``outputs/<table>/<run>/`` from that copy,
so ``make reproduce-table1`` continues each run where the last session stopped and
``python -m mamlrun.results`` rebuilds the table with every row.

A restored checkpoint is read like any other: ``torch.load(weights_only=True)``, nothing executes.
A run directory that exists is never touched: a restore only creates missing ones, whole or not at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LEDGER = "sessions.jsonl"  # beside each run directory: <run>.sessions.jsonl
EVALUATIONS = "_eval"  # <runs>/_eval/<run>__it<N>/metrics.json: a tested checkpoint of an unfinished run
CHECKPOINTS = ("last.pt", "best.pt")
FIGURES = ("velocity.png", "velocity.json", "trajectories.png", "trajectories.json")  # a policy's adapted behaviour
# (in the run directory, in the kept copy): the small files every table reads.
RECORD = [
    (".hydra/config.yaml", "config.yaml"),
    (".hydra/overrides.yaml", "overrides.yaml"),
    (".hydra/hydra.yaml", "hydra.yaml"),
    ("metrics.jsonl", "metrics.jsonl"),
    ("metrics.json", "test_metrics.json"),
    ("provenance.json", "provenance.json"),
    ("learning_curve.png", "learning_curve.png"),
    *((name, name) for name in FIGURES),
]


def ledger_path(run_dir: Path) -> Path:
    """The ledger of ``run_dir``'s training sessions (kept beside the run, which owns its directory)."""
    return run_dir.with_name(f"{run_dir.name}.{LEDGER}")


def evaluations(run_dir: Path, runs_dir: Path) -> list[Path]:
    """The test metrics of a run's evaluated checkpoints, oldest iteration first (by number, not by name)."""
    found = (runs_dir / EVALUATIONS).glob(f"{run_dir.name}__it*/metrics.json")
    return sorted(found, key=lambda p: int(p.parent.name.rsplit("__it", 1)[1]))


def store(run_dir: Path, runs_dir: Path, dest: Path, extra: tuple[Path, ...] = ()) -> None:
    """Keep ``run_dir`` in ``dest``: its record, every tested checkpoint's metrics, checkpoints if unfinished.

    ``dest`` is replaced whole (written beside it first), so it mirrors the run and never mixes two.
    ``extra``: further files to keep under their own names (figures drawn by a tested checkpoint).
    """
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src, name in [*((run_dir / a, b) for a, b in RECORD), (ledger_path(run_dir), LEDGER)]:
        if src.is_file():
            shutil.copyfile(src, tmp / name)
    for path in evaluations(run_dir, runs_dir):
        shutil.copyfile(path, tmp / f"test_metrics_{path.parent.name.rsplit('__', 1)[1]}.json")
    for path in extra:
        shutil.copyfile(path, tmp / path.name)
    if not (run_dir / "metrics.json").is_file():  # unfinished: what the next session continues from
        for name in CHECKPOINTS:
            if (run_dir / "checkpoints" / name).is_file():
                (tmp / "checkpoints").mkdir(exist_ok=True)
                shutil.copyfile(run_dir / "checkpoints" / name, tmp / "checkpoints" / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def restore(kept: Path, run_dir: Path, runs_dir: Path) -> bool:
    """Rebuild the missing ``run_dir`` from its kept copy ``kept``; False (nothing written) if it exists.

    The ledger goes beside the run, each ``test_metrics_it<N>.json`` to ``<runs>/_eval/<run>__it<N>/``.
    """
    if run_dir.exists() or not (kept / "config.yaml").is_file():
        return False
    tmp = run_dir.with_name(f".{run_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".hydra").mkdir(parents=True)
    for inside, name in RECORD:
        if (kept / name).is_file():
            shutil.copyfile(kept / name, tmp / inside)
    if (kept / "checkpoints").is_dir():
        shutil.copytree(kept / "checkpoints", tmp / "checkpoints")
    for path in kept.glob("test_metrics_it*.json"):
        tested = runs_dir / EVALUATIONS / f"{run_dir.name}__{path.stem.rsplit('_', 1)[1]}"
        if not tested.exists():
            tested.mkdir(parents=True)
            shutil.copyfile(path, tested / "metrics.json")
    if (kept / LEDGER).is_file() and not ledger_path(run_dir).exists():
        shutil.copyfile(kept / LEDGER, ledger_path(run_dir))
    tmp.rename(run_dir)
    return True


def restore_all(kept_runs: Path, runs_dir: Path, resumable_only: bool = False) -> list[str]:
    """Restore every run kept in ``kept_runs`` (``results/<table>/runs``) that ``runs_dir`` lacks.

    ``resumable_only``: only runs that training can continue (kept with a checkpoint).
    Returns the names of the runs restored.
    """
    if not kept_runs.is_dir():
        return []
    restored = []
    for kept in sorted(p for p in kept_runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if resumable_only and not (kept / "checkpoints" / "last.pt").is_file():
            continue
        if restore(kept, runs_dir / kept.name, runs_dir):
            restored.append(kept.name)
    if restored:
        print(f"mamlrun: restored {len(restored)} run(s) from {kept_runs} into {runs_dir}: {', '.join(restored)}")
    return restored
