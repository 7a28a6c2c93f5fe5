"""MiniImagenet's pickle caches, read without letting them run code.

A pickle can name any importable callable and have it called while loading (``os.system``,
``subprocess.run``); a downloaded cache is not trusted with that: only numpy arrays, numbers,
strings, lists and dicts are rebuilt.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from mamlrun.errors import MamlrunError

# The only globals a MiniImagenet pickle cache needs: numpy's array and scalar reconstruction (under
# numpy 1 and numpy 2 module names), dtypes, and the ordered dict some versions of the caches use.
ALLOWED_GLOBALS = {
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numbers, strings, lists and dicts, and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which a MiniImagenet cache never holds")
        return super().find_class(module, name)


def read_split(path: Path, size: int) -> torch.Tensor:
    """One split's ``[classes, images, 3, size, size]`` uint8 array, classes in the file's order.

    The file is a dict with ``image_data`` (``[N, size, size, 3]`` uint8) and ``class_dict``
    (class -> indices of its images); classes are cut to the smallest.

    Raises:
        MamlrunError: the file is unreadable, asks to run code, or holds something else.
    """
    try:
        with path.open("rb") as f:
            blob = RestrictedUnpickler(f).load()
        data, classes = np.asarray(blob["image_data"]), blob["class_dict"]
        if data.dtype != np.uint8 or not isinstance(classes, dict) or not classes:
            raise TypeError("image_data must be a uint8 array and class_dict a non-empty dict")
        if data.shape[1:] != (size, size, 3):
            raise MamlrunError(f"miniimagenet: {path.name} holds {data.shape[1:]} images, expected {(size, size, 3)}")
        per_class = min(len(v) for v in classes.values())
        index = np.stack([np.asarray(v[:per_class]) for v in classes.values()])
        return torch.from_numpy(np.ascontiguousarray(data[index].transpose(0, 1, 4, 2, 3)))
    except MamlrunError:
        raise
    except Exception as exc:  # a damaged or foreign pickle fails in many ways; each is "cannot read"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MamlrunError(f"miniimagenet: cannot read {path}: {reason}") from None
