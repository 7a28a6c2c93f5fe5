"""Everything checked before a run starts: the command line, every job it asks for, its run directory.

A command is composed and validated job by job before Hydra creates any directory (:func:`plan`), so
a bad config ends with one line naming the key, the value and what is allowed (a
:class:`~mamlrun.errors.MamlrunError`). Settings are checked before anything imports torch, so a
mistyped command line is answered in well under a second; the classes a config names are imported
last, for the checks they carry themselves:

- the types of a group's settings against its constructor's annotations (:func:`check_settings`);
- a class-level ``check_environment()`` (what the class needs installed: the learn2learn
  algorithms say when learn2learn is missing);
- a class-level ``check_config(settings)`` (settings beyond their types: the W&B logger's mode),
  and ``check_online(settings)`` for the services a job will use (:func:`check_inputs`).
"""

from __future__ import annotations

import collections.abc
import inspect
import itertools
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from mamlrun import rundirs
from mamlrun.config import META_KEYS, select_device
from mamlrun.errors import MamlrunError
from mamlrun.parallel import world_size
from mamlrun.paths import CONF_DIR

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
# A launcher that may start a job again (submitit's: SLURM requeues a job after a time-out or a preemption) has a
# requeue count; it runs every job with resume=auto, so that a job started again continues from its checkpoint.
REQUEUES = "hydra.launcher.max_num_timeout"

# (key, kind, minimum, strict): the shared knobs and the bounds that make a run possible.
KNOBS: tuple[tuple[str, type, float | None, bool], ...] = (
    ("ways", int, 1, False),
    ("shots", int, 1, False),
    ("query_shots", int, 1, False),
    ("inner_steps", int, 0, False),
    ("test_inner_steps", int, 0, False),
    ("inner_lr", float, 0, False),
    ("meta_batch_size", int, 1, False),
    ("meta_iterations", int, 0, False),
    ("seed", int, 0, False),
    ("optimizer.lr", float, 0, True),
    ("train.log_every", int, 0, False),
    ("train.val_every", int, 0, False),
    ("train.val_tasks", int, 1, False),
    ("train.checkpoint_every", int, 0, False),
    ("eval.test_tasks", int, 1, False),
    ("eval.batch_size", int, 1, False),
    ("hardware.threads", int, 1, False),
)
# Largest values that still fit where they go (seeds feed 64-bit generators, offset per stream).
MAXIMA = {"seed": 2**32 - 1}
# Groups whose options are mamlrun classes: their settings are checked against the constructor's annotations.
TYPED_GROUPS = ("dataset", "model", "algorithm")
# Groups whose class may carry its own checks (``check_environment``, ``check_config``).
CHECKED_GROUPS = ("dataset", "model", "algorithm", "optimizer")
MODES = ("train", "eval")
DTYPES = ("float32", "float64")
SWEEP_METRICS = ("test", "val")


