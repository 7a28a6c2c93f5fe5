"""``make reproduce-<table>``: run a paper table's sweep on the data that is present, then report.

Usage: ``python -m mamlrun.reproduce table1 [--quick] [--out DIR] [override ...]``

Each cell of the sweep file is checked first (its dataset is built); cells whose data is missing
are skipped with the reason, so a machine with only Omniglot still rebuilds the Omniglot rows.
Cells are run as one multirun per dataset (``<out>/<dataset>/``), then the table is written.
``--quick`` runs the same cells with a few meta-iterations and small task batches to prove the
plumbing, and, where the full Omniglot release is absent, on the small official Omniglot sets
beside the checkout (``../shared/data/omniglot``) with a fractional split.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from mamlrun.cli import CONF_DIR
from mamlrun.config import build
from mamlrun.errors import MamlrunError

ROOT = CONF_DIR.parent
# Enough to exercise every stage (train, validate, checkpoint, test, report) in seconds per cell;
# two jobs at a time in two worker processes, one thread each.
QUICK = [
    "meta_iterations=6",
    "meta_batch_size=2",
    "train.log_every=3",
    "train.val_every=3",
    "train.val_tasks=4",
    "train.checkpoint_every=3",
    "eval.test_tasks=10",
    "eval.batch_size=10",
    "train.progress=false",
    "hardware.strategy=batched",
    "hardware.threads=1",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
]
SMALL_OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


def _compose(sweep: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "sweeps"), version_base="1.3"):
        return compose(sweep, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides], return_hydra_config=True)


def plan(sweep: str, quick: bool, overrides: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """``dataset -> (cells, overrides)`` for every dataset whose data is present."""
    base = _compose(sweep, overrides)
    params = OmegaConf.to_container(base.hydra.sweeper.params)
    cells = [c.strip() for c in str(params.pop("experiment")).split(",")]
    extra = {}
    runs: dict[str, tuple[list[str], list[str]]] = {}
    for cell in cells:
        cfg = _compose(sweep, [f"experiment={cell}", *overrides])
        dataset = cfg.dataset.name
        if dataset in extra and extra[dataset] is None:
            continue
        if dataset not in extra:
            attempt = []
            try:
                build(cfg.dataset)
            except MamlrunError as exc:
                if not (quick and dataset == "omniglot" and SMALL_OMNIGLOT.is_dir()):
                    print(f"reproduce: skipping the {dataset} cells: {exc}", flush=True)
                    extra[dataset] = None
                    continue
                # ++: the sweep's base config (before any experiment is chosen) has no dataset.root yet.
                attempt = [f"++dataset.root={SMALL_OMNIGLOT}", "++dataset.split=[0.6,0.2,0.2]"]
                print(f"reproduce: quick run on the small Omniglot sets in {SMALL_OMNIGLOT}", flush=True)
            extra[dataset] = attempt
        runs.setdefault(dataset, ([], extra[dataset]))[0].append(cell)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["table1"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    out = args.out or Path(f"outputs/multirun/{args.table}{suffix}")
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    try:
        runs = plan(args.table, args.quick, overrides)
    except MamlrunError as exc:
        print(f"mamlrun: error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print("mamlrun: error: no data for any cell of the table (see the lines above)", file=sys.stderr)
        return 2
    shutil.rmtree(out, ignore_errors=True)
    mamlrun = Path(sys.executable).with_name("mamlrun")
    for dataset, (cells, extra) in runs.items():
        cmd = [
            str(mamlrun),
            "-m",
            "-cd",
            str(ROOT / "sweeps"),
            "-cn",
            args.table,
            f"hydra.sweep.dir={out / dataset}",
            f"experiment={','.join(cells)}",
            *overrides,
            *extra,
        ]
        print("reproduce:", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
    from mamlrun.report import main as report

    return report([str(out), "--table", args.table, "--out", f"outputs/reports{suffix}"])


if __name__ == "__main__":
    sys.exit(main())
