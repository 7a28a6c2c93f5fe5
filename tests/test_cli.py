"""The ``mamlrun`` command end to end, as a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import MAMLRUN, TINY, read_metrics, read_wandb_records, run_mamlrun


def test_default_run_trains_the_sinusoid_and_reports(tmp_path):
    proc = run_mamlrun(cwd=tmp_path)
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*"))
    metrics = read_metrics(run_dir)
    assert metrics["train/meta_iterations"] == 4000
    # A trained MAML model adapts: one step on 5 points beats no step.
    assert metrics["test/mse_step1"] < metrics["test/mse_step0"]
    for name in (
        "metrics.jsonl",
        "learning_curve.png",
        "sinusoid_fit.png",
        "checkpoints/last.pt",
        ".hydra/config.yaml",
    ):
        assert (run_dir / name).exists(), name
    assert "test/mse_step1" in proc.stdout and str(run_dir) in proc.stdout
    assert "meta-train" in proc.stderr  # the progress bar


def test_overrides_reach_the_run(tmp_path):
    run_mamlrun(
        "algorithm=fomaml",
        "shots=10",
        "inner_steps=2",
        "meta_batch_size=4",
        *TINY,
        "hydra.run.dir=out",
        cwd=tmp_path,
    )
    cfg = (tmp_path / "out" / ".hydra" / "config.yaml").read_text()
    assert "first_order: true" in cfg and "shots: 10" in cfg and "inner_steps: 2" in cfg
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["train/meta_iterations"] == 20


def test_multirun_sweeps_a_shared_knob_into_separate_run_dirs(tmp_path):
    proc = run_mamlrun("-m", "inner_steps=1,2,3", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and (p / "metrics.json").exists())
    # Job folders are named after the values they sweep.
    assert [job.name for job in jobs] == ["0_inner_steps-1", "1_inner_steps-2", "2_inner_steps-3"]
    steps = sorted(
        int(line.split(":")[1])
        for job in jobs
        for line in (job / ".hydra" / "config.yaml").read_text().splitlines()
        if line.startswith("inner_steps:")
    )
    assert steps == [1, 2, 3]
    summary = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and "test/mse_mean" in summary[0]
    assert "sweep summary" in proc.stdout


def test_diverging_run_stops_with_one_line(tmp_path):
    proc = run_mamlrun(
        "inner_lr=50",
        "inner_steps=3",
        "meta_iterations=200",
        "train.log_every=20",
        "train.progress=false",
        "hydra.run.dir=out",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mamlrun: error: training diverged")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    args = [
        "meta_iterations=1500",
        "train.checkpoint_every=100",
        "train.val_every=500",
        "train.log_every=50",
        "eval.test_tasks=50",
        "train.progress=false",
        "hardware.strategy=batched",
        "test_inner_steps=2",
    ]
    run_mamlrun(*args, "hydra.run.dir=whole", cwd=tmp_path)

    # Start the same run, kill it hard once a few checkpoints exist, then resume it.
    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [str(MAMLRUN), *args, "hydra.run.dir=cut"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["iteration"] >= 300:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    interrupted_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert 300 <= interrupted_at < 1500, "the run was not interrupted"
    assert not (tmp_path / "cut" / "metrics.json").exists()
    proc = run_mamlrun(*args, "hydra.run.dir=cut", "resume=true", cwd=tmp_path)
    assert "resumed" in proc.stdout

    whole, cut = (
        torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True),
        torch.load(ckpt, weights_only=True),
    )
    for k, v in whole["learner"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, cut["learner"][k]), k
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert {k: v for k, v in a.items() if "wall" not in k} == {k: v for k, v in b.items() if "wall" not in k}
    # The resumed log reads like the uninterrupted one (no duplicated steps).
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    whole_steps = [json.loads(line)["step"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert steps == whole_steps


def test_resume_refuses_a_different_config(tmp_path):
    run_mamlrun(*TINY, "train.checkpoint_every=10", "hydra.run.dir=out", cwd=tmp_path)
    proc = run_mamlrun(*TINY, "inner_lr=0.02", "resume=true", "hydra.run.dir=out", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "config differs in" in proc.stderr and "inner_lr" in proc.stderr


def test_eval_mode_evaluates_a_checkpoint(tmp_path):
    run_mamlrun(*TINY, "hydra.run.dir=train", cwd=tmp_path)
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    proc = run_mamlrun(
        "mode=eval",
        f"checkpoint={ckpt}",
        "eval.test_tasks=20",
        "test_inner_steps=3",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    evaluated = read_metrics(tmp_path / "ev")
    assert evaluated["test/mse_step3"] == pytest.approx(read_metrics(tmp_path / "train")["test/mse_step3"])
    # The summary reports how long the evaluation took (a checkpoint that does not fit: tests/test_bad_inputs.py).
    assert evaluated["test/wall_s"] > 0 and f"done in {evaluated['test/wall_s']:.1f} s" in proc.stdout


def test_wandb_offline_records_config_metrics_and_group(tmp_path):
    run_mamlrun("-m", "logger=wandb", "seed=0,1", *TINY, "hydra.sweep.dir=sw", cwd=tmp_path)
    logs = sorted((tmp_path / "sw").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    for log in logs:
        records = read_wandb_records(log)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.project == "mamlrun" and run.run_group == "sw"
        config_keys = {item.key for item in run.config.update}
        assert {"inner_lr", "shots", "algorithm", "dataset"} <= config_keys
        history = [item for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item]
        assert any("train/loss" in (item.key or "/".join(item.nested_key)) for item in history)
        summary = {
            item.key or "/".join(item.nested_key)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for item in r.summary.update
        }
        assert "test/mse_mean" in summary
    assert not Path(tmp_path / "wandb").exists()  # everything stays inside the run directories


def test_learn2learn_algorithms_run_and_refuse_what_they_lack(tmp_path):
    pytest.importorskip("learn2learn", reason="learn2learn missing: run `make install-l2l`")
    run_mamlrun("algorithm=metasgd_l2l", *TINY, "hydra.run.dir=l2l", cwd=tmp_path)
    assert read_metrics(tmp_path / "l2l")["train/meta_iterations"] == 20
    # learn2learn has no Reptile: there is no such option, and the error lists the ones there are.
    proc = run_mamlrun("algorithm=reptile_l2l", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Could not find 'algorithm/reptile_l2l'" in proc.stderr
    assert "maml_l2l" in proc.stderr and "metasgd_l2l" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