# -- the command -----------------------------------------------------------------------------
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
        if isinstance(ov.value(), IntervalSweep):  # a search space (Optuna's): its ends are checked
            choices.append([f"{key}={v}" for v in (ov.value().start, ov.value().end)])
        elif ov.is_sweep_override():
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

    @property
    def resume(self) -> bool:
        """``resume=true``: the command continues a run (or sweep) that must exist."""
        return self.base is not None and OmegaConf.select(self.base, "resume") is True

    @property
    def auto(self) -> bool:
        """``resume=auto``: each run continues from its checkpoint if it has one, else starts afresh."""
        return self.base is not None and OmegaConf.select(self.base, "resume") == rundirs.AUTO


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
            jobs = expand_sweeps(overrides + extra)
            base = compose(name, overrides=jobs[0], return_hydra_config=True)
            # A config file may itself ask for a sweep (hydra.mode: MULTIRUN, as the files in sweeps/ do), and
            # then its command line may sweep too, as Hydra allows.
            multirun = multirun or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN
            if not multirun and jobs != [overrides + extra]:
                jobs = [overrides + extra]  # a sweep's syntax in a single run: Hydra's own error, in one line
                base = compose(name, overrides=jobs[0], return_hydra_config=True)
            params = OmegaConf.select(base, "hydra.sweeper.params") if multirun else None
            # As in Hydra's sweeper, a key given on the command line replaces the file's sweep of it.
            given = {ov.get_key_element() for ov in OverridesParser.create().parse_overrides(overrides)}
            if multirun and "resume" not in given and OmegaConf.select(base, REQUEUES) is not None:
                argv, overrides = [*argv, "resume=auto"], [*overrides, "resume=auto"]
                jobs, base.resume = [[*job, "resume=auto"] for job in jobs], rundirs.AUTO
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
    for _, cls, settings in _checked_classes(cfg, loggers=True):
        hook = getattr(cls, "check_online", None)
        if callable(hook):
            hook(settings())


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
    resume = job.resume
    wanted = OmegaConf.select(job.base, key)
    created = None if resume else rundirs.first_missing(wanted)
    path = rundirs.claim(wanted, explicit=key in given, resume=rundirs.AUTO if job.auto else resume, key=key)
    created = created or path  # a suffixed name is new even when the wanted one existed
    extra = [f"{key}={_quoted(str(path))}"]
    if job.auto and not job.multirun:
        resume = rundirs.resumes(path, rundirs.task_config(job.base), f"{key}={path}")
    if resume:
        last = path / "checkpoints" / "last.pt"
        if not job.multirun and not last.exists():
            raise MamlrunError(f"resume=true but there is no checkpoint to continue from at {last}")
        if not job.multirun:
            from mamlrun.train import RESUME_KEYS, read_checkpoint

            read_checkpoint(last, RESUME_KEYS)
    if resume or (job.auto and job.multirun):
        # A resumed run keeps the config files it was started with (they are equal, or it stops); the jobs of a
        # resume=auto sweep learn whether they resume once started (rundirs.ResumeAuto).
        extra.append("hydra.output_subdir=null")
    if job.multirun and not any(k.startswith("hydra.job.config.override_dirname") for k in given):
        fixed = sorted({ov.key_or_group for ov in parsed if not ov.is_sweep_override() and not ov.is_hydra_override()})
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(map(_quoted, fixed))}]")
    return path, created, extra


def _quoted(text: str) -> str:
    """``text`` as a quoted Hydra override value: quotes and interpolations escaped, taken literally."""
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


# -- one job's config --------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Reject impossible or ill-typed settings with one clear line."""
    for key, kind, minimum, strict in KNOBS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None or key in ("ways", "shots", "inner_steps", "inner_lr", "meta_batch_size"):
            _check_number(key, value, kind, minimum, strict)
    if cfg.mode not in MODES:
        raise MamlrunError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if not (isinstance(cfg.get("resume"), bool) or cfg.get("resume") == rundirs.AUTO):
        raise MamlrunError(f"resume must be one of true, false, auto, got {cfg.get('resume')!r}")
    check_sweep_metric(cfg)
    if cfg.mode == "eval" and not cfg.get("checkpoint"):
        raise MamlrunError("mode=eval needs checkpoint=<path to a .pt file written by a training run>")
    if cfg.hardware.dtype not in DTYPES:
        raise MamlrunError(f"hardware.dtype must be one of {', '.join(DTYPES)}, got {cfg.hardware.dtype!r}")
    chunk = cfg.hardware.get("chunk_size")
    if chunk is not None:
        _check_number("hardware.chunk_size", chunk, int, 1, False)
    if cfg.meta_batch_size % world_size():
        raise MamlrunError(
            f"meta_batch_size={cfg.meta_batch_size} must be divisible by the number of processes ({world_size()})"
        )
    select_device(cfg.hardware.device)
    # Last: this imports the classes (and with them torch), which the checks above never need.
    check_components(cfg)
    for group in TYPED_GROUPS:
        check_settings(group, cfg[group])
    for _, cls, settings in _checked_classes(cfg, loggers=True):
        if callable(getattr(cls, "check_environment", None)):
            cls.check_environment()
        if callable(getattr(cls, "check_config", None)):
            cls.check_config(settings())


