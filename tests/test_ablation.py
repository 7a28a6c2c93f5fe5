"""MAML++'s ablation: one fix per row, a sweep that runs both 20-way cells, and its table beside the paper's."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mamlrun import paper, report
from mamlrun.validation import plan
from tests.conftest import ROOT, compose_config

FIXES = ("msl", "da", "bn", "lslr", "ca")


def fixes_on(row: str) -> set[str]:
    cfg = compose_config("experiment=mamlpp_omniglot_20w1s", f"+ablation={row}")
    a = cfg.algorithm
    switched = {
        "msl": a.multi_step_loss,
        "da": a.first_order_epochs > 0,
        "bn": a.per_step_batch_norm,
        "lslr": a.learned_step_sizes,
        "ca": "Cosine" in str(cfg.schedule.get("_target_")),
    }
    return {fix for fix, on in switched.items() if on}


@pytest.mark.parametrize("row", FIXES)
def test_each_ablation_row_switches_on_its_own_fix_alone(row):
    assert fixes_on(row) == {row}


def test_the_ablation_runs_maml_with_every_fix_off_and_mamlpp_with_all_on():
    assert fixes_on("maml") == set()
    assert fixes_on("all") == set(FIXES)
    assert set(paper.MAMLPP_ABLATION_ROWS) == {"maml", "all", *FIXES}


def test_the_sweep_file_may_be_narrowed_from_the_command_line_without_dash_m():
    """A sweep file sets hydra.mode=MULTIRUN, so its command line may sweep too (as Hydra allows)."""
    job = plan(["-cd", str(ROOT / "sweeps"), "-cn", "mamlpp_ablation", "+ablation=maml,all", "debug=quick"])
    assert job.multirun and job.auto  # resumable: the same command continues every job
    sweep = yaml.safe_load((ROOT / "sweeps" / "mamlpp_ablation.yaml").read_text())
    assert sweep["hydra"]["sweeper"]["params"]["experiment"].split(",") == list(paper.MAMLPP_ABLATION)


def fake_run(root, cell: str, row: str, acc: float) -> None:
    """A finished job's files as a sweep leaves them: Hydra's choices and config, the final metrics."""
    job = root / f"{cell}__{row}"
    (job / ".hydra").mkdir(parents=True)
    choices = {"experiment": cell, "ablation": row}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    config = {"dataset": {"name": "omniglot"}, "algorithm": {"name": "mamlpp"}, "ways": 20, "seed": 0}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"test/acc_mean": acc, "test/acc_ci95": 0.004, "train/meta_iterations": 50000, "train/wall_s": 3600.0}
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_the_ablation_table_puts_every_row_beside_the_papers_numbers(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "mamlpp_omniglot_20w5s", "all", 0.9931)
    fake_run(sweep, "mamlpp_omniglot_20w1s", "all", 0.9761)
    fake_run(sweep, "mamlpp_omniglot_20w1s", "msl", 0.9600)
    fake_run(sweep, "mamlpp_omniglot_20w1s", "maml", 0.9512)
    fake_run(sweep, "omniglot_20w1s", "maml", 0.5)  # not an ablation cell: left out
    assert report.main([str(sweep), "--table", "mamlpp_ablation", "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "mamlpp_ablation.csv")
    # The paper's order: cells, then MAML, each fix, MAML++.
    assert list(zip(table.cell, table.row)) == [
        ("mamlpp_omniglot_20w1s", "maml"),
        ("mamlpp_omniglot_20w1s", "msl"),
        ("mamlpp_omniglot_20w1s", "all"),
        ("mamlpp_omniglot_20w5s", "all"),
    ]
    assert table.acc.round(2).tolist() == [95.12, 96.0, 97.61, 99.31]
    assert table.paper.tolist()[0] == 95.8 and pd.isna(table.paper[1]) and table.paper.tolist()[2:] == [97.65, 99.33]
    md = (tmp_path / "out" / "mamlpp_ablation.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:]]
    assert rows[1][:4] == ["omniglot_20w1s", "MAML + MSL", "96.00 ± 0.40", "—"]
    assert "95.80 ± 0.30" in md and "MAML++" in md
    assert (tmp_path / "out" / "mamlpp_ablation.png").stat().st_size > 10_000
    assert "mamlpp_ablation.md" in capsys.readouterr().out
