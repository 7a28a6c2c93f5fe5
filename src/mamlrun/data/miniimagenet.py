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
        try:
            with (root / PICKLE.format(split=split)).open("rb") as f:
                blob = pickle.load(f)
            data, classes = np.asarray(blob["image_data"]), blob["class_dict"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
            raise MamlrunError(f"miniimagenet: cannot read {PICKLE.format(split=split)}: {exc}") from None
        if data.shape[1:] != (size, size, 3):
            raise MamlrunError(
                f"miniimagenet: {PICKLE.format(split=split)} holds {data.shape[1:]} images, expected {(size, size, 3)}"
            )
        per_class = min(len(v) for v in classes.values())
        index = np.stack([np.asarray(v[:per_class]) for v in classes.values()])
        arrays[split] = torch.from_numpy(np.ascontiguousarray(data[index].transpose(0, 1, 4, 2, 3)))
    return arrays


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
