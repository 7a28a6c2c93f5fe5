"""``make bench``: meta-iterations/s and peak memory of the engine against other implementations.

Every implementation computes the same second-order meta-gradient for the same model and task
batch, in one process and one run: learn2learn's MAML (when installed: ``make install-l2l``),
higher, a plain per-task autograd loop, and the engine with each strategy. The table reports time
per meta-iteration, the ratio against learn2learn (the reference), peak memory, and the largest
difference between each meta-gradient and the reference's (a check that the speed is not bought
with a different computation). Benchmarks report; they never fail.

The meta-RL update is compared in :mod:`mamlrun.rl.bench`.

Usage: ``python -m mamlrun.bench [--cases sinusoid,omniglot_5w1s] [--device cpu] [--seconds 5]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlrun.algorithms import MAML
from mamlrun.data.tasks import TaskBatch
from mamlrun.models import MLP, Conv4
from mamlrun.reproduce import SMALL_OMNIGLOT


@dataclass
class Case:
    """One benchmark shape: a network, a task batch and the recipe's inner loop."""

    name: str
    model: Callable[[], nn.Module]
    batch: Callable[[torch.device], TaskBatch]
    task_type: str
    inner_lr: float
    inner_steps: int


def _sinusoid_batch(device, tasks=25, shots=5) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    amp, phase = torch.rand(tasks, 1, 1, generator=g) * 4.9 + 0.1, torch.rand(tasks, 1, 1, generator=g) * 3.14
    xs, xq = (torch.rand(tasks, shots, 1, generator=g) * 10 - 5 for _ in range(2))
    return TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)).to(device=device)


