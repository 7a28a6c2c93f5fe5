"""The ``mamlrun`` command: validate, seed, build, train, evaluate, return the metric.

Hydra composes ``conf/`` (shipped with the package). Before Hydra creates any run directory,
every override combination the command asks for is composed and validated, so a bad config ends
with one line on stderr and exit status 2. torch and the training code are imported only once the
command is known to be good (importing torch takes longer than all the checks).
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mamlrun import rundirs
from mamlrun.assemble import build_optimizer, build_run
from mamlrun.config import select_device, torch_dtype, validate
from mamlrun.errors import MamlrunError
from mamlrun.files import write_failure, write_json
from mamlrun.logging import MetricLogger, check_wandb_online, provenance, rank, record_provenance

if TYPE_CHECKING:
    from mamlrun.train import Schedule

CONF_DIR = (Path(__file__).parent / "conf").resolve()
# Flags after which Hydra only prints information: leave those to Hydra itself.
INFO_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
    "--resolve",
    "--experimental-rerun",
}
VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--package", "-p"}
MAX_CHECKED_JOBS = 64
# Keys whose value names where a run writes; given on the command line, they are taken as they are.
RUN_DIR_KEYS = {False: "hydra.run.dir", True: "hydra.sweep.dir"}
INTERRUPTED = 130  # the shell's exit status for a command stopped by Ctrl-C

rundirs.register_resolvers()


def error(message: str) -> None:
    print(f"mamlrun: error: {message}", file=sys.stderr)


def one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf explain over several lines; fold them (and their cause) into one."""
    if isinstance(exc, OverrideParseException):
        return f"cannot parse '{exc.override}': {exc.message.splitlines()[0]}"
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        parts.extend(ln for ln in lines if ln not in parts)
        exc = exc.__cause__
    text = "\n".join(parts)
    unknown = re.search(r"Could not override '([^']+)'.*?To append to your config use (\S+)", text, re.S)
    if unknown and "is not in struct" in text:
        return f"unknown key '{unknown.group(1)}' (to add a new key, use {unknown.group(2)})"
    missing = re.search(
        r"Could not find '([^']+)'\s*Available options in '[^']+':\s*(.*?)\s*Config search path", text, re.S
    )
    if missing:
        return f"Could not find '{missing.group(1)}' (available: {', '.join(missing.group(2).split())})"
    keep = [p for p in parts if not p.startswith(("Set the environment", "Config search path", "provider="))]
    return "; ".join(keep) or "invalid configuration"


def split_argv(argv: list[str]) -> tuple[dict[str, str], list[str], bool, bool]:
    """Separate Hydra's flags from overrides: (flag values, overrides, multirun, info-only)."""
    flags, overrides, multirun, info = {}, [], False, False
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if arg in ("-m", "--multirun"):
            multirun = True
        elif name in VALUE_FLAGS:
            flags[name] = value if eq else next(it, "")
        elif arg in INFO_FLAGS or name in INFO_FLAGS:
            info = True
        else:
            overrides.append(arg)
    return flags, overrides, multirun, info


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every job a sweep would run, as plain override lists (capped at ``MAX_CHECKED_JOBS``)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)]


@dataclass
class Plan:
    """What a command asks for, composed and validated: argv for Hydra and the first job's config."""

    argv: list[str]
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    info: bool = False
    base: DictConfig | None = None


def prevalidate(argv: list[str]) -> list[str]:
    """Compose and validate every job of this command; return argv with the conf dir on the search path."""
    return plan(argv).argv


