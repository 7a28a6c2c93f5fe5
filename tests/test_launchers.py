"""Sweeps through Hydra's launchers (submitit: local processes, SLURM), ``resume=auto``, and Optuna's sweeper.

Every run here is the real command (``python -m mamlrun``) on the sinusoid, a few hundred small
meta-iterations long, in ``tmp_path``. Nothing is submitted to SLURM: its launcher is only composed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mamlrun import rundirs
from mamlrun.errors import MamlrunError
from mamlrun.validation import plan
from tests.conftest import ROOT, read_metrics

# Long enough to stop mid-training after the first checkpoint, short enough for a loaded 2-core machine.
RUN = [
    "meta_iterations=200",
    "meta_batch_size=5",
    "train.checkpoint_every=20",
    "train.val_every=100",
    "train.log_every=20",
    "eval.test_tasks=20",
    "train.progress=false",
    "test_inner_steps=2",
    "hardware.threads=1",
]
TINY = ["meta_iterations=4", "train.val_every=0", "eval.test_tasks=4", "train.progress=false", "test_inner_steps=1"]
OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src"),
    "OMP_NUM_THREADS": "1",
    "HYDRA_FULL_ERROR": "0",
    "WANDB_MODE": "offline",
}


def mamlrun(*args: str, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mamlrun`` from this checkout, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "mamlrun", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mamlrun {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def starts(run_dir: Path) -> list[bool]:
    """For each start of a run (``provenance.json``), whether it continued from a checkpoint."""
    return [start["resume"] for start in json.loads((run_dir / "provenance.json").read_text())]


def same(a, b) -> bool:
    """Nested checkpoint contents, tensors compared bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def assert_same_results(a: Path, b: Path) -> None:
    """Two runs ended with the same meta-parameters and the same metrics (wall times aside)."""
    pa, pb = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["learner"] for d in (a, b))
    assert same(pa, pb)
    ma, mb = ({k: v for k, v in read_metrics(d).items() if "wall" not in k} for d in (a, b))
    assert ma == mb


def stop_when_checkpointed(proc: subprocess.Popen, run_dir: Path, pid, sig: signal.Signals) -> None:
    """Send ``sig`` to the process ``pid()`` names once ``run_dir`` holds its first checkpoint, mid-training."""
    last, deadline = run_dir / "checkpoints" / "last.pt", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        target = pid() if last.exists() else None
        if target:
            os.kill(target, sig)
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {run_dir} while the run was training")


def task_pid(cwd: Path) -> int | None:
    """The process that runs a job for submitit's local launcher, started from ``cwd``."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"submitit.core._submit" in cmd and Path(os.readlink(proc / "cwd")) == cwd:
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted run with ``resume=auto`` in a new directory: it starts afresh."""
    cwd = tmp_path_factory.mktemp("whole")
    proc = mamlrun(*RUN, "resume=auto", "hydra.run.dir=run", cwd=cwd)
    assert "resumed" not in proc.stdout and starts(cwd / "run") == [False]
    return cwd / "run"


