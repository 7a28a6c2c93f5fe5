"""One run, inside Hydra's job: seed, build, train (or evaluate a checkpoint), log, draw, summarise.

Everything a run builds comes from its config through ``_target_``: the task sampler, network and
meta-learner (:func:`mamlrun.assemble.build_run`), the optimizer, the loggers (``logger.writers``)
and the figures drawn at the end (``train.figures``). Nothing here asks which dataset, algorithm or
logger it was given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mamlrun import parallel
from mamlrun.assemble import build_optimizer, build_run
from mamlrun.config import build, select_device, torch_dtype
from mamlrun.errors import MamlrunError
from mamlrun.files import write_failure, write_json
from mamlrun.logging import MetricLogger, RunInfo, provenance, record_provenance
from mamlrun.parallel import rank, world_size
from mamlrun.validation import validate

if TYPE_CHECKING:
    from mamlrun.train import Schedule


def execute(cfg: DictConfig) -> float:
    """Build everything from ``cfg``, run it, write metrics; return the objective for sweepers."""
    import torch

    from mamlrun.train import Trainer, objective_key

    parallel.adopt_slurm_environment()  # before validate: meta_batch_size must divide among the ranks
    validate(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    # A distributed job's ranks joined in the CLI; jobs a launcher starts as several tasks join here.
    parallel.init(cfg.hardware.device, float(cfg.hardware.timeout_s))
    device = parallel.device(select_device(cfg.hardware.device))
    if cfg.hardware.get("threads"):
        torch.set_num_threads(int(cfg.hardware.threads))
    dtype = torch_dtype(cfg.hardware.dtype)
    torch.manual_seed(cfg.seed)

    sampler, learner = build_run(cfg, device, dtype)
    config = OmegaConf.to_container(cfg, resolve=True)
    origin = provenance(list(hc.overrides.task))
    schedule = schedule_of(cfg)
    started = time.perf_counter()
    if cfg.mode == "eval":
        return evaluate_checkpoint(cfg, learner, sampler, schedule, run_dir, started, origin)

    optimizer, lr_schedule = build_optimizer(cfg, learner)
    trainer = Trainer(
        learner, sampler, optimizer, schedule, run_dir, config, progress=cfg.train.progress, lr_schedule=lr_schedule
    )
    resumed = bool(cfg.resume) and trainer.restore()
    strategy = getattr(learner, "strategy_name", None)  # after restore: a checkpoint's choice wins
    if strategy and rank() == 0:
        print(f"mamlrun: tasks of a meta-batch computed with strategy '{strategy}'", flush=True)
    if cfg.resume is True and not resumed:
        raise MamlrunError(f"resume=true but there is no checkpoint to continue from at {trainer.ckpt_dir / 'last.pt'}")
    if rank() == 0:
        record_provenance(run_dir, origin, mode=cfg.mode, resume=resumed, processes=world_size())
    # W&B records the provenance beside the config; the checkpoint's config (compared on resume) does not.
    sweep = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    resume_step = trainer.iteration if resumed else None
    run = RunInfo(run_dir, cfg.run_name, sweep, {**config, "provenance": origin}, resume_step)
    logger = MetricLogger(loggers=build_loggers(cfg, run) if rank() == 0 else [])
    try:
        trainer.fit(logger)
        metrics = trainer.test()
        metrics["train/meta_iterations"] = trainer.iteration
        metrics["train/wall_s"] = time.perf_counter() - started
        if trainer.best["value"] is not None:
            metrics[trainer.val_key.replace("_mean", "_best")] = trainer.best["value"]
        logger.log(metrics, trainer.iteration)
        logger.summary(metrics)
        if rank() == 0:
            write_json(run_dir / "metrics.json", metrics)
            with parallel.alone():  # the other ranks have finished: rank 0's rollouts are its own
                figures = draw_figures(cfg, run_dir, learner, sampler)
            for name, path in figures.items():
                logger.image(name, path, trainer.iteration)
    finally:
        logger.finish()
    key, _ = objective_key(learner, "test")
    print_summary(metrics, run_dir, key, resumed, metrics["train/wall_s"], strategy)
    return metrics[key if cfg.train.sweep_metric == "test" else trainer.val_key.replace("_mean", "_best")]


def schedule_of(cfg: DictConfig) -> Schedule:
    """How long the run trains and how often it logs, validates, checkpoints; how it tests."""
    from mamlrun.train import Schedule

    return Schedule(
        # An algorithm without meta-training (random init) is evaluated as initialised.
        meta_iterations=cfg.meta_iterations if cfg.algorithm.get("meta_train", True) else 0,
        meta_batch_size=cfg.meta_batch_size,
        seed=cfg.seed,
        log_every=cfg.train.log_every,
        val_every=cfg.train.val_every,
        val_tasks=cfg.train.val_tasks,
        checkpoint_every=cfg.train.checkpoint_every,
        test_tasks=cfg.eval.test_tasks,
        eval_batch_size=cfg.eval.batch_size,
    )


def build_loggers(cfg: DictConfig, run: RunInfo) -> list:
    """The loggers ``logger.writers`` names, in order (the JSONL file first, then W&B with ``logger=wandb``)."""
    loggers = []
    try:
        for node in (OmegaConf.select(cfg, "logger.writers") or {}).values():
            loggers.append(build(node, run=run))
    except BaseException:
        for logger in loggers:
            logger.finish()
        raise
    return loggers


def draw_figures(cfg: DictConfig, run_dir: Path, learner, sampler) -> dict[str, Path]:
    """The figures ``train.figures`` names, by name.

    A failed write (full disk) is one line and leaves no empty image behind.
    """
    figures = {}
    try:
        for name, node in (OmegaConf.select(cfg, "train.figures") or {}).items():
            path = build(node)(run_dir, learner, sampler)
            if path is not None:
                figures[name] = path
    except OSError as exc:
        for image in run_dir.glob("*.png"):
            if image.stat().st_size == 0:
                image.unlink()
        raise MamlrunError(f"cannot write the figures in {run_dir}: {write_failure(run_dir, exc)}") from None
    return figures


def evaluate_checkpoint(
    cfg: DictConfig, learner, sampler, schedule: Schedule, run_dir: Path, started: float, origin: dict
) -> float:
    """``mode=eval``: test the parameters of ``cfg.checkpoint``; write ``metrics.json``."""
    from mamlrun.train import TEST_STREAM, evaluate, objective_key, read_checkpoint

    path = Path(cfg.checkpoint)
    state = read_checkpoint(path)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MamlrunError(f"checkpoint {path} does not fit this model/algorithm: {str(exc).splitlines()[0]}") from None
    if rank() == 0:
        record_provenance(run_dir, origin, mode="eval", checkpoint=str(path.resolve()))
    metrics = evaluate(
        learner, sampler, "test", schedule.test_tasks, schedule.seed + TEST_STREAM, schedule.eval_batch_size
    )
    metrics["test/checkpoint"] = str(path.resolve())
    metrics["test/wall_s"] = time.perf_counter() - started
    if rank() == 0:
        write_json(run_dir / "metrics.json", metrics)
        with parallel.alone():
            draw_figures(cfg, run_dir, learner, sampler)  # the checkpoint's figures (trajectories, velocity, ...)
    key, _ = objective_key(learner, "test")
    print_summary(metrics, run_dir, key, False, metrics["test/wall_s"])
    return metrics[key]


def print_summary(
    metrics: dict, run_dir: Path, key: str, resumed: bool, wall_s: float, strategy: str | None = None
) -> None:
    """The closing lines: wall time, the objective after a few numbers of steps, where the outputs are."""
    if rank() != 0:
        return
    split, stem = key.split("/")
    name = stem.removesuffix("_mean")
    shown = [k for k in metrics if k.startswith(f"{split}/{name}_step")]
    if len(shown) > 4:
        shown = [shown[0], shown[1], shown[len(shown) // 2], shown[-1]]
    lines = [f"mamlrun: done{' (resumed)' if resumed else ''} in {wall_s:.1f} s"]
    for k in shown:
        ci = metrics.get(k.replace(f"{name}_step", f"{name}_ci95_step"))
        lines.append(f"  {k:<24} {metrics[k]:.4f} ± {ci:.4f}")
    if strategy:
        lines.append(f"  strategy: {strategy}")
    lines.append(f"  outputs: {run_dir}")
    print("\n".join(lines), flush=True)


def interrupted(run_dir: Path) -> str:
    """One line for Ctrl-C: where the checkpoint to resume from is, and the command that resumes."""
    hc = HydraConfig.get()
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return f"interrupted before the first checkpoint; nothing to resume in {run_dir}"
    key, where = ("hydra.sweep.dir", hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else ("hydra.run.dir", run_dir)
    return f"interrupted; the resumable checkpoint is {last} (rerun the command with resume=true {key}={where})"