def plan(argv: list[str]) -> Plan:
    """Compose and validate every job of this command (see :func:`prevalidate`), keeping what launch needs."""
    from hydra import compose, initialize_config_dir

    flags, overrides, multirun, info = split_argv(argv)
    config_dir = flags.get("--config-dir") or flags.get("-cd")
    extra = [f"hydra.searchpath=[file://{CONF_DIR}]"] if config_dir else []
    if info:
        return Plan(argv + extra, overrides, multirun, info=True)
    root = Path(config_dir).resolve() if config_dir else CONF_DIR
    if not root.is_dir():
        raise MamlrunError(f"config directory {config_dir} does not exist")
    name = flags.get("--config-name") or flags.get("-cn") or "config"
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            # A config file may itself ask for a sweep (hydra.mode: MULTIRUN, as the files in sweeps/ do).
            jobs = expand_sweeps(overrides + extra) if multirun else [overrides + extra]
            base = compose(name, overrides=jobs[0], return_hydra_config=True)
            if not multirun and OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN:
                multirun, jobs = True, expand_sweeps(overrides + extra)
            params = OmegaConf.select(base, "hydra.sweeper.params") if multirun else None
            # As in Hydra's sweeper, a key given on the command line replaces the file's sweep of it.
            given = {ov.get_key_element() for ov in OverridesParser.create().parse_overrides(overrides)}
            params = {k: v for k, v in (params or {}).items() if k not in given}
            if params:
                jobs = [job + sweep for job in jobs for sweep in expand_sweeps([f"{k}={v}" for k, v in params.items()])]
            for job in jobs[:MAX_CHECKED_JOBS]:
                cfg = compose(name, overrides=job, return_hydra_config=False)
                validate(cfg)
                check_inputs(cfg)
    except MamlrunError:
        raise
    except Exception as exc:  # Hydra/OmegaConf composition errors: unknown key, option, bad syntax
        raise MamlrunError(one_line(exc)) from None
    return Plan(argv + extra, overrides, multirun, base=base)


def check_inputs(cfg: DictConfig) -> None:
    """Check the files and services a job will use, before any directory is created."""
    if cfg.mode == "eval":
        from mamlrun.train import read_checkpoint

        read_checkpoint(cfg.checkpoint)
    if cfg.logger.get("name") == "wandb":
        check_wandb_online(OmegaConf.to_container(cfg.logger, resolve=True))


def claim_run_dir(job: Plan) -> tuple[Path, Path | None, list[str]]:
    """Create the directory the command writes to.

    Returns:
        The directory, the outermost folder created for it (``None`` if none was), and the
        overrides that point Hydra there.

    A sweep's jobs are named after what they sweep: every override of the command that sweeps
    nothing is left out of Hydra's ``override_dirname``.
    """
    parsed = OverridesParser.create().parse_overrides(job.overrides)
    given = {ov.key_or_group for ov in parsed}
    key = RUN_DIR_KEYS[job.multirun]
    resume = bool(OmegaConf.select(job.base, "resume"))
    wanted = OmegaConf.select(job.base, key)
    created = None if resume else rundirs.first_missing(wanted)
    path = rundirs.claim(wanted, explicit=key in given, resume=resume, key=key)
    created = created or path  # a suffixed name is new even when the wanted one existed
    extra = [f"{key}={_quoted(str(path))}"]
    if resume:
        last = path / "checkpoints" / "last.pt"
        if not job.multirun and not last.exists():
            raise MamlrunError(f"resume=true but there is no checkpoint to continue from at {last}")
        if not job.multirun:
            from mamlrun.train import RESUME_KEYS, read_checkpoint

            read_checkpoint(last, RESUME_KEYS)
        # A resumed run keeps the config files it was started with (they are equal, or it stops).
        extra.append("hydra.output_subdir=null")
    if job.multirun and not any(k.startswith("hydra.job.config.override_dirname") for k in given):
        fixed = sorted({ov.key_or_group for ov in parsed if not ov.is_sweep_override() and not ov.is_hydra_override()})
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(map(_quoted, fixed))}]")
    return path, created, extra