def _image_batch(device, tasks, ways, shots, query, size=28) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(tasks, ways * shots, 1, size, size, generator=g)
    xq = torch.rand(tasks, ways * query, 1, size, size, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(query).repeat(tasks, 1)
    return TaskBatch(xs, ys, xq, yq).to(device=device)


CASES = {
    "sinusoid": Case(
        "sinusoid (MLP 40-40, meta-batch 25, K=5, 1 step)",
        lambda: MLP((1,), 1),
        _sinusoid_batch,
        "regression",
        0.01,
        1,
    ),
    "omniglot_5w1s": Case(
        "omniglot 5w1s (conv4-64, meta-batch 32, 1+1 per class, 1 step)",
        lambda: Conv4((1, 28, 28), 5),
        lambda d: _image_batch(d, 32, 5, 1, 1),
        "classification",
        0.4,
        1,
    ),
    "omniglot_5w1s_q15": Case(
        "omniglot 5w1s, 15 query per class",
        lambda: Conv4((1, 28, 28), 5),
        lambda d: _image_batch(d, 32, 5, 1, 15),
        "classification",
        0.4,
        1,
    ),
    "omniglot_20w1s": Case(
        "omniglot 20w1s (conv4-64, meta-batch 16, 1+1 per class, 5 steps)",
        lambda: Conv4((1, 28, 28), 20),
        lambda d: _image_batch(d, 16, 20, 1, 1),
        "classification",
        0.1,
        5,
    ),
}


# -- implementations: each returns a function computing one meta-gradient into model .grad -------
def engine(strategy: str):
    def make(model: nn.Module, case: Case):
        learner = MAML(model, case.task_type, case.inner_lr, case.inner_steps, case.inner_steps, strategy=strategy)
        return learner.meta_gradient, learner

    return make


def per_task_loop(model: nn.Module, case: Case):
    """The textbook implementation: one task at a time, ``autograd.grad(create_graph=True)``."""
    names = [n for n, _ in model.named_parameters()]
    lossf = F.cross_entropy if case.task_type == "classification" else F.mse_loss

    def step(batch: TaskBatch):
        theta = list(model.parameters())
        for t in range(batch.num_tasks):
            params = theta
            for _ in range(case.inner_steps):
                out = functional_call(model, dict(zip(names, params)), (batch.x_support[t],))
                grads = torch.autograd.grad(lossf(out, batch.y_support[t]), params, create_graph=True)
                params = [p - case.inner_lr * g for p, g in zip(params, grads)]
            out = functional_call(model, dict(zip(names, params)), (batch.x_query[t],))
            (lossf(out, batch.y_query[t]) / batch.num_tasks).backward()

    return step, None


def learn2learn_maml(model: nn.Module, case: Case):
    """learn2learn's ``MAML`` with ``clone()``/``adapt()`` per task, as its examples train."""
    from mamlrun.algorithms.l2l import import_learn2learn

    wrapper = import_learn2learn().algorithms.MAML(model, lr=case.inner_lr)
    lossf = F.cross_entropy if case.task_type == "classification" else F.mse_loss

    def step(batch: TaskBatch):
        for t in range(batch.num_tasks):
            learner = wrapper.clone()
            for _ in range(case.inner_steps):
                learner.adapt(lossf(learner(batch.x_support[t]), batch.y_support[t]))
            (lossf(learner(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()

    return step, None


def higher_maml(model: nn.Module, case: Case):
    """facebookresearch/higher's ``innerloop_ctx`` with a differentiable SGD, per task."""
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=case.inner_lr)
    lossf = F.cross_entropy if case.task_type == "classification" else F.mse_loss

    def step(batch: TaskBatch):
        for t in range(batch.num_tasks):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(case.inner_steps):
                    diffopt.step(lossf(fmodel(batch.x_support[t]), batch.y_support[t]))
                (lossf(fmodel(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()

    return step, None


IMPLEMENTATIONS: dict[str, Callable] = {
    "learn2learn": learn2learn_maml,
    "higher": higher_maml,
    "per-task loop": per_task_loop,
    "mamlrun vmap": engine("vmap"),
    "mamlrun batched": engine("batched"),
    "mamlrun loop": engine("loop"),
    "mamlrun auto": engine("auto"),
}
REFERENCE = "learn2learn"  # ratios are against it; without it installed, against the per-task loop


# -- measuring ------------------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # Linux: writing 5 to clear_refs resets the resident-set high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return 0
    return _rss_kib("VmRSS") * 1024


def _peak_bytes(device: torch.device, baseline: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    return max(0, _rss_kib("VmHWM") * 1024 - baseline)


def _rss_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(make, case: Case, device: torch.device, seconds: float, max_iters: int = 50) -> dict:
    torch.manual_seed(0)
    model = case.model().to(device)
    batch = case.batch(device)
    step, learner = make(model, case)
    model.zero_grad()
    step(batch)  # warm-up (and, for auto, the strategy calibration)
    grad = torch.cat([p.grad.flatten() for p in model.parameters()]).detach().cpu()
    baseline = _reset_peak(device)
    times = []
    _sync(device)
    started = time.perf_counter()
    while len(times) < max_iters and (time.perf_counter() - started < seconds or len(times) < 3):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "ms": median * 1e3,
        "its_per_s": 1 / median,
        "peak_mib": _peak_bytes(device, baseline) / 2**20,
        "iters": len(times),
        "grad": grad,
        "strategy": getattr(learner, "chosen_strategy", None) if learner is not None else None,
    }


def run(cases: list[str], device: torch.device, seconds: float, implementations: dict[str, Callable]) -> list[dict]:
    rows = []
    for key in cases:
        case = CASES[key]
        print(f"\n{case.name} on {device}", flush=True)
        results = {}
        for name, make in implementations.items():
            try:
                results[name] = measure(make, case, device, seconds)
            except Exception as exc:  # a peer failing on a shape is a result to report, not a crash
                print(f"  {name:<18} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)
                continue
            ref = results.get(REFERENCE) or results.get("per-task loop")
            r = results[name]
            r["speedup"] = ref["ms"] / r["ms"] if ref else float("nan")
            r["max_grad_diff"] = (r["grad"] - ref["grad"]).abs().max().item() if ref else float("nan")
            chosen = f" -> {r['strategy']}" if name.endswith("auto") else ""
            print(
                f"  {name:<18} {r['ms']:9.1f} ms/it {r['its_per_s']:8.2f} it/s  x{r['speedup']:5.2f} vs ref  "
                f"peak {r['peak_mib']:7.1f} MiB  |dgrad| {r['max_grad_diff']:.1e}{chosen}",
                flush=True,
            )
            rows.append(
                {
                    "case": key,
                    "implementation": name,
                    "device": str(device),
                    **{k: v for k, v in r.items() if k != "grad"},
                }
            )
    return rows


# -- end to end: data sampling included -------------------------------------------------------------
def end_to_end(root: Path, iterations: int, device: torch.device) -> list[dict]:
    """Omniglot 5w1s meta-training iterations/s, task sampling included: mamlrun against learn2learn's pipeline.

    Both train the paper's conv net with second-order MAML, meta-batch 32, 1 support and 1 query
    image per class, inner lr 0.4, one inner step, Adam 1e-3, on the same Omniglot archives.
    mamlrun samples whole meta-batches from the decoded uint8 array on the device; the
    learn2learn loop is the way its Omniglot example trains: ``MetaDataset`` / ``TaskDataset`` with
    NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels and RandomClassRotation, images decoded
    from PNG per item (as torchvision datasets do), one ``clone()``/``adapt()`` per task.
    """
    from mamlrun.data.omniglot import Omniglot, find_characters

    rows = []
    print(f"\nend to end: omniglot 5w1s, meta-batch 32, data from {root}", flush=True)
    split = [1100, 100, 423] if len(find_characters(root)[0]) >= 1623 else [0.6, 0.2, 0.2]
    sampler = Omniglot(root, ways=5, shots=1, query_shots=1, split=split).to(device)
    torch.manual_seed(0)
    learner = MAML(Conv4((1, 28, 28), 5), "classification", 0.4, 1, 3).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        optimizer.zero_grad()
        learner.meta_gradient(sampler.sample(32, "train", gen))
        optimizer.step()

    rows.append(_time_loop("mamlrun", ours, iterations, device, learner.chosen_strategy))
    try:
        step = _learn2learn_loop(root, device)
    except Exception as exc:  # learn2learn not installed, or its pipeline failing here: report it
        print(
            f"  {'learn2learn':<18} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}",
            flush=True,
        )
        return rows
    rows.append(_time_loop("learn2learn", step, iterations, device, None))
    rows[0]["speedup"] = rows[1]["ms"] / rows[0]["ms"]
    print(f"  mamlrun / learn2learn end to end: x{rows[0]['speedup']:.2f}", flush=True)
    return rows


def _time_loop(name: str, step: Callable[[], None], iterations: int, device: torch.device, strategy) -> dict:
    step()  # warm-up (and strategy calibration)
    _sync(device)
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    ms = (time.perf_counter() - started) / iterations * 1e3
    note = f" (strategy {strategy})" if strategy else ""
    print(f"  {name:<18} {ms:9.1f} ms/it {1e3 / ms:8.2f} it/s  {32e3 / ms:7.1f} tasks/s{note}", flush=True)
    return {
        "case": "omniglot_5w1s_end_to_end",
        "implementation": name,
        "device": str(device),
        "ms": ms,
        "its_per_s": 1e3 / ms,
    }


def _learn2learn_loop(root: Path, device: torch.device) -> Callable[[], None]:
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from mamlrun.algorithms.l2l import import_learn2learn
    from mamlrun.data.omniglot import find_characters

    l2l = import_learn2learn()
    characters, _ = find_characters(root)
    # The PNG bytes in memory (as a page cache would hold them); decoding happens per item, as in torchvision.
    readers = {
        src: zipfile.ZipFile(src) if src.suffix == ".zip" else _Folder(src)
        for images in characters.values()
        for src, _ in images
    }
    items = [
        (readers[src].read(member), label)
        for label, key in enumerate(sorted(characters))
        for src, member in characters[key]
    ]
    for reader in readers.values():
        reader.close()

    class PngDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            raw, label = items[i]
            with Image.open(io.BytesIO(raw)) as im:
                small = im.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
            return torch.from_numpy(1.0 - np.asarray(small, dtype=np.float32) / 255).unsqueeze(0), label

    dataset = l2l.data.MetaDataset(PngDataset())
    t = l2l.data.transforms
    taskset = l2l.data.TaskDataset(
        dataset,
        task_transforms=[
            t.NWays(dataset, 5),
            t.KShots(dataset, 2),
            t.LoadData(dataset),
            t.RemapLabels(dataset),
            t.ConsecutiveLabels(dataset),
            l2l.vision.transforms.RandomClassRotation(dataset, [0.0, 90.0, 180.0, 270.0]),
        ],
        num_tasks=20000,
    )
    torch.manual_seed(0)
    maml = l2l.algorithms.MAML(Conv4((1, 28, 28), 5).to(device), lr=0.4)
    optimizer = torch.optim.Adam(maml.parameters(), 1e-3)

    def step():
        optimizer.zero_grad()
        for _ in range(32):
            x, y = taskset.sample()
            x, y = x.to(device), y.to(device)
            support = torch.zeros(len(x), dtype=torch.bool)
            support[::2] = True
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(x[support]), y[support]))
            (F.cross_entropy(learner(x[~support]), y[~support]) / 32).backward()
        optimizer.step()

    return step


class _Folder:
    """``zipfile.ZipFile``'s ``read`` and ``close`` for a plain folder."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, member: str) -> bytes:
        return (self.root / member).read_bytes()

    def close(self) -> None:
        pass


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="sinusoid,omniglot_5w1s,omniglot_5w1s_q15,omniglot_20w1s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per implementation and case")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bench.json"))
    parser.add_argument("--e2e-iterations", type=int, default=10, help="end-to-end Omniglot iterations (0: skip)")
    parser.add_argument("--omniglot", type=Path, help="Omniglot folder for the end-to-end comparison")
    parser.add_argument("--rl-repeats", type=int, default=2, help="timed MAML-TRPO meta-updates (0: skip)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    env = environment()
    print("mamlrun bench:", ", ".join(f"{k}={v}" for k, v in env.items() if v is not None))
    rows = run(args.cases.split(","), device, args.seconds, IMPLEMENTATIONS) if args.cases else []
    if args.e2e_iterations:
        root = args.omniglot or next((p for p in (Path("data/omniglot"), SMALL_OMNIGLOT) if p.is_dir()), None)
        if root is None:
            print("\nend to end: skipped, no Omniglot data (give --omniglot <folder>)")
        else:
            rows += end_to_end(root, args.e2e_iterations, device)
    if args.rl_repeats:
        from mamlrun.rl.bench import rl_update

        rows += rl_update(args.rl_repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
