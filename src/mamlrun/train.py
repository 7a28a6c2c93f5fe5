"""The meta-train / validate / test loop, checkpoints and metrics.

The loop knows a learner (:class:`~mamlrun.learner.MetaLearner` or :class:`~mamlrun.rl.MetaRL`),
a task sampler, an optimizer with its learning-rate schedule, and a logger; nothing here names an
algorithm or a dataset. The trainer owns the optimizer step: every iteration it tells the learner
the iteration (``start_iteration``, which algorithms such as MAML++ anneal by), has it write the
meta-gradient, steps the optimizer and the schedule.
"""

from __future__ import annotations

import math
import pickle
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mamlrun import parallel
from mamlrun.data.tasks import TaskSampler
from mamlrun.errors import MamlrunError, first_line
from mamlrun.files import save_torch
from mamlrun.logging import MetricLogger
from mamlrun.parallel import rank

# Validation and test tasks come from their own seeded streams, so every validation sees the
# same tasks and test tasks never depend on how long training ran.
VAL_STREAM, TEST_STREAM = 1_000_003, 2_000_003
# What a checkpoint must hold to evaluate a model from it, and to resume training from it.
MODEL_KEYS = ("learner",)
RESUME_KEYS = ("iteration", "learner", "optimizer", "generator", "torch_rng", "best", "config")


@dataclass
class Schedule:
    """How long to train and how often to log, validate and checkpoint (0 disables)."""

    meta_iterations: int
    meta_batch_size: int
    log_every: int = 50
    val_every: int = 0
    val_tasks: int = 100
    checkpoint_every: int = 0
    test_tasks: int = 600
    eval_batch_size: int = 100
    seed: int = 0


def ci95(values: torch.Tensor) -> float:
    """Half-width of the 95 % confidence interval of the mean: ``1.96 * std / sqrt(n)``.

    References:
        Finn et al. 2017, appendix (600 test tasks, 95 % confidence intervals).
    """
    return 1.96 * values.std(unbiased=False).item() / math.sqrt(values.numel())


def evaluate(
    learner,
    sampler: TaskSampler,
    split: str,
    num_tasks: int,
    seed: int,
    batch_size: int = 100,
    steps: int | None = None,
) -> dict[str, float]:
    """Metrics after 0..steps inner updates on ``num_tasks`` tasks drawn from ``split``.

    Keys: ``{split}/{m}_step{k}`` and ``{split}/{m}_ci95_step{k}`` for every step ``k``, and
    ``{split}/{m}_mean`` and ``{split}/{m}_ci95`` at the last step, where ``m`` is ``mse`` for
    regression, ``acc`` (plus ``loss``) for classification and ``return`` for RL.
    """
    device = next(learner.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, num_tasks, batch_size):
        batch = sampler.sample(min(batch_size, num_tasks - start), split, gen)
        # Distributed: every rank draws the batch, evaluates its share, and gathers the others'.
        for name, values in learner.evaluate(own_share(batch), steps).items():
            parts.setdefault(name, []).append(parallel.gather_tasks(values.double(), batch.num_tasks).cpu())
    renamed = learner.objective.eval_names
    results = {renamed.get(k, k): torch.cat(v, dim=1) for k, v in parts.items()}
    metrics: dict[str, float] = {}
    for name, per_step in results.items():
        for k, values in enumerate(per_step):
            metrics[f"{split}/{name}_step{k}"] = values.mean().item()
            metrics[f"{split}/{name}_ci95_step{k}"] = ci95(values)
        metrics[f"{split}/{name}_mean"] = per_step[-1].mean().item()
        metrics[f"{split}/{name}_ci95"] = ci95(per_step[-1])
    return metrics


def own_share(batch):
    """This rank's contiguous share of a batch's tasks (the whole batch in a single process)."""
    return batch.part(parallel.share(batch.num_tasks)) if parallel.distributed() else batch


def objective_key(learner, split: str) -> tuple[str, bool]:
    """The metric that selects the best checkpoint and that sweepers optimise, and whether higher is better."""
    return f"{split}/{learner.objective.metric}_mean", learner.objective.higher_is_better


