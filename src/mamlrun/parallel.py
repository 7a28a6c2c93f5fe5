"""Data-parallel meta-learning on ``torch.distributed``: one meta-batch shared by several processes.

``torchrun --standalone --nproc_per_node=N -m mamlrun <overrides>`` (or a multi-node ``torchrun``
rendezvous, or one SLURM task per rank) starts N copies of the same command. Every rank samples
the same seeded meta-batch a single process would, computes the meta-gradient of its contiguous
share of the tasks, and the shares' meta-gradients are averaged (one ``all_reduce``) before the
optimizer step, which every rank then takes identically: N ranks follow the single process's
parameters up to floating-point summation order. Validation and test tasks are sharded the same
way and gathered. Rank 0 alone claims the run directory and writes checkpoints, metrics, W&B and
figures; the others learn the directory from it.

The backend is ``nccl`` on GPUs and ``gloo`` on CPUs; collectives time out after
``hardware.timeout_s``, so a rank that dies ends the job instead of hanging it.

Everything here is a no-op in a single process (``world_size() == 1``).

References:
    Li et al. "PyTorch Distributed: Experiences on Accelerating Data Parallel Training." VLDB 2020
    (gradient averaging by all-reduce, as ``DistributedDataParallel`` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from mamlrun.errors import MamlrunError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

# Where a SLURM job step says what torchrun would (one task per rank).
SLURM_ENV = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"}


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes sharing each meta-batch (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


_ALONE = False  # inside alone(): this process runs collectives with no one


def distributed() -> bool:
    """Whether this process is one of several (after :func:`adopt_slurm_environment`), outside :func:`alone`."""
    return world_size() > 1 and not _ALONE


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within: this process computes as if it were the only one (no collectives).

    For work that rank 0 does by itself, such as drawing figures from rollouts, while the other
    ranks have finished: a collective there would wait for ranks that are gone.
    """
    global _ALONE
    previous, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = previous


def adopt_slurm_environment() -> None:
    """Read the ranks of a SLURM job step of several tasks (``srun``) when torchrun's variables are absent.

    The rendezvous address is the job's first node (``MASTER_ADDR``) unless given; ``MASTER_PORT``
    defaults to a port derived from the job id.
    """
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2 or "SLURM_PROCID" not in os.environ:
        return
    for ours, theirs in SLURM_ENV.items():
        os.environ[ours] = os.environ[theirs]
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        os.environ["MASTER_ADDR"] = _first_host(nodes)
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[01-04],cpu7`` -> ``gpu01``)."""
    head = nodelist.split(",")[0]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.split(",")[0].split("-")[0].rstrip("]")


def init(device_name: str, timeout_s: float) -> None:
    """Join the process group (``nccl`` on CUDA, ``gloo`` on CPU); one line if the backend is unavailable."""
    import torch
    import torch.distributed as dist

    if not distributed() or dist.is_initialized():
        return
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if not dist.is_available() or not getattr(dist, f"is_{backend}_available")():
        where = "CUDA" if cuda else "CPU"
        raise MamlrunError(f"torch.distributed backend {backend} (for {where}) is not available in this torch build")
    if cuda:
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise MamlrunError(f"cannot join the distributed job ({first_line(exc)})") from None


def device(selected: torch.device) -> torch.device:
    """This rank's device: its own GPU (``LOCAL_RANK``) when ``selected`` is CUDA."""
    import torch

    if distributed() and selected.type == "cuda":
        return torch.device("cuda", local_rank())
    return selected


