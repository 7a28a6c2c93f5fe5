"""``make reproduce-table1``: train every cell of a paper table on the data present, then report.

Usage: ``python -m mamlrun.reproduce {table1,algorithms,rl} [--quick] [--cells omniglot_5w1s,...]
[--algorithms maml,...] [--runs DIR] [--out DIR] [override ...]``

``algorithms`` trains the algorithms built on the engine's hooks (MAML++, ANIL) on the cells their
papers report (:data:`mamlrun.paper.ALGORITHMS`), each with its own experiment file
(``experiment=<algorithm>_<cell>``), in ``outputs/algorithms/<cell>__<algorithm>``. ``rl`` trains the
paper's meta-RL experiments (:data:`mamlrun.paper.RL`; ``--cells rl_halfcheetah_dir``) with MAML, the
pretrained policy and the random initialisation, in ``outputs/rl/<experiment>__<algorithm>``.

The cells and algorithms come from the table's sweep file (``sweeps/table1.yaml``). Each cell is
checked first (its dataset is built); cells whose data is missing are skipped with the reason, so
a machine with only Omniglot still rebuilds the Omniglot rows. Every (cell, algorithm) pair is one
ordinary run in its own fixed directory ``<runs>/<cell>__<algorithm>``: run the command again and
the runs that have a checkpoint continue where they stopped (``resume=true``), so a table that takes
days is built over as many sessions as it needs. Then the table is written (with each row's
provenance) to ``results/<table>/``, which also keeps every unfinished run's checkpoints
(:mod:`mamlrun.kept`): a fresh clone restores them into ``<runs>`` first and continues from there.

``--cells`` picks cells by name or prefix (``omniglot`` = every Omniglot cell, ``omniglot_5w1s``
one cell). Overrides (``meta_iterations=2000``, ``++dataset.root=...``) reach every run.
``--quick`` runs the same cells with ``debug=quick`` (a few meta-iterations and small task batches,
``conf/debug/quick.yaml``) to prove the plumbing, on the small official Omniglot sets wherever they
are found when the full release is absent, and reports to ``outputs/reports_quick`` (never to
``results/``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from mamlrun.config import build
from mamlrun.errors import MamlrunError
from mamlrun.files import write_json
from mamlrun.kept import evaluations, ledger_path, restore_all
from mamlrun.paths import CONF_DIR, SWEEPS_DIR, data_candidates, small_omniglot
from mamlrun.results import checkpoint_iteration, git_commit, last_iteration, record_session

# A quick run: a few meta-iterations and small task batches (conf/debug/quick.yaml), the plumbing only.
QUICK = ["debug=quick"]
INTERRUPTED = 130  # a run's exit status after Ctrl-C (it left a resumable checkpoint)
QUICK_JOBS = 2  # quick runs go two at a time (Hydra's joblib launcher), one thread each


def compose_table(table: str, overrides: list[str]):
    """A paper table's sweep file (``sweeps/<table>.yaml``) composed with ``overrides``, Hydra's part included."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
        return compose(table, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides], return_hydra_config=True)


def _sweep_values(table: str, key: str, overrides: list[str]) -> list[str]:
    params = OmegaConf.to_container(compose_table(table, overrides).hydra.sweeper.params)
    return [v.strip() for v in str(params[key]).split(",")]


def _selected(names: list[str], wanted: str | None, what: str) -> list[str]:
    if not wanted:
        return names
    picks = [w.strip() for w in wanted.split(",") if w.strip()]
    chosen = [n for n in names if any(n == p or n.startswith(p) for p in picks)]
    if not chosen:
        raise MamlrunError(f"no {what} matches {wanted!r} (available: {', '.join(names)})")
    return chosen


def _no_data_hint(dataset: str) -> str:
    places = ", ".join(str(p) for p in data_candidates(dataset))
    return (
        f"looked in {places}; put the data in one of them, set MAMLRUN_DATA=<folder holding {dataset}/>, "
        f"or pass ++dataset.root=<folder>"
    )