def _quoted(text: str) -> str:
    """``text`` as a quoted Hydra override value: quotes and interpolations escaped, taken literally."""
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def execute(cfg: DictConfig) -> float:
    """Build everything from ``cfg``, run it, write metrics; return the objective for sweepers."""
    import torch

    from mamlrun.train import Schedule, Trainer, objective_key

    validate(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    device = select_device(cfg.hardware.device)
    if cfg.hardware.get("threads"):
        torch.set_num_threads(int(cfg.hardware.threads))
    dtype = torch_dtype(cfg.hardware.dtype)
    torch.manual_seed(cfg.seed)

    sampler, learner = build_run(cfg, device, dtype)
    config = OmegaConf.to_container(cfg, resolve=True)
    origin = provenance(list(hc.overrides.task))
    schedule = Schedule(
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
    started = time.perf_counter()
    if cfg.mode == "eval":
        return _evaluate_checkpoint(cfg, learner, sampler, schedule, run_dir, started, origin)

    optimizer, lr_schedule = build_optimizer(cfg, learner)
    trainer = Trainer(
        learner, sampler, optimizer, schedule, run_dir, config, progress=cfg.train.progress, lr_schedule=lr_schedule
    )
    resumed = bool(cfg.resume) and trainer.restore()
    strategy = getattr(learner, "strategy_name", None)  # after restore: a checkpoint's choice wins
    if strategy and rank() == 0:
        print(f"mamlrun: tasks of a meta-batch computed with strategy '{strategy}'", flush=True)
    if cfg.resume and not resumed:
        raise MamlrunError(f"resume=true but there is no checkpoint to continue from at {trainer.ckpt_dir / 'last.pt'}")
    wandb_cfg = _wandb_settings(cfg, hc) if cfg.logger.name == "wandb" else None
    if rank() == 0:
        record_provenance(run_dir, origin, mode=cfg.mode, resume=resumed)
    # W&B records the provenance beside the config; the checkpoint's config (compared on resume) does not.
    resume_step = trainer.iteration if resumed else None
    logger = MetricLogger(run_dir, wandb_cfg, {**config, "provenance": origin}, resume_step=resume_step)
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
            for name, path in _figures(run_dir, learner, sampler, cfg).items():
                logger.image(name, path, trainer.iteration)
    finally:
        logger.finish()
    key, _ = objective_key(learner, "test")
    _print_summary(metrics, run_dir, key, resumed, metrics["train/wall_s"], strategy)
    return metrics[key]


def _figures(run_dir: Path, learner, sampler, cfg: DictConfig) -> dict[str, Path]:
    """The run's figures; a failed write (full disk) is one line and leaves no empty image behind."""
    from mamlrun.report import run_figures

    try:
        return run_figures(run_dir, learner, sampler, cfg)
    except OSError as exc:
        for image in run_dir.glob("*.png"):
            if image.stat().st_size == 0:
                image.unlink()
        raise MamlrunError(f"cannot write the figures in {run_dir}: {write_failure(run_dir, exc)}") from None


def _evaluate_checkpoint(
    cfg, learner, sampler, schedule: Schedule, run_dir: Path, started: float, origin: dict
) -> float:
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
    key, _ = objective_key(learner, "test")
    _print_summary(metrics, run_dir, key, False, metrics["test/wall_s"])
    return metrics[key]


def _wandb_settings(cfg: DictConfig, hc) -> dict:
    settings = OmegaConf.to_container(cfg.logger, resolve=True)
    settings.setdefault("name", cfg.run_name)
    if not settings.get("group") and hc.mode == RunMode.MULTIRUN:
        # Runs of one sweep share a group: the sweep directory's name.
        settings["group"] = Path(hc.sweep.dir).name
    return settings


def _print_summary(
    metrics: dict, run_dir: Path, key: str, resumed: bool, wall_s: float, strategy: str | None = None
) -> None:
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return execute(cfg)
    except MamlrunError as exc:
        error(str(exc))
        if not cfg.get("resume"):
            rundirs.discard_if_unused(run_dir)
        sys.exit(2)
    except KeyboardInterrupt:
        error(_interrupted(run_dir, hc))
        if not cfg.get("resume"):
            rundirs.discard_if_unused(run_dir)
        sys.exit(INTERRUPTED)


def _interrupted(run_dir: Path, hc) -> str:
    """One line for Ctrl-C: where the checkpoint to resume from is, and the command that resumes."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return f"interrupted before the first checkpoint; nothing to resume in {run_dir}"
    key, where = ("hydra.sweep.dir", hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else ("hydra.run.dir", run_dir)
    return f"interrupted; the resumable checkpoint is {last} (rerun the command with resume=true {key}={where})"


def main() -> None:
    """Console-script entry point."""
    claimed = created = None
    try:
        job = plan(sys.argv[1:])
        argv = job.argv
        if not job.info:
            claimed, created, extra = claim_run_dir(job)
            argv = argv + extra
            resume = bool(OmegaConf.select(job.base, "resume"))
    except MamlrunError as exc:
        error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        error("interrupted before the run started; nothing was written")
        sys.exit(INTERRUPTED)
    sys.argv = [sys.argv[0], *argv]
    try:
        _hydra_entry()
    finally:
        if claimed is not None and not resume:
            rundirs.discard_if_unused(claimed, created)


if __name__ == "__main__":
    main()
