"""The path every image dataset takes from its files to few-shot tasks.

A dataset is a :class:`Reader`: it lists its classes and their images (``find``), turns one
decoded image into a uint8 array (``convert``) and deals its classes into the train / val / test
splits (``split``). :func:`load` does the rest the same way for every dataset: it fingerprints
the source files (names, sizes and modification times of archives, split files and images),
decodes every image once (with a progress bar) into one uint8 array
``[classes, images_per_class, C, H, W]`` per group of classes, keeps those arrays in a checksummed
cache (:mod:`mamlrun.data.cache`: tensors only, written atomically, nothing in it executes) that
is rebuilt when the sources change, and returns the splits :class:`~mamlrun.data.images.ImageTasks`
samples from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from tqdm import tqdm

from mamlrun.data.cache import cache_path, cached, fingerprint
from mamlrun.data.images import SPLITS
from mamlrun.data.sources import Image, Opener
from mamlrun.errors import MamlrunError


@dataclass
class Listing:
    """What a reader found in a dataset folder.

    Attributes:
        root: the dataset folder.
        groups: group name -> ``{class: [Image, ...]}``. Each group is decoded into one array whose
            classes are in sorted order, every class cut to the group's smallest class. A reader that
            decodes a group in one piece (:meth:`Reader.decode_group`) may hold anything there.
        sources: the files and folders (archives, split files) whose names, sizes and modification
            times fingerprint the data, beside every image file in a folder.
    """

    root: Path
    groups: dict[str, Any]
    sources: list[Path]


class Reader:
    """What one image dataset adds to the pipeline; see :func:`load`."""

    name = "images"  # the first word of its errors and the name of its cache files
    how_to = ""  # what to put in the dataset folder, said when it holds no data
    split_hint = ""  # said after "the <split> split is empty"

    def find(self, root: Path) -> Listing | None:
        """The dataset's classes and images in ``root``, or ``None`` when it holds none."""
        raise NotImplementedError

    def fetch(self, root: Path) -> bool:
        """Download the dataset into ``root`` (an empty folder) if this reader can; whether it did."""
        return False

    def convert(self, image: PILImage.Image, size: int) -> np.ndarray:
        """One opened image as ``[C, size, size]`` uint8."""
        raise NotImplementedError

    def decode_group(self, group: str, classes: dict[Any, list[Image]], size: int) -> torch.Tensor:
        """``[classes, images_per_class, C, size, size]`` uint8, classes in sorted order."""
        if not classes:
            raise MamlrunError(f"{self.name}: the {group} data lists no classes")
        keys, per_class = sorted(classes), min(len(v) for v in classes.values())
        out: np.ndarray | None = None
        with Opener(self.name) as opener:
            for i, key in enumerate(tqdm(keys, desc=f"decode {self.name} {group}", unit="class", leave=False)):
                for j, image in enumerate(classes[key][:per_class]):
                    pixels = opener.pixels(image, lambda im: self.convert(im, size))
                    if out is None:
                        out = np.empty((len(keys), per_class, *pixels.shape), dtype=np.uint8)
                    out[i, j] = pixels
        return torch.from_numpy(out)

    def split(self, listing: Listing, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The train / val / test arrays; by default the groups are the splits."""
        return {s: arrays[s] for s in SPLITS}


def stamp(groups: dict[str, Any]) -> str:
    """A digest of the names, sizes and modification times of every image file in a folder.

    Images inside an archive are covered by the archive's own entry in the listing's sources.
    """
    digest = hashlib.sha256()
    for classes in groups.values():
        for images in classes.values() if isinstance(classes, dict) else ():
            for source, member in images:
                if source.suffix != ".zip":
                    try:
                        st = os.stat(source / member)
                        digest.update(f"{source / member}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    except OSError:  # missing: decoding says so
                        digest.update(f"{source / member}\0missing\n".encode())
    return digest.hexdigest()


def shape(groups: dict[str, Any]) -> dict[str, Any]:
    """Per group, its number of classes and images per class (or what a one-piece group is read from)."""
    return {
        g: [len(c), min(map(len, c.values()), default=0)] if isinstance(c, dict) else str(c) for g, c in groups.items()
    }


def load(reader: Reader, root: str | Path, image_size: int, cache_dir: str | Path | None) -> dict[str, torch.Tensor]:
    """The train / val / test uint8 arrays of the dataset ``reader`` finds in ``root``.

    Raises:
        MamlrunError: no data in ``root`` (saying what to put there), an unreadable archive or
            image, a cache that cannot be written, or an empty split.
    """
    root = Path(root).expanduser()
    listing = reader.find(root) if root.is_dir() else None
    if listing is None and reader.fetch(root):
        listing = reader.find(root)
    if listing is None:
        raise MamlrunError(f"{reader.name}: no data in {root}: {reader.how_to}")
    groups = {"groups": shape(listing.groups), "images": stamp(listing.groups)}
    key = fingerprint(listing.sources, size=image_size, reader=type(reader).__name__, **groups)
    path = cache_path(reader.name, root, image_size, cache_dir)
    arrays = cached(path, key, lambda: {g: reader.decode_group(g, c, image_size) for g, c in listing.groups.items()})
    splits = reader.split(listing, arrays)
    empty = [s for s in SPLITS if len(splits[s]) == 0]
    if empty:
        raise MamlrunError(f"{reader.name}: the {', '.join(empty)} split is empty{reader.split_hint}")
    return splits