def plan(
    table: str, quick: bool, overrides: list[str], cells: str | None = None
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(cell -> extra overrides, skipped cell -> reason)`` for the selected cells (in table order)."""
    runs: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    tried: dict[str, list[str] | None] = {}
    reasons: dict[str, str] = {}
    for cell in _selected(_sweep_values(table, "experiment", overrides), cells, "cell"):
        cfg = compose_table(table, [f"experiment={cell}", *overrides])
        dataset = cfg.dataset.name
        if dataset not in tried:
            tried[dataset] = []
            try:
                build(cfg.dataset)
            except MamlrunError as exc:
                small = small_omniglot() if quick and dataset == "omniglot" else None
                if small is None:
                    print(f"reproduce: skipping the {dataset} cells: {exc}", flush=True)
                    tried[dataset], reasons[dataset] = None, str(exc)
                else:
                    # ++: the sweep's base config (before any experiment is chosen) has no dataset.root yet.
                    tried[dataset] = [f"++dataset.root={small}", "++dataset.split=[0.6,0.2,0.2]"]
                    print(f"reproduce: quick run on the small Omniglot sets in {small}", flush=True)
        if tried[dataset] is None:
            skipped[cell] = reasons[dataset]
        else:
            runs[cell] = tried[dataset]
    if not runs:
        hints = "; ".join(f"{d}: {_no_data_hint(d)}" for d in tried)
        raise MamlrunError(f"no data for any cell of {table} ({hints})")
    return runs, skipped


def quick_sweep(runs_dir: Path, cells: dict[str, list[str]], algorithms: list[str], overrides: list[str]) -> int:
    """Quick runs as Hydra multiruns (one per data folder, two jobs at a time): no process start per cell."""
    by_data: dict[tuple[str, ...], list[str]] = {}
    for cell, extra in cells.items():
        by_data.setdefault(tuple(extra), []).append(cell)
    for extra, group in by_data.items():
        cmd = [
            str(Path(sys.executable).with_name("mamlrun")),
            "-m",
            f"hydra.sweep.dir={runs_dir}",
            "hydra.sweep.subdir=${hydra:runtime.choices.experiment}__${algorithm.name}",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={QUICK_JOBS}",
            f"experiment={','.join(group)}",
            f"algorithm={','.join(algorithms)}",
            *overrides,
            *extra,
        ]
        print("reproduce:", " ".join(cmd[1:]), flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            return code
    return 0


def train(cmd: list[str], run_dir: Path) -> int:
    """Run one cell's command and append the session (command, commit, hardware, wall time) to its ledger.

    A finished run kept without checkpoints (restored from ``results/``) is not trained again; an
    unfinished one kept without a checkpoint cannot continue and starts afresh, its old record dropped.
    """
    last = run_dir / "checkpoints" / "last.pt"  # where a resumed run starts (later log lines are redone)
    if not last.is_file() and (run_dir / "metrics.json").is_file():
        print(f"reproduce: {run_dir.name} has finished (its test metrics are kept); nothing to train", flush=True)
        return 0
    if not last.is_file() and last_iteration(run_dir):
        print(f"reproduce: {run_dir.name} has no checkpoint to continue from; it starts afresh", flush=True)
        ledger_path(run_dir).unlink(missing_ok=True)
        for tested in evaluations(run_dir, run_dir.parent):
            shutil.rmtree(tested.parent)
    before, started = (checkpoint_iteration(last) or 0) if last.is_file() else 0, time.time()
    commit = git_commit()  # the code this session runs, whatever the checkout holds when it ends
    proc = subprocess.Popen(cmd)
    stopped: list[int] = []

    def stop(signum, frame) -> None:
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)

    # SIGTERM to this driver stops the run the way SIGTERM to the run does: checkpointed, resumable.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped and code != 0:  # torchrun exits 1 when told to stop, after its ranks checkpointed
        code = INTERRUPTED
    if run_dir.is_dir():
        record_session(run_dir, [Path(cmd[0]).name, *cmd[1:]], started, time.time(), before, code, commit)
    return code


def launcher(ranks: int = 1) -> list[str]:
    """How one cell starts: ``mamlrun``, or ``torchrun`` with ``ranks`` data-parallel processes on this machine."""
    if ranks == 1:
        return [str(Path(sys.executable).with_name("mamlrun"))]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc_per_node={ranks}", "-m", "mamlrun"]


def run_command(
    experiment: str, algorithm: str | None, run_dir: Path, overrides: list[str], ranks: int = 1
) -> list[str]:
    """The ``mamlrun`` command of one cell; it resumes when the run directory holds a checkpoint.

    A directory without one (a run that failed before its first checkpoint, or one that never trains,
    like the random initialisation) is taken again with ``resume=auto``: afresh, if it is this run's.
    """
    if (run_dir / "checkpoints" / "last.pt").is_file():
        resume = ["resume=true"]
    else:
        resume = ["resume=auto"] if run_dir.is_dir() else []
    return [
        *launcher(ranks),
        f"hydra.run.dir={run_dir}",
        f"experiment={experiment}",
        *([f"algorithm={algorithm}"] if algorithm else []),
        *resume,
        *overrides,
    ]


def algorithm_jobs(runs_dir: Path, overrides: list[str], cells: str | None, algorithms: str | None, ranks: int = 1):
    """The (command, run directory) of every selected MAML++ / ANIL cell of :data:`mamlrun.paper.ALGORITHMS`."""
    from mamlrun import paper

    pairs = [(cell, algo) for cell, published in paper.ALGORITHMS.items() for algo in published]
    chosen_cells = _selected(list(dict.fromkeys(c for c, _ in pairs)), cells, "cell")
    chosen_algos = _selected(list(dict.fromkeys(a for _, a in pairs)), algorithms, "algorithm")
    from mamlrun.results import missing_data

    jobs, reasons = [], {}
    for cell, algo in pairs:
        if cell in chosen_cells and algo in chosen_algos:
            if missing_data(cell, reasons, overrides):
                continue
            run_dir = runs_dir / f"{cell}__{algo}"
            cmd = run_command(f"{algo}_{cell}", None, run_dir, overrides, ranks)
            jobs.append((cmd, run_dir))
    for dataset, reason in reasons.items():
        if reason:
            print(f"reproduce: skipping the {dataset} cells: {reason}", flush=True)
    return jobs


RL_ALGORITHMS = ["maml", "pretrain", "random"]  # the paper's comparison on every meta-RL experiment


def rl_jobs(runs_dir: Path, overrides: list[str], cells: str | None, algorithms: str | None, ranks: int = 1):
    """The (command, run directory) of every selected meta-RL experiment and algorithm (:data:`mamlrun.paper.RL`)."""
    from mamlrun import paper

    experiments = _selected(list(paper.RL), cells, "experiment")
    chosen = _selected(RL_ALGORITHMS, algorithms, "algorithm")
    dirs = [(e, a, runs_dir / f"{e}__{a}") for e in experiments for a in chosen]
    return [(run_command(e, a, run_dir, overrides, ranks), run_dir) for e, a, run_dir in dirs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["table1", "algorithms", "rl"])
    parser.add_argument("--quick", action="store_true", help="a few iterations per cell: the plumbing only")
    parser.add_argument("--cells", help="comma-separated cell names or prefixes (default: every cell)")
    parser.add_argument("--algorithms", help="comma-separated algorithms (default: the sweep file's)")
    parser.add_argument(
        "--ranks", type=int, default=1, help="data-parallel processes per run (torchrun on this machine; default 1)"
    )
    parser.add_argument("--runs", type=Path, help="run directories (default: outputs/<table>[_quick])")
    parser.add_argument("--out", type=Path, help="tables (default: results/<table>; quick: outputs/reports_quick)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_intermixed_args(argv)
    runs_dir = args.runs or Path(f"outputs/{args.table}{'_quick' if args.quick else ''}")
    out = args.out or (Path("outputs/reports_quick") if args.quick else Path("results") / args.table)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    if not args.quick:  # a fresh clone continues the runs that results/ keeps with their checkpoints
        restore_all(out / "runs", runs_dir, resumable_only=True)
    if args.table in ("algorithms", "rl"):
        select = algorithm_jobs if args.table == "algorithms" else rl_jobs
        try:
            jobs = select(runs_dir, overrides, args.cells, args.algorithms, args.ranks)
        except MamlrunError as exc:
            print(f"mamlrun: error: {exc}", file=sys.stderr)
            return 2
        return finish(args, [train(cmd, run_dir) for cmd, run_dir in jobs], runs_dir, out, {})
    try:
        cells, skipped = plan(args.table, args.quick, overrides, args.cells)
        algorithms = _selected(_sweep_values(args.table, "algorithm", overrides), args.algorithms, "algorithm")
    except MamlrunError as exc:
        print(f"mamlrun: error: {exc}", file=sys.stderr)
        return 2
    if args.quick:  # a fresh sweep directory: Hydra's sweep claims it whole
        shutil.rmtree(runs_dir, ignore_errors=True)
        codes = [quick_sweep(runs_dir, cells, algorithms, overrides)]
    else:
        dirs = {(cell, algo): runs_dir / f"{cell}__{algo}" for cell in cells for algo in algorithms}
        jobs = [
            (run_command(cell, algo, run_dir, [*overrides, *cells[cell]], args.ranks), run_dir)
            for (cell, algo), run_dir in dirs.items()
        ]
        codes = [train(cmd, run_dir) for cmd, run_dir in jobs]
    return finish(args, codes, runs_dir, out, skipped)


def finish(args, codes: list[int], runs_dir: Path, out: Path, skipped: dict[str, str]) -> int:
    """Record the skipped cells, report failures, then write the table."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_json(runs_dir / "skipped.json", skipped)
    if INTERRUPTED in codes:
        print("mamlrun: error: interrupted; run the same command again to continue", file=sys.stderr)
        return INTERRUPTED
    failed = sum(code != 0 for code in codes)
    if failed:
        print(f"mamlrun: error: {failed} of {len(codes)} runs failed (see above)", file=sys.stderr)
        return 1
    from mamlrun.results import main as results

    return results([args.table, "--runs", str(runs_dir), "--out", str(out)])


if __name__ == "__main__":
    sys.exit(main())
