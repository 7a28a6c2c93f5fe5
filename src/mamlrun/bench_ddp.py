"""``make bench-ddp``: how the data-parallel meta-batch scales from 1 to N processes on this machine.

One process computes the meta-gradient of a whole meta-batch; N processes (gloo on CPU, nccl on
GPUs, each with ``--threads`` threads) each compute their share and average the meta-gradients with
one ``all_reduce`` (:func:`mamlrun.parallel.average_gradients`), as ``torchrun -m mamlrun`` does.
Rounds start together (a barrier); a round's time is rank 0's, from the barrier to the averaged
gradient. Reports the median time per meta-iteration, the speed-up, the efficiency (speed-up /
processes) and the share of the step spent in the all-reduce, waiting for the slowest rank included.

Usage: ``python -m mamlrun.bench_ddp [--case omniglot_5w1s] [--processes 2] [--rounds 10] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mamlrun import parallel
from mamlrun.algorithms import MAML
from mamlrun.bench import CASES, environment
from mamlrun.learner import MetaLearner


def rounds_of(case_key: str, rounds: int, threads: int) -> tuple[list[float], list[float]]:
    """Per-round step times and all-reduce times of this process (its share of the meta-batch)."""
    torch.set_num_threads(threads)
    case = CASES[case_key]
    torch.manual_seed(0)
    learner = MetaLearner(case.model(), MAML(case.inner_lr, case.inner_steps, case.inner_steps), case)
    batch = case.batch(torch.device("cpu"))
    share = batch.part(parallel.share(batch.num_tasks))
    steps, reductions = [], []
    for r in range(rounds + 1):  # the first round warms up
        parallel.barrier()
        start = time.perf_counter()
        learner.zero_grad(set_to_none=True)
        learner.meta_gradient(share)
        computed = time.perf_counter()
        parallel.average_gradients(learner)
        done = time.perf_counter()
        if r:
            steps.append(done - start)
            reductions.append(done - computed)
    return steps, reductions


def _worker(rank: int, processes: int, port: int, args: tuple, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(processes), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", timeout=timedelta(seconds=600))
    try:
        steps, reductions = rounds_of(*args)
        if rank == 0:
            Path(out).write_text(json.dumps({"steps": steps, "reductions": reductions}))
    finally:
        dist.destroy_process_group()


def measure(case: str, processes: int, rounds: int, threads: int) -> dict:
    """Median step time of 1 and of ``processes`` processes on ``case``; speed-up and efficiency."""
    one, _ = rounds_of(case, rounds, threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.start_processes(
            _worker, args=(processes, port, (case, rounds, threads), out), nprocs=processes, start_method="spawn"
        )
        many = json.loads(Path(out).read_text())
    t1, tn = statistics.median(one), statistics.median(many["steps"])
    reduce = statistics.median(many["reductions"])
    return {
        "case": case,
        "processes": processes,
        "threads_per_process": threads,
        "rounds": rounds,
        "ms_1": t1 * 1e3,
        "ms_n": tn * 1e3,
        "speedup": t1 / tn,
        "efficiency": t1 / tn / processes,
        "all_reduce_ms": reduce * 1e3,
        "all_reduce_share": reduce / tn,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.bench_ddp", description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="omniglot_5w1s", choices=sorted(CASES))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bench_ddp.json"))
    args = parser.parse_args(argv)
    result = measure(args.case, args.processes, args.rounds, args.threads)
    print(
        f"{CASES[args.case].name}: 1 process {result['ms_1']:.0f} ms/it, {args.processes} processes "
        f"{result['ms_n']:.0f} ms/it -> speed-up {result['speedup']:.2f}x, efficiency {result['efficiency']:.2f}; "
        f"all-reduce (waiting included) {result['all_reduce_ms']:.1f} ms = {100 * result['all_reduce_share']:.1f} % "
        "of the step"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), **result}, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
