"""Data-parallel meta-learning: 2 gloo processes on the CPU compute what one process computes.

The in-process tests spawn two ranks (``torch.multiprocessing``) that build runs from composed
configs exactly as ``mamlrun`` does and compare with the same runs in this process (float64,
to 1e-10). One test runs the real command under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mamlrun import parallel
from mamlrun.assemble import build_optimizer, build_run
from mamlrun.errors import MamlrunError
from mamlrun.logging import MetricLogger
from mamlrun.run import schedule_of
from mamlrun.train import VAL_STREAM, Trainer, evaluate, read_checkpoint
from tests.conftest import ROOT, compose_config, read_metrics, run_mamlrun

WORLD = 2
RUN = ["dataset=sinusoid", "meta_batch_size=4", "meta_iterations=6", "train.log_every=2", "train.val_every=0"]
ALGORITHMS = ["maml", "reptile", "metasgd", "mamlpp"]


RL = ["experiment=rl_navigation2d", "meta_batch_size=4", "shots=3", "meta_iterations=2", "train.val_every=0"]


def trainer(run_dir: Path, *overrides: str, base: list[str] = RUN) -> Trainer:
    """A run built from its composed config the way ``mamlrun`` builds it, in float64."""
    cfg = compose_config(*base, "train.checkpoint_every=1", *overrides)
    torch.manual_seed(cfg.seed)
    sampler, learner = build_run(cfg, "cpu", torch.float64)
    optimizer, lr_schedule = build_optimizer(cfg, learner)
    return Trainer(learner, sampler, optimizer, schedule_of(cfg), run_dir, progress=False, lr_schedule=lr_schedule)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def train(run_dir: Path, algorithm: str) -> dict[str, torch.Tensor]:
    """Parameters after 6 meta-iterations, and validation statistics on 5 tasks (shares of 3 and 2)."""
    t = trainer(run_dir, f"algorithm={algorithm}")
    t.fit(MetricLogger())
    metrics = evaluate(t.learner, t.sampler, "val", 5, VAL_STREAM, batch_size=5)
    return {"params": flat(t.learner), "val": torch.tensor([metrics[k] for k in sorted(metrics)])}


def train_rl(run_dir: Path) -> dict[str, torch.Tensor]:
    """MAML-TRPO: parameters after 2 meta-updates, and returns after 0..3 steps on 3 test tasks."""
    t = trainer(run_dir, base=RL)
    t.fit(MetricLogger())
    metrics = evaluate(t.learner, t.sampler, "test", 3, VAL_STREAM, batch_size=3)
    return {"params": flat(t.learner), "test": torch.tensor([metrics[k] for k in sorted(metrics)])}


class SignalledOnRankOne(Trainer):
    """Rank 1 alone gets SIGTERM during iteration 3 (a scheduler stopping one process first)."""

    def step(self, batch):
        if self.iteration == 2 and parallel.rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().step(batch)


def stopped_and_resumed(run_dir: Path) -> dict[str, torch.Tensor]:
    """A 2-rank run stopped by a signal to one rank, then resumed to the end."""
    t = trainer(run_dir, "algorithm=maml")
    t.__class__ = SignalledOnRankOne
    t.schedule.checkpoint_every = 0  # only the signal writes a checkpoint
    with contextlib.suppress(KeyboardInterrupt):
        t.fit(MetricLogger())
    stopped_at = t.iteration
    resumed = trainer(run_dir, "algorithm=maml")
    assert resumed.restore()
    resumed.fit(MetricLogger())
    return {"params": flat(resumed.learner), "stopped_at": torch.tensor(stopped_at)}


def _worker(rank: int, port: int, root: str, job: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    out: dict[str, object] = {}
    try:
        if job == "algorithms":
            for name in ALGORITHMS:
                for key, value in train(Path(root) / f"{name}_ranks", name).items():
                    out[f"{name}/{key}"] = value
        elif job == "rl":
            out = train_rl(Path(root) / "rl_ranks")
        elif job == "resume":
            out = stopped_and_resumed(Path(root) / "resumed")
        elif job == "commands":
            try:
                parallel.check_same_command(["mamlrun", f"seed={rank}"])
            except MamlrunError as exc:
                out["error"] = torch.tensor(list(str(exc).encode()), dtype=torch.uint8)
        elif job == "peer_dies":
            if rank == 1:
                os._exit(3)
            try:
                dist.all_reduce(torch.ones(1))
            except Exception as exc:
                out["error"] = torch.tensor(list(str(parallel.peer_failed(exc)).encode()), dtype=torch.uint8)
        torch.save(out, Path(root) / f"rank{rank}.pt")
    finally:
        if job != "peer_dies":
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(tmp_path: Path, job: str) -> list[dict]:
    """Run ``job`` on two ranks; every rank's results."""
    mp.start_processes(_worker, args=(free_port(), str(tmp_path), job), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def text(t: torch.Tensor) -> str:
    return bytes(t.tolist()).decode()


def test_two_ranks_train_and_validate_like_one_process(tmp_path):
    ranks = spawn(tmp_path, "algorithms")
    for name in ALGORITHMS:
        single = train(tmp_path / f"{name}_single", name)
        for r in ranks:  # every rank holds the single process's parameters and validation numbers
            torch.testing.assert_close(r[f"{name}/params"], single["params"], rtol=0, atol=1e-10)
            torch.testing.assert_close(r[f"{name}/val"], single["val"], rtol=0, atol=1e-10)
        assert not torch.equal(single["params"], flat(trainer(tmp_path / "init", f"algorithm={name}").learner))
    # Rank 0 alone writes checkpoints.
    assert (tmp_path / "maml_ranks" / "checkpoints" / "last.pt").is_file()


def test_two_ranks_take_the_single_process_maml_trpo_step(tmp_path):
    """Rollouts of a task are the same on any rank; surrogate, KL and curvature products are all-reduced."""
    ranks = spawn(tmp_path, "rl")
    single = train_rl(tmp_path / "rl_single")
    assert not torch.equal(single["params"], flat(trainer(tmp_path / "init", base=RL).learner))
    for r in ranks:
        # Sums over tasks add in another order on two ranks (~1e-16 relative); TRPO's conjugate-gradient
        # solve amplifies that by the Fisher matrix's conditioning, to ~1e-10 absolute in the step.
        torch.testing.assert_close(r["params"], single["params"], rtol=0, atol=1e-8)
        torch.testing.assert_close(r["test"], single["test"], rtol=1e-6, atol=1e-8)  # returns after that step


def test_a_signal_to_one_rank_stops_all_at_the_same_iteration_and_the_run_resumes_exactly(tmp_path):
    ranks = spawn(tmp_path, "resume")
    whole = train(tmp_path / "whole", "maml")
    for r in ranks:
        assert int(r["stopped_at"]) == 3
        torch.testing.assert_close(r["params"], whole["params"], rtol=0, atol=1e-10)


def test_ranks_running_different_commands_stop_with_one_line_everywhere(tmp_path):
    for r in spawn(tmp_path, "commands"):
        assert "run different commands" in text(r["error"])


def test_a_rank_that_dies_ends_the_collective_with_one_line(tmp_path):
    port = free_port()
    procs = [
        mp.get_context("spawn").Process(target=_worker, args=(r, port, str(tmp_path), "peer_dies")) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 3]
    message = text(torch.load(tmp_path / "rank0.pt", weights_only=True)["error"])
    assert message.startswith("rank 0: another process of the distributed job failed or timed out")


def test_meta_batch_not_divisible_by_the_ranks_is_one_line(tmp_path):
    proc = run_mamlrun("meta_batch_size=5", cwd=tmp_path, check=False, env={"WORLD_SIZE": "2", "RANK": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("mamlrun: error: meta_batch_size=5 must be divisible by the number of processes (2)")


def test_an_unavailable_backend_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    with pytest.raises(MamlrunError, match="backend gloo \\(for CPU\\) is not available"):
        parallel.init("cpu", 10)


def test_slurm_tasks_become_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # restored (removed) after the test, whatever it sets
        monkeypatch.delenv(key)
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key, value in {**env, "SLURM_JOB_ID": "12345"}.items():
        monkeypatch.setenv(key, value)
    parallel.adopt_slurm_environment()
    assert (parallel.rank(), parallel.world_size(), parallel.local_rank()) == (3, 4, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == "32345"


def test_shares_cover_the_tasks_in_order(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = [range(10)[parallel.share(10, r)] for r in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun -m mamlrun <args>`` on ``WORLD`` ranks of one thread each; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    proc = subprocess.run(
        [*command, "-m", "mamlrun", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_runs_the_command_on_two_ranks_like_one_process(tmp_path):
    """``torchrun -m mamlrun``: one run directory, written by rank 0, with the single process's numbers."""
    args = [
        "meta_iterations=4",
        "meta_batch_size=4",
        "train.val_every=2",
        "train.val_tasks=6",
        "eval.test_tasks=10",
        "eval.batch_size=5",
        "train.progress=false",
        "hardware.dtype=float64",
        "hardware.threads=1",
    ]
    run_mamlrun(*args, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    proc = torchrun(*args, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.stdout.count("mamlrun: done") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    one, two = (read_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["learner"] for d in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        if isinstance(one[key], torch.Tensor):
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-10)
    metrics = [{k: v for k, v in read_metrics(tmp_path / d).items() if "wall" not in k} for d in ("one", "two")]
    assert metrics[0].keys() == metrics[1].keys()
    for key, value in metrics[0].items():
        assert metrics[1][key] == pytest.approx(value, abs=1e-10), key


def test_rank_zero_draws_rollout_figures_alone_after_the_other_ranks_finish(tmp_path):
    """A locomotion run under ``torchrun``: its figure's rollouts run on rank 0 only, without collectives."""
    args = ["experiment=rl_halfcheetah_dir", "meta_batch_size=2", "shots=2", "dataset.horizon=10"]
    args += ["meta_iterations=1", "eval.test_tasks=2", "eval.batch_size=2", "train.progress=false"]
    torchrun(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (tmp_path / "run" / "velocity.png").is_file() and (tmp_path / "run" / "metrics.json").is_file()
