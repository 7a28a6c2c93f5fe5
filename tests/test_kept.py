"""Runs kept in ``results/``: stored whole, checkpoints only while unfinished, restored only where missing."""

from __future__ import annotations

import json

import torch

from mamlrun import kept, reproduce


def _run(runs, name="omniglot_5w1s__maml", finished=False):
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("meta_iterations: 60000\n")
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=omniglot_5w1s\n")
    (run / "metrics.jsonl").write_text('{"step": 100, "train/loss": 1.0}\n{"step": 200, "train/loss": 0.5}\n')
    (run / "checkpoints").mkdir()
    torch.save({"iteration": 200}, run / "checkpoints" / "last.pt")
    torch.save({"iteration": 100}, run / "checkpoints" / "best.pt")
    kept.ledger_path(run).write_text('{"wall_s": 10.0, "iterations": [0, 200]}\n')
    for it, acc in [(100, 0.5), (1000, 0.9)]:  # numbered, not sorted by name: 1000 after 100
        (runs / "_eval" / f"{run.name}__it{it}").mkdir(parents=True)
        (runs / "_eval" / f"{run.name}__it{it}" / "metrics.json").write_text(json.dumps({"test/acc_mean": acc}))
    if finished:
        (run / "metrics.json").write_text('{"test/acc_mean": 0.95}')
    return run


def test_an_unfinished_run_is_kept_with_its_checkpoints_and_restored_whole(tmp_path):
    runs, out = tmp_path / "outputs", tmp_path / "results" / "runs"
    run = _run(runs)
    (out / run.name).mkdir(parents=True)
    (out / run.name / "test_metrics_it50.json").write_text("{}")  # an earlier run's: not mixed in
    kept.store(run, runs, out / run.name)
    names = sorted(p.name for p in (out / run.name).rglob("*") if p.is_file())
    assert names == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "overrides.yaml", "sessions.jsonl",
        "test_metrics_it100.json", "test_metrics_it1000.json",
    ]  # fmt: skip

    fresh = tmp_path / "clone" / "outputs"  # a clone without outputs/
    assert kept.restore_all(out, fresh) == [run.name]
    again = fresh / run.name
    for path in [p for p in run.rglob("*") if p.is_file()]:
        assert (again / path.relative_to(run)).read_bytes() == path.read_bytes()
    assert kept.ledger_path(again).read_text() == kept.ledger_path(run).read_text()
    assert [p.parent.name for p in kept.evaluations(again, fresh)] == [f"{run.name}__it100", f"{run.name}__it1000"]
    assert torch.load(again / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 200
    assert not list(fresh.glob(".*.tmp"))

    # A run directory that exists is never overwritten, even if it differs from the kept copy.
    (again / "metrics.jsonl").write_text("mine\n")
    assert kept.restore_all(out, fresh) == []
    assert (again / "metrics.jsonl").read_text() == "mine\n"


def test_a_finished_run_is_kept_without_checkpoints_and_never_trained_again(tmp_path, capsys):
    runs, out = tmp_path / "outputs", tmp_path / "results" / "runs"
    run = _run(runs, finished=True)
    kept.store(run, runs, out / run.name)
    assert (out / run.name / "test_metrics.json").is_file() and not (out / run.name / "checkpoints").exists()
    fresh = tmp_path / "clone"
    assert kept.restore_all(out, fresh, resumable_only=True) == []  # nothing to continue
    assert kept.restore_all(out, fresh) == [run.name]  # its row, for the table
    assert reproduce.train(["false"], fresh / run.name) == 0  # not started: "false" would fail
    assert "has finished" in capsys.readouterr().out


def test_a_run_that_cannot_continue_starts_afresh_without_its_old_record(tmp_path, capsys):
    runs = tmp_path / "outputs"
    run = _run(runs)
    for name in kept.CHECKPOINTS:
        (run / "checkpoints" / name).unlink()
    assert reproduce.train(["true"], run) == 0
    assert "no checkpoint to continue from; it starts afresh" in capsys.readouterr().out
    assert kept.evaluations(run, runs) == []
    assert [json.loads(ln)["command"] for ln in kept.ledger_path(run).read_text().splitlines()] == ["true"]


def test_a_kept_copy_without_its_config_is_not_a_run(tmp_path):
    out = tmp_path / "kept"
    (out / "x__maml").mkdir(parents=True)
    (out / "x__maml" / "metrics.jsonl").write_text("")
    assert kept.restore_all(out, tmp_path / "outputs") == []