# -- submitit's local launcher -----------------------------------------------------------------
def test_a_sweep_through_submitits_local_launcher_writes_every_job_and_the_summary(tmp_path):
    proc = mamlrun("-m", "hydra/launcher=local", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert jobs == ["0_seed-0", "1_seed-1"]
    assert [read_metrics(sweep / job)["train/meta_iterations"] for job in jobs] == [4, 4]
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "test/mse_mean" in summary[0] and "sweep summary" in proc.stdout
    assert list((sweep / ".submitit").glob("*/*_0_log.out"))  # each job a process of its own, logs in the sweep
    # A launcher that may start a job again runs its jobs with resume=auto; the job folders keep their names.
    assert "resume=auto" in (sweep / "0_seed-0" / ".hydra" / "overrides.yaml").read_text()
    assert yaml.safe_load((sweep / "1_seed-1" / ".hydra" / "config.yaml").read_text())["seed"] == 1


def test_a_job_the_launcher_starts_again_continues_from_its_checkpoint(tmp_path, whole):
    """submitit's requeue (SLURM's after a time-out or preemption): the job runs again and resumes exactly."""
    cmd = [sys.executable, "-m", "mamlrun", "-m", "hydra/launcher=local", *RUN, "hydra.sweep.dir=sweep"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = tmp_path / "sweep" / "0_sinusoid__maml__k5__seed0"
    # submitit's preemption signal: the task checkpoints its submission, asks to be requeued and exits.
    stop_when_checkpointed(proc, job, lambda: task_pid(tmp_path), signal.SIGUSR2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(log.read_text() for log in (tmp_path / "sweep" / ".submitit").glob("*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert starts(job) == [False, True]  # started again, from its checkpoint
    assert_same_results(whole, job)


# -- resume=auto -----------------------------------------------------------------------------
def test_a_sweep_stopped_by_sigterm_continues_when_the_same_command_runs_again(tmp_path, whole):
    args = ["-m", *RUN, "resume=auto", "hydra.sweep.dir=sweep"]
    cmd = [sys.executable, "-m", "mamlrun", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = tmp_path / "sweep" / "0_sinusoid__maml__k5__seed0"
    stop_when_checkpointed(proc, job, lambda: proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "the resumable checkpoint is" in err
    assert not (job / "metrics.json").exists()
    again = mamlrun(*args, cwd=tmp_path)
    assert "done (resumed)" in again.stdout and starts(job) == [False, True]
    assert_same_results(whole, job)


def test_resume_auto_continues_a_finished_run_and_takes_its_own_partial_directory(tmp_path, whole):
    # A finished run continues from its last checkpoint: nothing left to train, the same numbers.
    copy = tmp_path / "copy"
    shutil.copytree(whole, copy)
    proc = mamlrun(*RUN, "resume=auto", "hydra.run.dir=copy", cwd=tmp_path)
    assert "done (resumed)" in proc.stdout
    assert_same_results(whole, copy)
    # Without a checkpoint, the directory is this run's own (the same config) or holds no results: afresh.
    config = rundirs.task_config(plan([*RUN, "resume=auto", f"hydra.run.dir={copy}"]).base)
    for path in (copy / "checkpoints" / "last.pt", copy / "checkpoints" / "best.pt"):
        path.unlink()
    assert rundirs.resumes(copy, config) is False
    assert rundirs.resumes(tmp_path / "new", config) is False
    (tmp_path / "started" / ".hydra").mkdir(parents=True)
    (tmp_path / "started" / "cli.log").write_text("")
    assert rundirs.resumes(tmp_path / "started", config) is False
    # ... and never another run's.
    other = rundirs.task_config(plan([*RUN, "seed=1", "resume=auto"]).base)
    with pytest.raises(MamlrunError, match="holds another run's results and no checkpoint"):
        rundirs.resumes(copy, other)


def test_resume_auto_never_takes_the_directory_of_another_run(tmp_path):
    def another_run(run_dir: Path) -> None:
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 5\n")
        (run_dir / "metrics.json").write_text("{}")

    another_run(tmp_path / "run")
    proc = mamlrun(*TINY, "resume=auto", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("mamlrun: error: resume=auto but hydra.run.dir=run holds another run's results")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "metrics.json"]
    # In a sweep, each job judges its own folder once it starts.
    another_run(tmp_path / "sweep" / "0_seed-0")
    proc = mamlrun("-m", "seed=0,1", *TINY, "resume=auto", "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("mamlrun: error: resume=auto but ")
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "sweep" / "0_seed-0" / ".hydra" / "config.yaml").read_text() == "seed: 5\n"
    assert not (tmp_path / "sweep" / "1_seed-1").exists()


# -- SLURM, without a cluster ------------------------------------------------------------------
def test_the_slurm_launcher_composes_without_submitting(tmp_path):
    slurm = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
    out = mamlrun(*slurm, "--cfg", "hydra", cwd=tmp_path)  # Hydra prints a config for one run only, not with -m
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["max_num_timeout"] > 0 and launcher["setup"] == []
    assert launcher["submitit_folder"].startswith("${hydra.sweep.dir}/")
    assert not list(tmp_path.iterdir())  # printed, nothing written, nothing submitted
    # The command's own checks take the launcher's overrides; its jobs continue from checkpoints when requeued.
    for launcher in ("slurm", "local"):
        job = plan(["-m", "seed=0,1", f"hydra/launcher={launcher}", "hydra.launcher.tasks_per_node=4"])
        assert job.auto and job.argv[-1] == "resume=auto"
    assert not plan(["-m", "seed=0,1", "hydra/launcher=slurm", "resume=false"]).auto  # the command decides
    assert not plan(["-m", "seed=0,1", "hydra/launcher=joblib"]).auto  # nothing starts a joblib job again


# -- Optuna ------------------------------------------------------------------------------------
@pytest.mark.skipif(not OPTUNA, reason="Hydra's Optuna sweeper is not installed (extra `cluster`: make install)")
def test_an_optuna_search_runs_its_trials_and_writes_the_best(tmp_path):
    short = ["meta_iterations=20", "train.val_every=10", "eval.test_tasks=10", "test_inner_steps=1"]
    args = ["-cd", str(ROOT / "sweeps"), "-cn", "hparams_sinusoid", "hydra.sweeper.n_trials=3", *short]
    proc = mamlrun(*args, "hydra.sweep.dir=search", cwd=tmp_path)
    search = tmp_path / "search"
    trials = sorted(p for p in search.iterdir() if (p / "metrics.json").is_file())
    assert len(trials) == 3 and "Best value" in proc.stdout + proc.stderr
    best = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"inner_lr", "optimizer.lr"}
    # Optuna minimised each trial's best validation MSE (train.sweep_metric=val), not a test metric.
    assert best["best_value"] == min(read_metrics(t)["val/mse_best"] for t in trials)
    for trial in trials:
        cfg = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())
        assert 0.001 <= cfg["inner_lr"] <= 0.1 and 0.0001 <= cfg["optimizer"]["lr"] <= 0.01
