"""``make bench``: the engine's speed against learn2learn, as its users run it, in one interleaved run.

Every implementation computes the same second-order meta-gradient for the same parameters and task
batch, in one process: learn2learn's MAML (when installed: ``make install-l2l``) with ``clone()`` /
``adapt()`` per task over the network its users train (for Omniglot its ``OmniglotCNN``: the same
conv net with torch's fused ``nn.BatchNorm2d`` in training mode), higher, a plain per-task autograd
loop, and the engine with each strategy. Implementations are timed *round by round* (one
meta-iteration of each per round), so a change in machine load hits them all alike; the table shows
median times, the median of the per-round time ratios against learn2learn (the reference), peak
memory, the largest difference between each meta-gradient and the reference's (a check that the
speed is not bought with a different computation), and the achieved GFLOP/s (matrix-multiply and
convolution FLOPs of one meta-iteration, counted by ``torch.utils.flop_counter`` on the reference) as a fraction of
the fp32 matrix-multiply peak that the bench measures first on the same threads. Benchmarks report;
they never fail.

The four headline ratios (engine with ``hardware.strategy=auto`` against learn2learn) close the
report: Omniglot 5-way 1-shot with meta-batch 32 (model compute, and end to end with task sampling
against learn2learn's own example loop), the same with 15 query images per class, and 20-way 1-shot
with meta-batch 16 and 5 inner steps. The meta-RL update is compared in :mod:`mamlrun.rl.bench`.

Usage: ``python -m mamlrun.bench [--cases sinusoid,omniglot_5w1s] [--device cpu] [--seconds 4] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from mamlrun.algorithms import ANIL, MAML, Algorithm, MAMLPlusPlus
from mamlrun.algorithms.bmaml import BMAML
from mamlrun.algorithms.emaml import EMAML
from mamlrun.algorithms.leo import LEO
from mamlrun.algorithms.platipus import PLATIPUS
from mamlrun.data.tasks import TaskBatch
from mamlrun.learner import MetaLearner
from mamlrun.models import MLP, Conv4
from mamlrun.models.layers import BatchNorm
from mamlrun.objectives import Classification, Objective, Regression
from mamlrun.paths import small_omniglot


@dataclass
class Case:
    """One benchmark shape: a network, a task batch and the recipe's inner loop."""

    name: str
    model: Callable[[], nn.Module]
    batch: Callable[[torch.device], TaskBatch]
    objective: Objective
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
        Regression(),
        0.01,
        1,
    ),
    "omniglot_5w1s": Case(
        "omniglot 5w1s (conv4-64, meta-batch 32, 1+1 per class, 1 step)",
        lambda: Conv4((1, 28, 28), 5),
        lambda d: _image_batch(d, 32, 5, 1, 1),
        Classification(),
        0.4,
        1,
    ),
    "omniglot_5w1s_q15": Case(
        "omniglot 5w1s, 15 query per class",
        lambda: Conv4((1, 28, 28), 5),
        lambda d: _image_batch(d, 32, 5, 1, 15),
        Classification(),
        0.4,
        1,
    ),
    "omniglot_noconv_5w1s": Case(
        "omniglot no-conv 5w1s (MLP 256-128-64-64 + BN, meta-batch 32, 1+1 per class, 1 step)",
        lambda: MLP((1, 28, 28), 5, hidden=(256, 128, 64, 64), batch_norm=True),
        lambda d: _image_batch(d, 32, 5, 1, 1),
        Classification(),
        0.4,
        1,
    ),
    "omniglot_20w1s": Case(
        "omniglot 20w1s (conv4-64, meta-batch 16, 1+1 per class, 5 steps)",
        lambda: Conv4((1, 28, 28), 20),
        lambda d: _image_batch(d, 16, 20, 1, 1),
        Classification(),
        0.1,
        5,
    ),
}


