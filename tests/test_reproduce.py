"""``make reproduce-table1`` and ``results/``: resumable per-cell runs, subsets, provenance, partial rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mamlrun import paths, reproduce, results
from tests.conftest import MAMLRUN
from tests.data.conftest import OMNIGLOT

SMALL = [f"++dataset.root={OMNIGLOT}", "++dataset.split=[0.6,0.2,0.2]"]


@pytest.fixture
def small_sets():
    if not OMNIGLOT.is_dir():
        pytest.skip(f"the real Omniglot archives are not at {OMNIGLOT}")


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A machine without any data set in the documented places."""
    monkeypatch.setenv("MAMLRUN_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("MAMLRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "noshared")
    monkeypatch.setattr(reproduce, "small_omniglot", lambda: None)


def test_without_data_the_error_says_where_to_put_it(no_data, capsys):
    # Overrides after --quick reach the runs (they used to stop argparse with "unrecognized arguments").
    code = reproduce.main(["table1", "--quick", "++dataset.split=[0.6,0.2,0.2]", "--cells", "omniglot"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no data for any cell" in err and "MAMLRUN_DATA" in err and "dataset.root" in err
    assert "nodata/omniglot" in err


def test_cells_are_chosen_by_name_or_prefix(no_data):
    names = ["omniglot_5w1s", "omniglot_5w5s", "omniglot_noconv_5w1s", "miniimagenet_5w1s"]
    assert reproduce._selected(names, "omniglot_5w", "cell") == names[:2]
    assert reproduce._selected(names, "omniglot", "cell") == names[:3]
    assert reproduce._selected(names, None, "cell") == names
    with pytest.raises(reproduce.MamlrunError, match="no cell matches"):
        reproduce._selected(names, "cifar", "cell")


def _reproduce(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(MAMLRUN.with_name("python")), "-m", "mamlrun.reproduce", "table1", *args]
    env = {**os.environ, "MAMLRUN_CACHE": str(tmp_path / "cache"), "MAMLRUN_DATA": str(tmp_path / "nodata")}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)


def test_a_cell_resumes_in_its_own_directory_and_keeps_its_provenance(tmp_path, small_sets):
    runs, out = tmp_path / "runs", tmp_path / "res"
    args = ["--cells", "omniglot_5w1s", "--algorithms", "maml", "--runs", str(runs), "--out", str(out)]
    quick = [*reproduce.QUICK, *SMALL]
    first = _reproduce(tmp_path, *args, *quick)
    assert first.returncode == 0, first.stderr[-3000:]
    run = runs / "omniglot_5w1s__maml"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "skipping" not in first.stdout  # only the chosen cell was looked at
    assert "computed with strategy 'batched'" in first.stdout and "  strategy: batched" in first.stdout
    second = _reproduce(tmp_path, *args, *quick)  # the same command again: continues, does not start over
    assert second.returncode == 0, second.stderr[-3000:]
    sessions = results.read_ledger(run)
    assert len(sessions) == 2
    assert "resume=true" not in sessions[0]["command"] and "resume=true" in sessions[1]["command"]
    assert sessions[1]["iterations"] == [6, 6] and sessions[0]["commit"] and "cores" in sessions[0]["hardware"]

    table = pd.read_csv(out / "table1.csv")
    row = table[(table.cell == "omniglot_5w1s") & (table.algorithm == "maml")].iloc[0]
    assert row.status == "finished" and row.meta_iterations == 6 and 0 <= row.acc <= 100
    assert row.gap == pytest.approx(row.acc - 98.7)
    assert (table[table.cell != "omniglot_5w1s"].status.str.startswith("not run")).all()
    assert len(table) == sum(len(v) for v in results.paper.TABLE1.values())  # every paper row, run or not
    md = (out / "table1.md").read_text()
    assert "98.70 ± 0.40" in md and "resume=true" in md
    assert json.loads((out / "runs" / run.name / "test_metrics.json").read_text())["test/acc_mean"] == row.acc / 100

    # An unfinished run is tested from its best checkpoint, in a directory of its own.
    (run / "metrics.json").unlink()
    assert results.main(["table1", "--runs", str(runs), "--out", str(out), "--evaluate"]) == 0
    row = pd.read_csv(out / "table1.csv").iloc[0]
    assert row.status == "partial" and row.tested_iteration in (3, 6)
    assert next(iter((runs / "_eval").iterdir())).name.startswith("omniglot_5w1s__maml__it")
    assert not (run / "metrics.json").exists()

    # A fresh clone (no outputs/): the kept copy in results/ restores the run, its row and its checkpoint.
    kept = out / "runs" / run.name
    assert (kept / "checkpoints" / "last.pt").is_file()
    assert (kept / f"test_metrics_it{int(row.tested_iteration)}.json").is_file()
    shutil.rmtree(runs)
    assert results.main(["table1", "--runs", str(runs), "--out", str(out)]) == 0
    again = pd.read_csv(out / "table1.csv").iloc[0]
    assert (again.status, again.acc, again.tested_iteration) == ("partial", row.acc, row.tested_iteration)
    shutil.rmtree(runs)
    third = _reproduce(tmp_path, *args, *quick)  # continues from the kept checkpoint, not from scratch
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"restored 1 run(s) from {out / 'runs'}" in third.stdout
    sessions = results.read_ledger(run)
    assert len(sessions) == 3 and "resume=true" in sessions[2]["command"] and sessions[2]["iterations"] == [6, 6]


def test_table1_quick_reproduction_writes_the_table(tmp_path, small_sets):
    """`make reproduce-table1 QUICK=1`: every Omniglot cell of Table 1, MAML and FOMAML, on the data present."""
    proc = _reproduce(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping the miniimagenet cells" in proc.stdout
    report = tmp_path / "outputs" / "reports_quick"
    table = pd.read_csv(report / "table1.csv")
    assert (table.status == "finished").sum() == 10  # 6 Omniglot cells: 4 x {maml, fomaml} + 2 no-conv
    assert table[table.cell.str.startswith("miniimagenet")].status.str.contains("no data").all()
    assert (report / "table1_steps.png").stat().st_size > 10_000
    assert (report / "table1_curves.png").stat().st_size > 10_000
    md = (report / "table1.md").read_text()
    assert "98.70 ± 0.40" in md and "omniglot_20w5s" in md
    assert not (tmp_path / "results").exists()  # quick runs never touch the measured results


def test_a_short_runs_learning_curve_shows_its_points(tmp_path):
    """One logged point used to give an empty plot (a line needs two points); now it is a marker."""
    import matplotlib.image

    from mamlrun.report import learning_curve

    (tmp_path / "metrics.jsonl").write_text('{"step": 20, "train/loss": 0.7}\n')
    image = matplotlib.image.imread(learning_curve(tmp_path))[..., :3]
    blue = (abs(image - [31 / 255, 119 / 255, 180 / 255]).sum(-1) < 0.1).sum()  # matplotlib's first colour
    assert blue > 20


def test_a_resumed_run_may_move_its_data_and_change_hardware_but_not_its_recipe():
    from mamlrun.train import _config_diff

    old = {"inner_lr": 0.4, "dataset": {"root": "../data", "ways": 5}, "hardware": {"strategy": "batched"}}
    new = {"inner_lr": 0.4, "dataset": {"root": "/data", "ways": 5}, "hardware": {"strategy": "auto", "threads": 2}}
    assert _config_diff(old, new) == []
    new["dataset"]["ways"], new["inner_lr"] = 20, 0.1
    assert _config_diff(old, new) == ["dataset.ways", "inner_lr"]


def test_the_algorithms_table_trains_each_algorithm_with_its_own_experiment_file(tmp_path, capsys):
    from mamlrun.reproduce import algorithm_jobs

    if not OMNIGLOT.is_dir():
        pytest.skip(f"the small Omniglot sets are not at {OMNIGLOT}")
    data = [f"++dataset.root={OMNIGLOT}", "++dataset.split=[0.6,0.2,0.2]", f"++dataset.cache_dir={tmp_path / 'c'}"]
    jobs = algorithm_jobs(tmp_path, ["seed=1", *data], "omniglot_20w", None)
    assert [run.name for _, run in jobs] == [
        "omniglot_20w1s__mamlpp",
        "omniglot_20w1s__anil",
        "omniglot_20w5s__mamlpp",
        "omniglot_20w5s__anil",
    ]
    cmd, run = jobs[1]
    assert cmd[1:] == [f"hydra.run.dir={run}", "experiment=anil_omniglot_20w1s", "seed=1", *data]
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert "resume=true" in algorithm_jobs(tmp_path, data, "omniglot_20w1s", "anil")[0][0]
    # Cells without their data are skipped with the reason; --ranks trains a cell under torchrun.
    assert algorithm_jobs(tmp_path, [f"++dataset.root={tmp_path / 'none'}"], "miniimagenet", None) == []
    assert "skipping the miniimagenet cells" in capsys.readouterr().out
    (cmd, _), *_ = algorithm_jobs(tmp_path, data, "omniglot_20w1s", "anil", ranks=2)
    assert Path(cmd[0]).name == "torchrun" and cmd[1:5] == ["--standalone", "--nproc_per_node=2", "-m", "mamlrun"]


def test_a_stopped_run_is_interrupted_whatever_its_launcher_exits_with(tmp_path):
    """SIGTERM to the driver reaches the run; torchrun then exits 1 after its ranks checkpointed: resumable."""
    import signal
    import sys
    import threading

    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(1)); time.sleep(60)"
    timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = reproduce.train([sys.executable, "-c", child], tmp_path / "run")
    finally:
        timer.cancel()
    assert code == reproduce.INTERRUPTED


def test_the_rl_table_trains_maml_pretrained_and_random_per_experiment(tmp_path):
    from mamlrun.reproduce import rl_jobs

    jobs = rl_jobs(tmp_path, ["seed=1"], "rl_halfcheetah", None)
    assert [run.name for _, run in jobs] == [
        "rl_halfcheetah_dir__maml",
        "rl_halfcheetah_dir__pretrain",
        "rl_halfcheetah_dir__random",
    ]
    cmd, run = jobs[1]
    assert cmd[1:] == [f"hydra.run.dir={run}", "experiment=rl_halfcheetah_dir", "algorithm=pretrain", "seed=1"]
    # A directory without a checkpoint (a failed start, or random init, which never trains) is taken again.
    (run / "checkpoints").mkdir(parents=True)
    assert "resume=auto" in rl_jobs(tmp_path, [], "rl_halfcheetah_dir", "pretrain")[0][0]
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert "resume=true" in rl_jobs(tmp_path, [], "rl_halfcheetah_dir", "pretrain")[0][0]
    with pytest.raises(reproduce.MamlrunError, match="no experiment matches 'rl_walker'"):
        rl_jobs(tmp_path, [], "rl_walker", None)
