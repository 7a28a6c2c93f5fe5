"""Measured paper tables with their provenance, for ``results/<table>/`` and the README.

Usage: ``python -m mamlrun.results {table1,algorithms,rl} [--runs outputs/<table>] [--out results/<table>]
[--evaluate]``

``table1`` is the MAML paper's Table 1 (:data:`mamlrun.paper.TABLE1`); ``algorithms`` the
algorithms built on the engine's hooks (MAML++, ANIL) beside their own papers
(:data:`mamlrun.paper.ALGORITHMS`; run directories ``outputs/algorithms/<cell>__<algorithm>``
trained with ``experiment=<algorithm>_<cell>``); ``rl`` the paper's meta-RL returns after 0-3 steps
(:data:`mamlrun.paper.RL`), one row per run directory ``outputs/rl/<name>`` (``rl.csv``, ``rl.md``).

Reads the fixed run directories that :mod:`mamlrun.reproduce` trains (``<runs>/<cell>__<algorithm>``)
and writes, for every cell and algorithm of the paper's table (run or not):

- ``table1.csv``: accuracy and 95 % CI over the test tasks beside the paper's, the gap to the paper,
  status (``finished`` / ``partial`` / ``not run``, with the reason), meta-iterations trained, the
  iteration of the tested checkpoint, wall time, and provenance: the exact command of every
  session that trained the run, the git commit(s), hardware and dates;
- ``table1.md``: the same as a readable table plus the commands;
- ``table1_curves.png``: validation accuracy against meta-iteration for every run, beside the paper;
- ``runs/<cell>__<algorithm>/``: each run kept (:mod:`mamlrun.kept`): config, overrides,
  ``metrics.jsonl``, sessions, test metrics and, while it trains, its checkpoints. A clone without
  ``outputs/`` restores its run directories from there, so every row survives and training continues.

A run that has not finished is tested from its best validated checkpoint with ``--evaluate``
(``mamlrun mode=eval`` into ``<runs>/_eval/``, once per checkpoint iteration), so a table that is
still training has honest partial rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
import yaml

from mamlrun import paper
from mamlrun.kept import EVALUATIONS, FIGURES, evaluations, ledger_path, restore_all, store
from mamlrun.paths import CHECKOUT
from mamlrun.report import read_jsonl, with_ci


# -- provenance -----------------------------------------------------------------------------
def git_commit() -> str:
    """The checkout's commit (``-dirty`` when tracked files differ from it); ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def hardware() -> str:
    """CPU model and cores (and GPU, if any) of this machine, with the torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu} ({os.cpu_count()} cores){gpu}; torch {torch.__version__}"


def last_iteration(run_dir: Path) -> int:
    """The last meta-iteration the run logged (0 before its first log line)."""
    df = read_jsonl(run_dir / "metrics.jsonl")
    return int(df["step"].max()) if "step" in df and len(df) else 0


def record_session(
    run_dir: Path, command: list[str], started: float, ended: float, before: int, code: int, commit: str | None = None
) -> None:
    """Append one training session of ``run_dir`` to its ledger (kept beside, not inside, the run).

    ``commit``: the code the session ran, taken when it started (default: the checkout's now).
    """
    entry = {
        "command": " ".join(command),
        "commit": commit or git_commit(),
        "hardware": hardware(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": round(ended - started, 1),
        "iterations": [before, last_iteration(run_dir)],
        "exit": code,
    }
    with ledger_path(run_dir).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_ledger(run_dir: Path) -> list[dict]:
    path = ledger_path(run_dir)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


# -- testing runs that are still training ---------------------------------------------------
def checkpoint_iteration(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])
    except Exception:  # an unreadable checkpoint is simply not evaluated
        return None


def evaluate_partial(run_dir: Path, runs_dir: Path) -> Path | None:
    """Test the best validated checkpoint of an unfinished run (the last one if it never validates)."""
    ckpt = run_dir / "checkpoints" / "best.pt"
    ckpt = ckpt if ckpt.is_file() else run_dir / "checkpoints" / "last.pt"
    iteration = checkpoint_iteration(ckpt) if ckpt.is_file() else None
    if iteration is None:
        return None
    out = runs_dir / EVALUATIONS / f"{run_dir.name}__it{iteration}"
    if (out / "metrics.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    keep = [o for o in overrides if not o.startswith(("hydra.", "resume=", "mode=", "checkpoint="))]
    cmd = [
        str(Path(sys.executable).with_name("mamlrun")),
        *keep,
        "mode=eval",
        f"checkpoint={ckpt}",
        "train.progress=false",
        f"hydra.run.dir={out}",
    ]
    print("results:", " ".join(cmd[1:]), flush=True)
    return out if subprocess.run(cmd).returncode == 0 else None


# -- the table ------------------------------------------------------------------------------
def _test_metrics(run_dir: Path, runs_dir: Path, evaluate: bool) -> tuple[dict, str]:
    finished = run_dir / "metrics.json"
    if finished.is_file():
        return json.loads(finished.read_text()), "finished"
    evals = evaluations(run_dir, runs_dir)
    if evaluate:
        fresh = evaluate_partial(run_dir, runs_dir)
        evals = [fresh / "metrics.json"] if fresh else evals
    if evals:
        metrics = json.loads(evals[-1].read_text())
        metrics["test/checkpoint_iteration"] = int(evals[-1].parent.name.rsplit("__it", 1)[1])
        return metrics, "partial"
    return {}, "training, not tested yet"


def missing_data(cell: str, reasons: dict[str, str | None], overrides: Sequence[str] = ()) -> str | None:
    """Why a cell cannot run on this machine (its data set is absent), or None; memoised per data set."""
    from mamlrun.config import build
    from mamlrun.errors import MamlrunError
    from mamlrun.reproduce import compose_table

    dataset = compose_table("table1", [f"experiment={cell}", *overrides]).dataset
    if dataset.name not in reasons:
        try:
            build(dataset)
            reasons[dataset.name] = None
        except MamlrunError as exc:
            reasons[dataset.name] = str(exc)
    return reasons[dataset.name]


TABLES = {"table1": paper.TABLE1, "algorithms": paper.ALGORITHMS, "rl": paper.RL}


def rl_run_dirs(runs_dir: Path) -> list[Path]:
    """The runs in ``runs_dir`` (``reproduce rl`` directories or a sweep's jobs), each with a config and provenance."""
    return sorted(p for p in runs_dir.iterdir() if (p / ".hydra").is_dir() and (p / "provenance.json").is_file())


def rl_rows(runs_dir: Path, evaluate: bool = False) -> list[dict[str, Any]]:
    """One row per meta-RL run under ``runs_dir``: returns after 0..3 steps beside the paper's.

    The experiment and algorithm come from the run's config; provenance from its ``provenance.json``
    (one entry per start: commit, overrides, processes); the wall time is the sum of the sessions
    ``reproduce`` ran, else a finished run's own, else the one its logged speed implies.
    """
    rows = []
    for run_dir in rl_run_dirs(runs_dir):
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        record = run_dir / ".hydra" / "hydra.yaml"  # absent from runs kept before it was (named <experiment>__<algo>)
        hydra = yaml.safe_load(record.read_text())["hydra"] if record.is_file() else {}
        named = run_dir.name.split("__")[0] if "__" in run_dir.name else ""
        experiment = hydra.get("runtime", {}).get("choices", {}).get("experiment") or named
        # A sweep's job: its command is the sweep file's with the job's overrides.
        sweep = f"-cd sweeps -cn {hydra['job']['config_name']} " if hydra.get("mode") == "MULTIRUN" else ""
        algorithm = config["algorithm"]["name"]
        published = paper.RL.get(experiment, {}).get(algorithm, {})
        metrics, status = _test_metrics(run_dir, runs_dir, evaluate)
        starts = [s for s in json.loads((run_dir / "provenance.json").read_text()) if s.get("mode") == "train"]
        log = read_jsonl(run_dir / "metrics.jsonl")
        speed = log["train/iters_per_s"].dropna() if "train/iters_per_s" in log else pd.Series(dtype=float)
        row: dict[str, Any] = {"experiment": experiment, "algorithm": algorithm, "status": status}
        row["meta_iterations"] = last_iteration(run_dir)
        row["tested_iteration"] = metrics.get("test/checkpoint_iteration")
        sessions = read_ledger(run_dir)  # every session that reproduce ran; else the run's own wall time
        wall_s = sum(x["wall_s"] for x in sessions) if sessions else metrics.get("train/wall_s")
        if wall_s is None and len(speed):
            wall_s = row["meta_iterations"] / speed.mean()
        row["wall_h"] = None if wall_s is None else round(wall_s / 3600, 2)
        for k in range(4):
            if f"test/return_step{k}" in metrics:
                row[f"return_step{k}"] = metrics[f"test/return_step{k}"]
                row[f"ci95_step{k}"] = metrics[f"test/return_ci95_step{k}"]
            row[f"paper_step{k}"] = published.get(k)
        row["commands"] = " || ".join(
            (f"torchrun --nproc_per_node={s['processes']} -m mamlrun " if s.get("processes", 1) > 1 else "mamlrun ")
            + sweep
            + " ".join(s["overrides"])
            for s in starts
        )
        row["commits"] = " ".join(dict.fromkeys(s["git_commit"][:12] for s in starts))
        row["dates"] = " ".join(dict.fromkeys(s["started"][:10] for s in starts))
        row["hardware"] = " | ".join(dict.fromkeys(x["hardware"] for x in sessions)) if sessions else hardware()
        rows.append(row)
    return rows


def rl_markdown(rows: list[dict]) -> str:
    def cell(r: dict, k: int) -> str:
        return with_ci(r.get(f"return_step{k}", float("nan")), r.get(f"ci95_step{k}", float("nan")), 2)

    def published(r: dict) -> str:
        values = [r[f"paper_step{k}"] for k in range(4)]
        return "—" if values[0] is None else " / ".join(f"{v:.2f}" for v in values)

    shown = pd.DataFrame(
        {
            "experiment": [r["experiment"] for r in rows],
            "algorithm": [r["algorithm"] for r in rows],
            **{f"{k} steps": [cell(r, k) for r in rows] for k in range(4)},
            "paper (MAML, 0-3 steps)": [published(r) for r in rows],
            "meta-iterations (tested)": [f"{r['meta_iterations']} ({r.get('tested_iteration') or '—'})" for r in rows],
            "wall (h)": [r.get("wall_h") or "—" for r in rows],
            "status": [r["status"] for r in rows],
        }
    )
    lines = [shown.to_markdown(index=False), "", "Provenance (every training start of every run):", ""]
    for r in rows:
        lines.append(f"- {r['experiment']} {r['algorithm']}: commit {r['commits']}, {r['hardware']}, {r['dates']}")
        lines += [f"  - `{c}`" for c in r["commands"].split(" || ")]
    return "\n".join(lines) + "\n"


def write_rl(runs_dir: Path, out: Path, evaluate: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = rl_rows(runs_dir, evaluate)
    pd.DataFrame(rows).to_csv(out / "rl.csv", index=False)
    (out / "rl.md").write_text(rl_markdown(rows))
    for run_dir in rl_run_dirs(runs_dir):
        # The adapted behaviour: the run's own figures (kept with its record), else those its tested checkpoint drew.
        evals = evaluations(run_dir, runs_dir)
        drawn = [] if (run_dir / "metrics.json").is_file() or not evals else [evals[-1].parent / f for f in FIGURES]
        store(run_dir, runs_dir, out / "runs" / run_dir.name, tuple(f for f in drawn if f.is_file()))
    return [out / "rl.csv", out / "rl.md"]


def table1_rows(runs_dir: Path, evaluate: bool = False, table: str = "table1") -> list[dict[str, Any]]:
    """One row per cell and algorithm the paper(s) report, run or not."""
    skipped = json.loads((runs_dir / "skipped.json").read_text()) if (runs_dir / "skipped.json").exists() else {}
    rows, reasons = [], {}
    for cell, published in TABLES[table].items():
        for algo, (paper_acc, paper_ci) in published.items():
            run_dir = runs_dir / f"{cell}__{algo}"
            row: dict[str, Any] = {"cell": cell, "algorithm": algo, "paper": paper_acc, "paper_ci95": paper_ci}
            if not (run_dir / ".hydra").is_dir():
                reason = skipped.get(cell) or missing_data(cell, reasons)
                hint = f"make reproduce-{table} CELLS={cell}" + ("" if table == "table1" else f" ALGORITHMS={algo}")
                row["status"] = f"not run: {reason or f'not started ({hint})'}"
                rows.append(row)
                continue
            metrics, status = _test_metrics(run_dir, runs_dir, evaluate)
            sessions = read_ledger(run_dir)
            acc = metrics.get("test/acc_mean")
            row.update(
                {
                    "status": status,
                    "acc": None if acc is None else 100 * acc,
                    "ci95": None if acc is None else 100 * metrics["test/acc_ci95"],
                    "meta_iterations": last_iteration(run_dir),
                    "tested_iteration": metrics.get("test/checkpoint_iteration"),
                    "wall_h": round(sum(s["wall_s"] for s in sessions) / 3600, 2) if sessions else None,
                    "commands": " || ".join(s["command"] for s in sessions),
                    "commits": " ".join(dict.fromkeys(s["commit"] for s in sessions)),
                    "hardware": " | ".join(dict.fromkeys(s["hardware"] for s in sessions)),
                    "dates": " ".join(dict.fromkeys(s["started"][:10] for s in sessions)),
                }
            )
            steps = sorted(int(k.rsplit("step", 1)[1]) for k in metrics if k.startswith("test/acc_step"))
            row.update({f"acc_step{k}": 100 * metrics[f"test/acc_step{k}"] for k in steps})
            if acc is not None and paper_acc is not None:
                row["gap"] = row["acc"] - paper_acc
                row["within_paper_ci"] = paper_ci is not None and abs(row["gap"]) <= paper_ci + row["ci95"]
            rows.append(row)
    return rows


def _save(fig, axes, path: Path) -> Path:
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(runs_dir: Path, rows: list[dict], path: Path) -> Path | None:
    """Validation accuracy against meta-iteration for every run, with the paper's number dashed."""
    curves = []
    for row in rows:
        df = read_jsonl(runs_dir / f"{row['cell']}__{row['algorithm']}" / "metrics.jsonl")
        if "val/acc_mean" in df:
            val = df.dropna(subset=["val/acc_mean"])
            curves.append((row, val["step"], 100 * val["val/acc_mean"]))
    if not curves:
        return None
    cells = list(dict.fromkeys(r["cell"] for r, *_ in curves))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for row, steps, acc in (c for c in curves if c[0]["cell"] == cell):
            line = ax.plot(steps, acc, marker=".", label=f"{row['algorithm']} (validation)")[0]
            if row["paper"] is not None:
                label = f"paper {row['algorithm']} (test)"
                ax.axhline(row["paper"], ls="--", color=line.get_color(), lw=1, label=label)
        ax.set(title=cell.replace("_", " "), xlabel="meta-iteration", ylabel="accuracy (%)")
    return _save(fig, axes[0], path)


def plot_steps(rows: list[dict], path: Path) -> Path | None:
    """Test accuracy against the number of inner steps at test time, per cell and algorithm."""
    tested = [r for r in rows if r.get("acc") is not None]
    if not tested:
        return None
    cells = list(dict.fromkeys(r["cell"] for r in tested))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for row in (r for r in tested if r["cell"] == cell):
            steps = sorted(int(k.removeprefix("acc_step")) for k in row if k.startswith("acc_step"))
            ax.plot(steps, [row[f"acc_step{k}"] for k in steps], marker="o", label=row["algorithm"])
        ax.set(title=cell.replace("_", " "), xlabel="inner steps at test", ylabel="accuracy (%)")
    return _save(fig, axes[0], path)


def copy_runs(runs_dir: Path, rows: list[dict], out: Path) -> None:
    """Keep every run of the table in ``out/runs`` (:func:`mamlrun.kept.store`: record, checkpoints if unfinished)."""
    for row in rows:
        run_dir = runs_dir / f"{row['cell']}__{row['algorithm']}"
        if (run_dir / ".hydra").is_dir():
            store(run_dir, runs_dir, out / "runs" / run_dir.name)


def markdown(rows: list[dict]) -> str:
    shown = pd.DataFrame(
        {
            "cell": [r["cell"] for r in rows],
            "algorithm": [r["algorithm"] for r in rows],
            "mamlrun (%)": [with_ci(r.get("acc", float("nan")), r.get("ci95", float("nan")), 2) for r in rows],
            "paper (%)": [
                "—" if r["paper"] is None else with_ci(r["paper"], r["paper_ci95"] or float("nan"), 2) for r in rows
            ],
            "gap": [f"{r['gap']:+.2f}" if r.get("gap") is not None else "—" for r in rows],
            "meta-iterations (tested)": [
                f"{r['meta_iterations']} ({r['tested_iteration']})" if r.get("tested_iteration") else "—" for r in rows
            ],
            "wall (h)": [r.get("wall_h") or "—" for r in rows],
            # The CSV keeps the whole reason; the table its first clause ("not run: miniimagenet: no data in ...").
            "status": [": ".join(r["status"].split(": ")[:3]) for r in rows],
        }
    )
    lines = [shown.to_markdown(index=False)]
    if any(r.get("commands") for r in rows):
        lines += ["", "Provenance (every training session of every run):", ""]
    for r in rows:
        if r.get("commands"):
            lines.append(f"- `{r['cell']}` {r['algorithm']}: commit {r['commits']}, {r['hardware']}, {r['dates']}")
            lines += [f"  - `{c}`" for c in r["commands"].split(" || ")]
    return "\n".join(lines) + "\n"


def write_table1(runs_dir: Path, out: Path, evaluate: bool = False, table: str = "table1") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = table1_rows(runs_dir, evaluate, table)
    pd.DataFrame(rows).to_csv(out / f"{table}.csv", index=False)
    (out / f"{table}.md").write_text(markdown(rows))
    copy_runs(runs_dir, rows, out)
    written = [out / f"{table}.csv", out / f"{table}.md"]
    figures = [plot_curves(runs_dir, rows, out / f"{table}_curves.png"), plot_steps(rows, out / f"{table}_steps.png")]
    return written + [f for f in figures if f]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.results", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument("--runs", type=Path, help="the run directories (default: outputs/<table>)")
    parser.add_argument("--out", type=Path, help="where the table goes (default: results/<table>)")
    parser.add_argument("--evaluate", action="store_true", help="test unfinished runs from their best checkpoint")
    args = parser.parse_args(argv)
    args.runs = args.runs or Path("outputs") / args.table
    args.out = args.out or Path("results") / args.table
    if (args.out / "runs").is_dir():  # the runs a fresh clone keeps only in results/
        args.runs.mkdir(parents=True, exist_ok=True)
        restore_all(args.out / "runs", args.runs)
    if not args.runs.is_dir():
        print(f"mamlrun: error: {args.runs} is not a directory (train first: make reproduce-table1)", file=sys.stderr)
        return 2
    written = write_rl(args.runs, args.out, args.evaluate) if args.table == "rl" else None
    for path in written or write_table1(args.runs, args.out, args.evaluate, args.table):
        print(path)
    print((args.out / f"{args.table}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
