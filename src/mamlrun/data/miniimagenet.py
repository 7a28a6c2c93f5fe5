"""MiniImagenet in the Ravi & Larochelle split: 64 / 16 / 20 classes of 600 images, 84x84."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.data.pickles import RestrictedUnpickler, read_split
from mamlrun.data.pipeline import Listing, Reader, load
from mamlrun.data.sources import Image, check_member, rgb
from mamlrun.errors import MamlrunError

__all__ = ["MiniImagenet", "MiniImagenetReader", "RestrictedUnpickler"]

PICKLE = "mini-imagenet-cache-{split}.pkl"
HOW_TO = (
    "put either images/ (the 84x84 MiniImagenet images) together with train.csv, val.csv and test.csv "
    "(Ravi & Larochelle's split files, lines 'filename,label'), or mini-imagenet-cache-train.pkl, "
    "mini-imagenet-cache-val.pkl and mini-imagenet-cache-test.pkl there"
)


def csv_classes(root: Path, split: str) -> dict[str, list[Image]]:
    """Class -> its images, from ``<split>.csv`` (lines ``filename,label``, images in ``images/``)."""
    path, classes = root / f"{split}.csv", {}
    try:
        with path.open(newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if row and row[0] != "filename":
                    if len(row) != 2:
                        raise MamlrunError(f"miniimagenet: line {n} of {path} is not 'filename,label'")
                    member = check_member(row[0], path, "miniimagenet")
                    classes.setdefault(row[1], []).append(Image(root / "images", member))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MamlrunError(f"miniimagenet: cannot read {path}: {exc}") from None
    return classes


class MiniImagenetReader(Reader):
    """The three splits as groups: from the images and split files, or from the pickle caches."""

    name, how_to = "miniimagenet", HOW_TO

    def find(self, root: Path) -> Listing | None:
        files = [root / f"{s}.csv" for s in SPLITS]
        if (root / "images").is_dir() and all(p.is_file() for p in files):
            return Listing(root, {s: csv_classes(root, s) for s in SPLITS}, [*files, root / "images"])
        pickles = [root / PICKLE.format(split=s) for s in SPLITS]
        if all(p.is_file() for p in pickles):
            return Listing(root, dict(zip(SPLITS, pickles)), pickles)
        return None

    def decode_group(self, group: str, classes: dict | Path, size: int) -> torch.Tensor:
        return read_split(classes, size) if isinstance(classes, Path) else super().decode_group(group, classes, size)

    def convert(self, image: PILImage.Image, size: int) -> np.ndarray:
        return rgb(image, size)


class MiniImagenet(ImageTasks):
    """MiniImagenet few-shot classification tasks from either of the common on-disk forms.

    ``root`` holds ``images/`` with ``train.csv`` / ``val.csv`` / ``test.csv``, or the pickle caches
    ``mini-imagenet-cache-{train,val,test}.pkl`` (dicts with ``image_data`` ``[N, 84, 84, 3]`` uint8
    and ``class_dict`` mapping each class to its image indices), read without running code. The
    data cannot be downloaded automatically; a missing dataset is an error that says which files
    go where. Decoded arrays are cached as uint8 in ``cache_dir``.

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
        arrays = load(MiniImagenetReader(), root, image_size, cache_dir)
        super().__init__(arrays, ways, shots, query_shots, eval_query_shots, rotations=False, name=name)
