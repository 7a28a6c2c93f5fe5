"""Checks on a composed config, device selection and object construction from config groups.

Validation runs before any work and raises :class:`~mamlrun.errors.MamlrunError` with one line
naming the key, the value and what is allowed. Settings are checked before anything imports torch,
so a mistyped command line is answered in well under a second.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import numbers
import os
import types
import typing
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from mamlrun.errors import MamlrunError
from mamlrun.logging import WANDB_MODES, world_size

if TYPE_CHECKING:
    import torch

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
MODES = ("train", "eval")
DTYPES = ("float32", "float64")
BACKENDS = ("func", "learn2learn")
# Keys of a group file that describe it (for run names, backend choice) rather than being constructor arguments.
META_KEYS = ("name", "tag", "backend", "kind")


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


def validate(cfg: DictConfig) -> None:
    """Reject impossible or ill-typed settings with one clear line."""
    for key, kind, minimum, strict in KNOBS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None or key in ("ways", "shots", "inner_steps", "inner_lr", "meta_batch_size"):
            _check_number(key, value, kind, minimum, strict)
    if cfg.mode not in MODES:
        raise MamlrunError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode == "eval" and not cfg.get("checkpoint"):
        raise MamlrunError("mode=eval needs checkpoint=<path to a .pt file written by a training run>")
    if cfg.hardware.dtype not in DTYPES:
        raise MamlrunError(f"hardware.dtype must be one of {', '.join(DTYPES)}, got {cfg.hardware.dtype!r}")
    if cfg.logger.get("name") == "wandb" and cfg.logger.get("mode") not in WANDB_MODES:
        raise MamlrunError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got {cfg.logger.get('mode')!r}")
    backend = cfg.algorithm.get("backend", "func")
    if backend not in BACKENDS:
        raise MamlrunError(f"algorithm.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "learn2learn":
        from mamlrun.algorithms.l2l import import_learn2learn, learn2learn_target

        learn2learn_target(cfg.algorithm._target_, cfg.algorithm.name)
        import_learn2learn()
    chunk = cfg.hardware.get("chunk_size")
    if chunk is not None:
        _check_number("hardware.chunk_size", chunk, int, 1, False)
    if cfg.meta_batch_size % world_size():
        raise MamlrunError(
            f"meta_batch_size={cfg.meta_batch_size} must be divisible by the number of processes ({world_size()})"
        )
    select_device(cfg.hardware.device)
    # Last: this imports the classes (and with them torch), which the checks above never need.
    _check_task_kind(cfg)
    for group in TYPED_GROUPS:
        if cfg[group].get("backend", "func") == "func":
            check_settings(group, cfg[group])


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype ``hardware.dtype`` names (one of ``DTYPES``)."""
    import torch

    return getattr(torch, name)


def check_settings(group: str, node: DictConfig) -> None:
    """Each setting of a group option has the type its class's constructor declares.

    A string where the dataset expects a number (``dataset.amplitude=abc``) would otherwise fail
    deep inside training. Settings whose annotation is not a plain type are left to the class.
    """
    target = node.get("_target_")
    try:
        cls = get_class(target)
        hints = typing.get_type_hints(cls.__init__)
        names = set(inspect.signature(cls.__init__).parameters)
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


def _check_task_kind(cfg: DictConfig) -> None:
    """The learner the dataset's recipe chose accepts the network, the optimizer and the algorithm (its classes say)."""
    get_class(cfg.learner._target_).check_components(cfg)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MamlrunError(f"hardware.device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MamlrunError("hardware.device=cuda but no CUDA device is available (use hardware=cpu or hardware=auto)")
    return device


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a group's ``_target_`` with its constructor arguments (``name``/``tag``/``backend`` left out).

    An algorithm with ``backend: learn2learn`` is built as its learn2learn counterpart. A
    :class:`MamlrunError` raised by the constructor reaches the caller as itself, not wrapped.
    """
    spec = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in META_KEYS}
    if node.get("backend") == "learn2learn":
        from mamlrun.algorithms.l2l import learn2learn_target

        spec["_target_"] = learn2learn_target(spec["_target_"], node.get("name"))
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MamlrunError):
            raise cause from None
        raise MamlrunError(f"cannot build {spec.get('_target_')}: {cause or exc}") from None