def _comm_device() -> torch.device:
    """Where collectives' tensors live: the rank's GPU under ``nccl``, else the CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# -- agreeing before the run ---------------------------------------------------------------------
def join(job, argv: list[str]) -> list[str]:
    """One rank of a distributed job: join the group; rank 0 claims the run directory for all.

    Args:
        job: the command's :class:`~mamlrun.validation.Plan` (validated on every rank).
        argv: the command's arguments, which must be the same on every rank.

    Returns the overrides that point this rank's Hydra at the shared run directory; ranks other
    than 0 write no Hydra files there (rank 0 writes everything a run writes).
    """
    from mamlrun.validation import claim_run_dir

    if job.multirun:
        raise MamlrunError("a distributed job runs one configuration; send sweeps through hydra/launcher=...")
    init(job.base.hardware.device, float(job.base.hardware.timeout_s))
    check_same_command(argv)
    extra = decided_by_rank0(lambda: claim_run_dir(job)[2])
    if rank() != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    return extra


def peer_failed(exc: BaseException) -> str | None:
    """One line when ``exc`` is a collective that failed because another rank died or timed out."""
    import torch.distributed as dist

    if not distributed() or not isinstance(exc, (dist.DistError, RuntimeError)):
        return None
    text = first_line(exc)
    if isinstance(exc, dist.DistError) or any(k in text.lower() for k in ("gloo", "nccl", "connection", "timed out")):
        return f"rank {rank()}: another process of the distributed job failed or timed out ({text})"
    return None


def broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank (others pass ``None``)."""
    import torch
    import torch.distributed as dist

    where = _comm_device()
    data = torch.tensor(list((text or "").encode()) if rank() == 0 else [], dtype=torch.uint8, device=where)
    size = torch.tensor([data.numel()], dtype=torch.long, device=where)
    dist.broadcast(size, 0)
    if rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8, device=where)
    dist.broadcast(data, 0)
    return bytes(data.tolist()).decode()


def decided_by_rank0(decide) -> object:
    """Run ``decide()`` on rank 0 and return its JSON-able result on every rank.

    A :class:`MamlrunError` on rank 0 is raised on every rank, so a bad command fails everywhere
    with the same line instead of leaving the other ranks waiting.
    """
    outcome = None
    if rank() == 0:
        try:
            outcome = {"ok": decide()}
        except MamlrunError as exc:
            outcome = {"error": str(exc)}
    outcome = json.loads(broadcast_text(json.dumps(outcome) if rank() == 0 else None))
    if "error" in outcome:
        raise MamlrunError(outcome["error"])
    return outcome["ok"]


def check_same_command(argv: list[str]) -> None:
    """Every rank must run the same command: one line on every rank when they differ."""
    import torch
    import torch.distributed as dist

    digest = hashlib.sha256(json.dumps(argv).encode()).digest()[:8]
    mine = torch.tensor(list(digest), dtype=torch.long, device=_comm_device())
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    differing = [r for r, p in enumerate(parts) if not torch.equal(p, parts[0])]
    if differing:
        raise MamlrunError(
            f"the processes of the distributed job run different commands (rank 0 differs from rank {differing[0]}); "
            "start every rank with the same overrides"
        )


# -- inside the training loop ----------------------------------------------------------------------
def share(num_tasks: int, of_rank: int | None = None) -> slice:
    """The contiguous share of ``num_tasks`` tasks of this rank (or ``of_rank``); sizes differ by at most one."""
    r = rank() if of_rank is None else of_rank
    base, extra = divmod(num_tasks, world_size())
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def average_gradients(module: nn.Module) -> None:
    """Replace every ``.grad`` of ``module`` by its mean over ranks (one flat ``all_reduce``)."""
    import torch
    import torch.distributed as dist

    if not distributed():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def average(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalars averaged over ranks (training statistics of equal shares)."""
    import torch
    import torch.distributed as dist

    if not distributed() or not values:
        return values
    flat = torch.stack([v.detach().reshape(()).to(torch.float64) for v in values.values()])
    dist.all_reduce(flat)
    flat /= world_size()
    return {k: flat[i].to(v.dtype) for i, (k, v) in enumerate(values.items())}


def mean(value: torch.Tensor) -> torch.Tensor:
    """A tensor averaged over ranks (a differentiable quantity's value or gradient: not in place)."""
    import torch.distributed as dist

    if not distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def gather_tasks(values: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Per-task values ``[..., share]`` of every rank, concatenated in task order: ``[..., num_tasks]``."""
    import torch
    import torch.distributed as dist

    if not distributed():
        return values
    width = -(-num_tasks // world_size())
    padded = values.new_zeros(*values.shape[:-1], width)
    padded[..., : values.shape[-1]] = values
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    sizes = [len(range(num_tasks)[share(num_tasks, r)]) for r in range(world_size())]
    return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so that all ranks stop at the same iteration)."""
    import torch
    import torch.distributed as dist

    if not distributed():
        return flag
    value = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (after rank 0 wrote a file the others read)."""
    import torch.distributed as dist

    if distributed() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
