"""MiniImagenet in the Ravi & Larochelle split: 64 / 16 / 20 classes of 600 images, 84x84."""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mamlrun.data.cache import cache_path, cached, fingerprint
from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.errors import MamlrunError

PICKLE = "mini-imagenet-cache-{split}.pkl"
HOW_TO = (
    "put either images/ (the 84x84 MiniImagenet images) together with train.csv, val.csv and test.csv "
    "(Ravi & Larochelle's split files, lines 'filename,label'), or mini-imagenet-cache-train.pkl, "
    "mini-imagenet-cache-val.pkl and mini-imagenet-cache-test.pkl there"
)


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
    """Unpickles numpy arrays, numbers, strings, lists and dicts, and nothing else.

    A pickle can name any importable callable and have it called while loading (``os.system``,
    ``subprocess.run``); a downloaded cache is not trusted with that.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which a MiniImagenet cache never holds")
        return super().find_class(module, name)


def _from_csv(root: Path, size: int) -> dict[str, torch.Tensor]:
    arrays = {}
    for split in SPLITS:
        with (root / f"{split}.csv").open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0] != "filename"]
        by_class: dict[str, list[str]] = {}
        for filename, label in rows:
            by_class.setdefault(label, []).append(filename)
        per_class = min(len(v) for v in by_class.values())
        out = np.empty((len(by_class), per_class, 3, size, size), dtype=np.uint8)
        for i, files in enumerate(tqdm(list(by_class.values()), desc=f"decode miniimagenet {split}", leave=False)):
            for j, name in enumerate(files[:per_class]):
                path = root / "images" / name
                if not path.exists():
                    raise MamlrunError(f"miniimagenet: {split}.csv names {name}, which is not in {root / 'images'}")
                with Image.open(path) as im:
                    rgb = im.convert("RGB")
                    if rgb.size != (size, size):
                        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
                    out[i, j] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        arrays[split] = torch.from_numpy(out)
    return arrays


def _from_pickles(root: Path, size: int) -> dict[str, torch.Tensor]:
    arrays = {}
    for split in SPLITS:
        path = root / PICKLE.format(split=split)
        try:
            arrays[split] = _read_pickle(path, size)
        except MamlrunError:
            raise
        except Exception as exc:  # a damaged or foreign pickle fails in many ways; each is "cannot read"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MamlrunError(f"miniimagenet: cannot read {path}: {reason}") from None
    return arrays


def _read_pickle(path: Path, size: int) -> torch.Tensor:
    """One split's ``[classes, images, 3, size, size]`` uint8 array from a pickle cache."""
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


class MiniImagenet(ImageTasks):
    """MiniImagenet few-shot classification tasks from either of the common on-disk forms.

    ``root`` holds ``images/`` with ``train.csv`` / ``val.csv`` / ``test.csv``, or the pickle caches
    ``mini-imagenet-cache-{train,val,test}.pkl`` (dicts with ``image_data`` ``[N, 84, 84, 3]`` uint8
    and ``class_dict`` mapping each class to its image indices). The data cannot be downloaded
    automatically; a missing dataset is an error that says which files go where. Decoded arrays
    are cached as uint8 in ``cache_dir``.

    References:
        Vinyals et al. 2016 (MiniImagenet); Ravi & Larochelle 2017 (the 64/16/20 split);
        Finn et al. 2017, section 5.2.
    """

    def __init__(
        self,
        root: str | Path,
        ways: int,
        shots: int,
        query_shots: int,
        eval_query_shots: int | None = None,
        image_size: int = 84,
        cache_dir: str | Path | None = None,
        name: str = "miniimagenet",
    ) -> None:
        root = Path(root).expanduser()
        forms: list[tuple[list[Path], Callable]] = [
            ([root / "images", *(root / f"{s}.csv" for s in SPLITS)], _from_csv),
            ([root / PICKLE.format(split=s) for s in SPLITS], _from_pickles),
        ]
        found = next(((needed, reader) for needed, reader in forms if all(p.exists() for p in needed)), None)
        if found is None:
            raise MamlrunError(f"miniimagenet: no data in {root}: {HOW_TO}")
        needed, reader = found
        sources = [p for p in needed if p.is_file()] + sorted((root / "images").glob("*"))[:1]
        key = fingerprint(sources, size=image_size, reader=reader.__name__)
        cache_file = cache_path("miniimagenet", root, image_size, cache_dir)
        arrays = cached(cache_file, key, lambda: reader(root, image_size))
        super().__init__(arrays, ways, shots, query_shots, eval_query_shots, rotations=False, name=name)