# -- implementations: each computes one meta-gradient into its network's .grad ------------------
@dataclass
class Impl:
    """A ready implementation: ``step(batch)`` accumulates the meta-gradient; ``grad()`` reads it.

    ``grad()`` returns the meta-gradient flattened in the order of the mamlrun model's parameters
    (learn2learn's network names its parameters differently), so implementations compare entry by entry.
    """

    step: Callable[[TaskBatch], None]
    grad: Callable[[], torch.Tensor]
    zero: Callable[[], None]
    learner: object = None


def _plain(model: nn.Module, step, learner=None) -> Impl:
    return Impl(
        step,
        lambda: (
            torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
            .detach()
            .cpu()
        ),
        lambda: model.zero_grad(set_to_none=True),
        learner,
    )


def engine(strategy: str, algorithm: Callable[..., Algorithm] = MAML, **options):
    """The engine with ``strategy`` running ``algorithm`` (built with the case's inner loop and ``options``)."""

    def make(model: nn.Module, case: Case) -> Impl:
        hooks = algorithm(case.inner_lr, case.inner_steps, case.inner_steps, **options)
        learner = MetaLearner(model, hooks, case, strategy=strategy)
        return _plain(learner, learner.meta_gradient, learner)

    return make


def per_task_loop(model: nn.Module, case: Case) -> Impl:
    """The textbook implementation: one task at a time, ``autograd.grad(create_graph=True)``."""
    names = [n for n, _ in model.named_parameters()]
    lossf = case.objective.loss

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

    return _plain(model, step)


def learn2learn_network(model: nn.Module, case: Case) -> tuple[nn.Module, list[nn.Parameter]]:
    """The network learn2learn's users meta-train for ``case``, holding ``model``'s parameter values.

    For the Omniglot conv net, learn2learn's own ``OmniglotCNN`` (stride-2 3x3 convolutions, torch's
    ``nn.BatchNorm2d`` in training mode, spatial mean, linear head: the paper's net, as mamlrun's
    ``Conv4``); for the no-conv Omniglot MLP its ``OmniglotFC`` (``nn.BatchNorm1d``, with mamlrun's
    batch-norm epsilon so that both compute the same function); otherwise ``model`` itself (no batch
    norm). Also returns the network's parameters in the order of ``model.parameters()``.
    """
    from mamlrun.algorithms.l2l import import_learn2learn

    models = import_learn2learn().vision.models
    device = next(model.parameters()).device
    if isinstance(model, Conv4) and model.pool == "stride":
        net = models.OmniglotCNN(model.head.out_features, model.head.in_features)

        def target(module: str) -> str:  # features.<3k> is block k's convolution, features.<3k+1> its batch norm
            index = int(module.split(".")[1])
            return f"base.{index // 3}.{'conv' if index % 3 == 0 else 'normalize'}"

    elif isinstance(model, MLP) and any(isinstance(m, BatchNorm) for m in model):
        linears = [m for m in model if isinstance(m, nn.Linear)]
        net = models.OmniglotFC(
            linears[0].in_features, linears[-1].out_features, [m.out_features for m in linears[:-1]]
        )
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.eps = next(b for b in model if isinstance(b, BatchNorm)).eps
        # MLP children: Flatten, then [Linear, BatchNorm, ReLU] per hidden layer (indices 1 + 3k, 2 + 3k), Linear.
        head = len(model) - 1

        def target(module: str) -> str:
            index = int(module)
            if index == head:
                return "classifier"
            return f"features.1.{(index - 1) // 3}.{'linear' if (index - 1) % 3 == 0 else 'normalize'}"

    else:
        return model, list(model.parameters())
    net = net.to(device)
    theirs = dict(net.named_parameters())
    order = []
    for name, p in model.named_parameters():
        module, field = name.rsplit(".", 1)
        mapped = f"classifier.{field}" if module == "head" else f"{target(module)}.{field}"
        with torch.no_grad():
            theirs[mapped].copy_(p)
        order.append(theirs[mapped])
    assert len(order) == len(theirs), "learn2learn's network and mamlrun's differ in their parameters"
    return net, order