class Trainer:
    """Runs meta-training with periodic validation and checkpoints, then tests the best model.

    Checkpoints hold the meta-parameters, the optimizer, the iteration, the task-sampling
    generator and the global RNG state, so a resumed run continues the exact same stream of
    tasks and ends with the same parameters as one that never stopped.
    """

    def __init__(
        self,
        learner,
        sampler: TaskSampler,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        run_dir: str | Path,
        config: dict | None = None,
        progress: bool = True,
        lr_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.learner, self.sampler, self.optimizer, self.schedule = learner, sampler, optimizer, schedule
        self.lr_schedule = lr_schedule
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config = config or {}
        self.progress = progress and rank() == 0
        self.device = next(learner.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(schedule.seed)
        self.iteration = 0
        self.best: dict[str, float | int | None] = {"value": None, "iteration": None}
        # The first iteration with a non-finite loss (0: none yet), kept on the device.
        self.first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        # On the CPU the loss is already on the host: checking every iteration costs nothing.
        self.check_every_iteration = self.device.type == "cpu"
        self.val_key, self.higher_is_better = objective_key(learner, "val")

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "iteration": self.iteration,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule is not None else {},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": dict(self.best),
            "config": self.config,
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write a checkpoint atomically; a diverged run stops here instead of writing non-finite numbers."""
        path = self.ckpt_dir / name
        self.check_finite()
        state = (
            self.state()
            if name == "last.pt"
            else {"learner": self.learner.state_dict(), "config": self.config, "iteration": self.iteration}
        )
        # Every rank holds the same parameters: all of them check, rank 0 alone writes.
        if not all_finite([state["learner"], state.get("optimizer")]):
            raise self.diverged(f"non-finite parameters at iteration {self.iteration}")
        if rank() == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_torch(state, path)
        parallel.barrier()  # the others may read it next (test() loads best.pt)
        return path

    def restore(self) -> bool:
        """Load ``last.pt`` if there is one; return whether training resumes from it."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        state = read_checkpoint(path, RESUME_KEYS)
        changed = _config_diff(state.get("config") or {}, self.config)
        if changed:
            raise MamlrunError(f"cannot resume from {path}: the config differs in {', '.join(changed)}")
        try:
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_schedule is not None:
                self.lr_schedule.load_state_dict(state["lr_schedule"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.iteration, self.best = int(state["iteration"]), dict(state["best"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MamlrunError(f"cannot resume from {path}: it does not fit this run ({first_line(exc)})") from None
        return True

    # -- divergence ---------------------------------------------------------------------------
    def track_finite(self, stats: Mapping[str, torch.Tensor]) -> None:
        """Remember the first iteration whose statistics are not finite, on the device: no host sync."""
        finite = torch.stack([torch.isfinite(v).all().to(self.device) for v in stats.values()]).all()
        self.first_bad = torch.where(finite | (self.first_bad > 0), self.first_bad, self.iteration)

    def check_finite(self) -> None:
        """Raise if any iteration so far had a non-finite loss (reads the device flag: one sync)."""
        bad = int(self.first_bad)
        if bad:
            raise self.diverged(f"non-finite loss at iteration {bad}")

    def diverged(self, what: str) -> MamlrunError:
        """The error for a diverged run, naming the last good checkpoint it leaves behind."""
        last = self.ckpt_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        return MamlrunError(f"training diverged: {what} (lower optimizer.lr or inner_lr); {kept}")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, logger: MetricLogger) -> None:
        """Meta-train to ``schedule.meta_iterations``.

        SIGTERM (a scheduler's or a session's end, ``kill``) stops the run at the end of the current
        iteration with a checkpoint of that iteration, then raises :class:`KeyboardInterrupt`
        (the CLI's "interrupted; the resumable checkpoint is ..."): no work since the last
        periodic checkpoint is lost, and ``resume=true`` continues exactly.
        """
        stop: list[int] = []
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
        try:
            self._fit(logger, stop)
        finally:
            if handler is not None:
                signal.signal(signal.SIGTERM, handler)

    def _fit(self, logger: MetricLogger, stop: list[int]) -> None:
        s = self.schedule
        if self.iteration >= s.meta_iterations:
            return
        bar = tqdm(
            total=s.meta_iterations,
            initial=self.iteration,
            disable=not self.progress,
            desc="meta-train",
            dynamic_ncols=True,
            mininterval=0.5,
            unit="it",
        )
        window: list[dict[str, torch.Tensor]] = []
        started, start_iteration = time.perf_counter(), self.iteration
        while self.iteration < s.meta_iterations:
            batch = self.sampler.sample(s.meta_batch_size, "train", self.generator)
            window.append(self.step(own_share(batch)))
            self.iteration += 1
            self.track_finite(window[-1])
            bar.update(1)
            due = {
                name: every and self.iteration % every == 0
                for name, every in (("log", s.log_every), ("val", s.val_every), ("ckpt", s.checkpoint_every))
            }
            last = self.iteration == s.meta_iterations
            if self.check_every_iteration or due["log"] or due["val"] or due["ckpt"] or last:
                self.check_finite()  # before anything of this iteration is written
            if due["log"] or last:
                stats = {f"train/{k}": torch.stack([w[k] for w in window]).mean().item() for k in window[0]}
                window.clear()
                elapsed = time.perf_counter() - started
                stats["train/iters_per_s"] = (self.iteration - start_iteration) / max(elapsed, 1e-9)
                logger.log(stats, self.iteration)
                shown = getattr(self.learner, "progress_stat", "loss")
                bar.set_postfix({shown: f"{stats[f'train/{shown}']:.4f}"})
            if due["val"]:
                self.validate(logger)
            # All ranks stop at the same iteration, whichever got the signal.
            stopping = parallel.any_rank(bool(stop))
            if due["ckpt"] or self.iteration == s.meta_iterations or stopping:
                self.save()
            if stopping:
                bar.close()
                by = f"signal {stop[0]}" if stop else "a signal to another rank"
                raise KeyboardInterrupt(f"stopped by {by} at iteration {self.iteration}")
        bar.close()

    def step(self, batch) -> dict[str, torch.Tensor]:
        """One meta-iteration: the learner's meta-gradient, the optimizer's step, the schedule's step."""
        self.learner.start_iteration(self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.learner.meta_gradient(batch)
        # Distributed: the mean of the ranks' meta-gradients, the meta-batch's (equal shares).
        parallel.average_gradients(self.learner)
        stats = parallel.average(stats)
        update = self.optimizer.step(*self.learner.step_args())
        if isinstance(update, Mapping):  # an optimizer that reports its step (TRPO)
            stats = {**stats, **{k: torch.tensor(float(v)) for k, v in update.items()}}
        if self.lr_schedule is not None:
            self.lr_schedule.step()
        return stats

    def validate(self, logger: MetricLogger) -> dict[str, float]:
        s = self.schedule
        metrics = evaluate(self.learner, self.sampler, "val", s.val_tasks, s.seed + VAL_STREAM, s.eval_batch_size)
        value = metrics[self.val_key]
        best = self.best["value"]
        if not math.isfinite(value):
            # Evaluation ran more inner steps than training and diverged, or training is failing:
            # never the best checkpoint, and said, since the test then uses an earlier one.
            if parallel.rank() == 0:
                steps = self.learner.test_inner_steps
                print(
                    f"mamlrun: warning: {self.val_key} is {value} at iteration {self.iteration} "
                    f"(does adaptation diverge within {steps} inner steps?); not taken as the best checkpoint",
                    file=sys.stderr,
                    flush=True,
                )
        elif best is None or (value > best if self.higher_is_better else value < best):
            self.best = {"value": value, "iteration": self.iteration}
            self.save("best.pt")
        logger.log({k: v for k, v in metrics.items() if "ci95_step" not in k}, self.iteration)
        return metrics

    def test(self) -> dict[str, float]:
        """Test the best validated parameters (the last ones when validation never ran)."""
        s = self.schedule
        best_path = self.ckpt_dir / "best.pt"
        if self.best["iteration"] is not None and best_path.exists():
            self.learner.load_state_dict(read_checkpoint(best_path, MODEL_KEYS)["learner"])
        metrics = evaluate(self.learner, self.sampler, "test", s.test_tasks, s.seed + TEST_STREAM, s.eval_batch_size)
        metrics["test/checkpoint_iteration"] = self.best["iteration"] or self.iteration
        return metrics


# Keys a resumed run may change: how it logs, checkpoints and computes, and where its data lies,
# not what it trains (every strategy computes the same meta-gradient).
RESUMABLE_CHANGES = {
    "resume",
    "logger",
    "train",
    "hardware",
    "learner",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.download",
}
# Keys added or removed since a checkpoint was written, and the value a config without them means.
IMPLIED = {"schedule": {"_target_": None}, "algorithm.backend": "func", "debug": None}


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts (``RESUMABLE_CHANGES`` ignored)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if prefix + key in RESUMABLE_CHANGES:
            continue
        implied = IMPLIED.get(prefix + key)
        a, b = old.get(key, implied), new.get(key, implied)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def read_checkpoint(path: str | Path, needs: Iterable[str] = MODEL_KEYS) -> dict:
    """A checkpoint's contents, loaded on the CPU without executing anything from the file.

    ``torch.load(weights_only=True)`` admits tensors and plain containers only, which is all a
    mamlrun checkpoint holds; anything else (code to run, another program's pickle) is refused.

    Args:
        path: the ``.pt`` file.
        needs: keys the checkpoint must have for its use (``MODEL_KEYS``, ``RESUME_KEYS``).

    Raises:
        MamlrunError: the path is missing or a directory, the file is not a mamlrun checkpoint,
            lacks ``needs``, or holds non-finite parameters (a diverged run's).
    """
    path = Path(path)
    if path.is_dir():
        raise MamlrunError(f"checkpoint {path} is a directory, not a .pt file")
    if not path.is_file():
        raise MamlrunError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        why = f"it asks to load {refused.group(1)}, which is refused" if refused else first_line(exc)
        raise MamlrunError(f"checkpoint {path} is not a mamlrun checkpoint ({why})") from None
    except Exception as exc:  # arbitrary bytes fail torch.load in many ways; all mean the same
        raise MamlrunError(f"checkpoint {path} is not a mamlrun checkpoint ({first_line(exc)})") from None
    missing = [k for k in needs if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["learner"], dict):
        raise MamlrunError(f"checkpoint {path} is not a mamlrun checkpoint (no {', '.join(missing) or 'learner'})")
    if not all_finite(state["learner"]):
        raise MamlrunError(f"checkpoint {path} holds non-finite parameters (written by a diverged run)")
    return state


def all_finite(obj: object) -> bool:
    """Whether every floating-point tensor in a nest of dicts, lists and tuples is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, Mapping):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(all_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)