def check_sweep_metric(cfg: DictConfig) -> None:
    """``train.sweep_metric=val`` needs a validation during training: its best value is what sweepers get."""
    metric = OmegaConf.select(cfg, "train.sweep_metric", default="test")
    if metric not in SWEEP_METRICS:
        raise MamlrunError(f"train.sweep_metric must be one of {', '.join(SWEEP_METRICS)}, got {metric!r}")
    validates = cfg.algorithm.get("meta_train", True) and 0 < cfg.train.val_every <= cfg.meta_iterations
    if metric == "val" and cfg.mode == "train" and not validates:
        raise MamlrunError(
            "train.sweep_metric=val needs a validation during training (0 < train.val_every <= meta_iterations, "
            f"got train.val_every={cfg.train.val_every}, meta_iterations={cfg.meta_iterations})"
        )


def check_components(cfg: DictConfig) -> None:
    """The learner the dataset's recipe chose accepts the network, the optimizer and the algorithm (its class says)."""
    get_class(cfg.learner._target_).check_components(cfg)


def _checked_classes(cfg: DictConfig, loggers: bool = False) -> Iterator[tuple[str, type, Any]]:
    """``(key, class, settings)`` for each group option (and logger) that names a ``_target_`` class.

    ``settings`` is a function returning the node's resolved settings, so a check that needs none
    resolves nothing.
    """
    nodes = [(group, cfg.get(group)) for group in CHECKED_GROUPS]
    if loggers:
        writers = OmegaConf.select(cfg, "logger.writers") or {}
        nodes += [(f"logger.writers.{key}", node) for key, node in writers.items()]
    for key, node in nodes:
        if not isinstance(node, DictConfig) or not node.get("_target_"):
            continue
        try:
            cls = get_object(node._target_)
        except Exception:  # an unimportable target: building it reports it
            continue
        if not isinstance(cls, type):  # a factory function (``mamlrun.rl.half_cheetah``): no class checks
            continue
        yield key, cls, lambda node=node: OmegaConf.to_container(node, resolve=True)


def _check_number(key: str, value: Any, kind: type, minimum: float | None, strict: bool) -> None:
    """A knob is a finite number (an ``int`` itself for counts: ``25.0`` and ``1e30`` are not) within bounds."""
    if kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok_type = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok_type:
        what = "an integer" if kind is int else "a finite number"
        raise MamlrunError(f"{key} must be {what}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise MamlrunError(f"{key} must be {bound}, got {value!r}")
    maximum = MAXIMA.get(key)
    if maximum is not None and value > maximum:
        raise MamlrunError(f"{key} must be at most {maximum}, got {value!r}")


def check_settings(group: str, node: DictConfig) -> None:
    """Each setting of a group option has the type its class's constructor declares.

    A string where the dataset expects a number (``dataset.amplitude=abc``) would otherwise fail
    deep inside training. Settings whose annotation is not a plain type are left to the class.
    """
    target = node.get("_target_")
    try:
        built = get_object(target)
        function = built.__init__ if isinstance(built, type) else built  # a class or a factory function
        hints = typing.get_type_hints(function)
        names = set(inspect.signature(function).parameters)
    except Exception:  # an unimportable target or unusual annotations: construction reports it
        return
    values = OmegaConf.to_container(node, resolve=True)
    for key, value in values.items():
        if key in META_KEYS or key not in names or key not in hints:
            continue
        if not _conforms(value, hints[key]):
            raise MamlrunError(f"{group}.{key} must be {_describe(hints[key])}, got {value!r}")


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a config value (from YAML: numbers, strings, lists, dicts, null) fits an annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, PurePath | os.PathLike):
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if origin in (list, collections.abc.Sequence):
        return isinstance(value, list | tuple) and all(_conforms(v, args[0]) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # any other class (torch.device, ...): its constructor judges


def _describe(hint: Any) -> str:
    """An annotation in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin in (tuple, list, collections.abc.Sequence) and args:
        return f"a list of {_plural(args[0])}"
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, "a path" if isinstance(hint, type) and issubclass(hint, PurePath) else str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(hint, "values")