def learn2learn_maml(model: nn.Module, case: Case) -> Impl:
    """learn2learn's ``MAML`` with ``clone()``/``adapt()`` per task over its users' network."""
    from mamlrun.algorithms.l2l import import_learn2learn

    net, order = learn2learn_network(model, case)
    wrapper = import_learn2learn().algorithms.MAML(net, lr=case.inner_lr)
    lossf = case.objective.loss

    def step(batch: TaskBatch):
        for t in range(batch.num_tasks):
            learner = wrapper.clone()
            for _ in range(case.inner_steps):
                learner.adapt(lossf(learner(batch.x_support[t]), batch.y_support[t]))
            (lossf(learner(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()

    return Impl(
        step,
        lambda: torch.cat([p.grad.flatten() for p in order]).detach().cpu(),
        lambda: net.zero_grad(set_to_none=True),
    )


def higher_maml(model: nn.Module, case: Case) -> Impl:
    """facebookresearch/higher's ``innerloop_ctx`` with a differentiable SGD, per task."""
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=case.inner_lr)
    lossf = case.objective.loss

    def step(batch: TaskBatch):
        for t in range(batch.num_tasks):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(case.inner_steps):
                    diffopt.step(lossf(fmodel(batch.x_support[t]), batch.y_support[t]))
                (lossf(fmodel(batch.x_query[t]), batch.y_query[t]) / batch.num_tasks).backward()

    return _plain(model, step)


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
# Algorithms on the engine (strategy auto), timed against second-order MAML on the same shapes.
ALGORITHMS: dict[str, Callable] = {
    "MAML": engine("auto"),
    "first-order MAML": engine("auto", first_order=True),
    "ANIL": engine("auto", ANIL),
    "MAML++ (MSL, LSLR, BNRS/BNWB)": engine("auto", MAMLPlusPlus),
    "EMAML (5 particles)": engine("auto", EMAML, particles=5),
    "BMAML (5 particles, chaser)": engine("auto", BMAML, particles=5),
    "PLATIPUS (1 sample)": engine("auto", PLATIPUS),
    "LEO (5 fine-tuning steps)": engine("auto", LEO),
}
HEADLINE = "mamlrun auto"  # what a user gets by default
TARGETS = {  # case -> the ratio against learn2learn the engine aims for
    "omniglot_5w1s": 3.0,
    "omniglot_5w1s_end_to_end": 4.0,
    "omniglot_5w1s_q15": 2.5,
    "omniglot_20w1s": 2.5,
}


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


def peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The fp32 matrix-multiply rate on ``device`` with the current threads: best of ``repeats`` sgemms."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def count_flops(impl: Impl, batch: TaskBatch) -> float:
    """Matrix-multiply and convolution FLOPs of one meta-iteration (``torch.utils.flop_counter``)."""
    impl.zero()
    with FlopCounterMode(display=False) as counter:
        impl.step(batch)
    return float(counter.get_total_flops())


def measure(
    makers: dict[str, Callable], case: Case, device: torch.device, seconds: float, max_rounds: int = 50
) -> dict[str, dict]:
    """Time ``makers`` on ``case`` round by round: one meta-iteration of each per round.

    Each implementation gets its own copy of the same initial parameters and one warm-up call (its
    gradient is the one compared). Rounds run until ``seconds`` per implementation are spent (at
    least 3). Returns per implementation the median time, the per-round times, peak memory, FLOPs
    and the meta-gradient; an implementation that fails is reported and left out.
    """
    batch = case.batch(device)
    impls, results = {}, {}
    for name, make in makers.items():
        try:
            torch.manual_seed(0)
            impl = make(case.model().to(device), case)
            impl.zero()
            baseline = _reset_peak(device)
            impl.step(batch)  # warm-up
            _sync(device)
            peak = _peak_bytes(device, baseline)
            grad = impl.grad()
            # Every implementation does the same arithmetic: count it once, on an ungrouped one
            # (torch's FLOP counter overcounts the backward of grouped convolutions by the group count).
            flops = count_flops(impl, batch) if name in (REFERENCE, "per-task loop") else None
        except Exception as exc:  # a peer failing on a shape is a result to report, not a crash
            print(f"  {name:<18} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)
            continue
        impls[name] = impl
        strategy = getattr(impl.learner, "strategy_name", None)
        results[name] = {"peak_mib": peak / 2**20, "grad": grad, "gflop": flops, "times": []}
        if strategy:
            results[name]["strategy"] = strategy
    started = time.perf_counter()
    budget = seconds * max(1, len(impls))
    for _ in range(max_rounds):
        if time.perf_counter() - started > budget and len(next(iter(results.values()), {"times": []})["times"]) >= 3:
            break
        for name, impl in impls.items():
            impl.zero()
            _sync(device)
            t0 = time.perf_counter()
            impl.step(batch)
            _sync(device)
            results[name]["times"].append(time.perf_counter() - t0)
    counted = [r["gflop"] for r in results.values() if r["gflop"] is not None]
    for r in results.values():
        r["gflop"] = counted[0] / 1e9 if counted else float("nan")
        r["ms"] = statistics.median(r["times"]) * 1e3
        r["its_per_s"] = 1e3 / r["ms"]
        r["rounds"] = len(r["times"])
    return results


def run(
    cases: list[str], device: torch.device, seconds: float, implementations: dict[str, Callable], peak: float
) -> list[dict]:
    rows = []
    for key in cases:
        case = CASES[key]
        print(f"\n{case.name} on {device}", flush=True)
        results = measure(implementations, case, device, seconds)
        ref_name = REFERENCE if REFERENCE in results else "per-task loop"
        ref = results.get(ref_name)
        for name, r in results.items():
            # The median of per-round ratios: each compares two timings taken moments apart.
            r["speedup"] = statistics.median(a / b for a, b in zip(ref["times"], r["times"])) if ref else float("nan")
            r["reference"] = ref_name if ref else None
            r["max_grad_diff"] = (r["grad"] - ref["grad"]).abs().max().item() if ref else float("nan")
            r["gflops"] = r["gflop"] / (r["ms"] / 1e3)
            r["peak_fraction"] = r["gflops"] / peak if peak else float("nan")
            chosen = f" -> {r['strategy']}" if name.endswith("auto") else ""
            print(
                f"  {name:<18} {r['ms']:9.1f} ms/it  x{r['speedup']:5.2f} vs ref  "
                f"{r['gflop']:6.2f} GFLOP {r['gflops']:6.1f} GFLOP/s ({100 * r['peak_fraction']:4.1f} % of peak)  "
                f"peak {r['peak_mib']:7.1f} MiB  |dgrad| {r['max_grad_diff']:.1e}{chosen}",
                flush=True,
            )
            rows.append(
                {
                    "case": key,
                    "implementation": name,
                    "device": str(device),
                    **{k: v for k, v in r.items() if k not in ("grad", "times")},
                    "times_ms": [t * 1e3 for t in r["times"]],
                }
            )
    return rows


def algorithm_costs(cases: list[str], device: torch.device, seconds: float) -> list[dict]:
    """Milliseconds per meta-iteration of each algorithm against second-order MAML (interleaved rounds)."""
    rows = []
    for key in cases:
        case = CASES[key]
        print(f"\nalgorithms on {case.name}, {device}: ms per meta-iteration", flush=True)
        results = measure(ALGORITHMS, case, device, seconds)
        ref = results.get("MAML")
        for name, r in results.items():
            ratio = statistics.median(b / a for a, b in zip(ref["times"], r["times"])) if ref else float("nan")
            print(f"  {name:<30} {r['ms']:9.1f} ms/it  {ratio:5.2f}x MAML's time", flush=True)
            rows.append(
                {
                    "case": f"{key}_algorithms",
                    "implementation": name,
                    "device": str(device),
                    "ms": r["ms"],
                    "time_vs_maml": ratio,
                    "rounds": r["rounds"],
                    "peak_mib": r["peak_mib"],
                }
            )
    return rows


# -- end to end: data sampling included -------------------------------------------------------------
def end_to_end(root: Path, iterations: int, device: torch.device) -> list[dict]:
    """Omniglot 5w1s meta-training iterations/s, task sampling included: mamlrun against learn2learn's pipeline.

    Both train the paper's conv net with second-order MAML, meta-batch 32, 1 support and 1 query
    image per class, inner lr 0.4, one inner step, Adam 1e-3, on the same Omniglot archives.
    mamlrun (``hardware.strategy=auto``) samples whole meta-batches from the decoded uint8 array on
    the device; the learn2learn loop is the way its Omniglot example trains: ``MetaDataset`` /
    ``TaskDataset`` with NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels and
    RandomClassRotation, images decoded from PNG per item (as torchvision datasets do), its
    ``OmniglotCNN`` (torch ``nn.BatchNorm2d``), one ``clone()``/``adapt()`` per task. The two
    alternate iteration by iteration; the ratio is the median of the per-pair ratios.
    """
    from mamlrun.data.omniglot import Omniglot, find_characters

    rows = []
    print(f"\nend to end: omniglot 5w1s, meta-batch 32, data from {root}", flush=True)
    split = [1100, 100, 423] if len(find_characters(root)[0]) >= 1623 else [0.6, 0.2, 0.2]
    sampler = Omniglot(root, ways=5, shots=1, query_shots=1, split=split).to(device)
    torch.manual_seed(0)
    learner = MetaLearner(Conv4((1, 28, 28), 5), MAML(0.4, 1, 3), sampler).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        optimizer.zero_grad()
        learner.meta_gradient(sampler.sample(32, "train", gen))
        optimizer.step()

    steps = {"mamlrun": ours}
    try:
        steps["learn2learn"] = _learn2learn_loop(root, device)
    except Exception as exc:  # learn2learn not installed, or its pipeline failing here: report it
        print(f"  {'learn2learn':<18} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)
    times = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(iterations):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        note = f" (strategy {learner.strategy_name})" if name == "mamlrun" else ""
        print(f"  {name:<18} {ms:9.1f} ms/it {1e3 / ms:8.2f} it/s  {32e3 / ms:7.1f} tasks/s{note}", flush=True)
        rows.append(
            {
                "case": "omniglot_5w1s_end_to_end",
                "implementation": name,
                "device": str(device),
                "ms": ms,
                "its_per_s": 1e3 / ms,
                "rounds": len(ts),
                "times_ms": [t * 1e3 for t in ts],
            }
        )
    if "learn2learn" in times:
        rows[0]["speedup"] = statistics.median(a / b for a, b in zip(times["learn2learn"], times["mamlrun"]))
        rows[0]["reference"] = "learn2learn"
        rows[0]["strategy"] = learner.strategy_name
        print(f"  mamlrun / learn2learn end to end: x{rows[0]['speedup']:.2f}", flush=True)
    return rows


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
    maml = l2l.algorithms.MAML(l2l.vision.models.OmniglotCNN(5).to(device), lr=0.4)
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


def headline(rows: list[dict]) -> list[dict]:
    """The four ratios the engine is judged by: ``mamlrun auto`` (end to end: mamlrun) against learn2learn."""
    lines = []
    for case, target in TARGETS.items():
        name = "mamlrun" if case.endswith("end_to_end") else HEADLINE
        row = next((r for r in rows if r["case"] == case and r["implementation"] == name), None)
        if row is None or row.get("reference") != REFERENCE:
            continue
        lines.append(
            {
                "case": case,
                "speedup": row["speedup"],
                "target": target,
                "ms": row["ms"],
                "gflops": row.get("gflops"),
                "peak_fraction": row.get("peak_fraction"),
                "strategy": row.get("strategy"),
            }
        )
    if lines:
        print(f"\nmamlrun (hardware.strategy=auto) against {REFERENCE}, medians of interleaved rounds:")
        for line in lines:
            rate = (
                ""
                if line["gflops"] is None
                else f"  {line['gflops']:6.1f} GFLOP/s ({100 * line['peak_fraction']:.0f} % of peak)"
            )
            print(f"  {line['case']:<26} x{line['speedup']:5.2f}  (target x{line['target']:.1f}){rate}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default="sinusoid,omniglot_5w1s,omniglot_5w1s_q15,omniglot_20w1s,omniglot_noconv_5w1s"
    )
    parser.add_argument(
        "--implementations", help=f"comma-separated subset of: {', '.join(IMPLEMENTATIONS)} (default: all)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per implementation and case")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bench.json"))
    parser.add_argument(
        "--algorithm-cases",
        default="omniglot_5w1s,omniglot_20w1s",
        help="cases on which every algorithm of bench.ALGORITHMS is timed against MAML ('': skip)",
    )
    parser.add_argument("--e2e-iterations", type=int, default=10, help="end-to-end Omniglot iterations (0: skip)")
    parser.add_argument("--omniglot", type=Path, help="Omniglot folder for the end-to-end comparison")
    parser.add_argument("--rl-repeats", type=int, default=2, help="timed MAML-TRPO meta-updates (0: skip)")
    parser.add_argument(
        "--rl-sim-rounds", type=int, default=3, help="half-cheetah pool rollouts per sampler, interleaved (0: skip)"
    )
    parser.add_argument(
        "--rl-iterations", type=int, default=1, help="profiled half-cheetah MAML-TRPO meta-iterations (0: skip)"
    )
    parser.add_argument(
        "--rl-processes", type=int, default=0, help="simulator worker processes in the profiled iterations (0: threads)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    implementations = IMPLEMENTATIONS
    if args.implementations:
        wanted = [n.strip() for n in args.implementations.split(",")]
        unknown = [n for n in wanted if n not in IMPLEMENTATIONS]
        if unknown:
            parser.error(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
        implementations = {n: IMPLEMENTATIONS[n] for n in wanted}
    env = environment()
    print("mamlrun bench:", ", ".join(f"{k}={v}" for k, v in env.items() if v is not None))
    env["peak_gflops"] = peak_gflops(device)
    print(f"fp32 matrix-multiply peak here: {env['peak_gflops']:.1f} GFLOP/s (best of 5 sgemms 2048^3)", flush=True)
    rows = run(args.cases.split(","), device, args.seconds, implementations, env["peak_gflops"]) if args.cases else []
    if args.e2e_iterations:
        root = args.omniglot or next((p for p in (Path("data/omniglot"), small_omniglot()) if p and p.is_dir()), None)
        if root is None:
            print("\nend to end: skipped, no Omniglot data (give --omniglot <folder>)")
        else:
            rows += end_to_end(root, args.e2e_iterations, device)
    summary = headline(rows)
    if args.algorithm_cases:
        rows += algorithm_costs(args.algorithm_cases.split(","), device, args.seconds)
    if args.rl_repeats:
        from mamlrun.rl.bench import rl_update

        rows += rl_update(args.rl_repeats)
    if args.rl_sim_rounds:
        from mamlrun.rl.bench import sampler_speed

        rows += sampler_speed(args.rl_sim_rounds)
    for _ in range(args.rl_iterations):
        from mamlrun.rl.bench import iteration_profile

        rows += iteration_profile(processes=args.rl_processes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "headline": summary, "results": rows}, indent=2))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
