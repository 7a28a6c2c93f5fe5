"""CIFAR-FS: CIFAR-100's 100 classes split 64 / 16 / 20 for few-shot learning, 600 32x32 images each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.data.pipeline import Listing, Reader, load
from mamlrun.data.sources import Image, check_member, folder_members, rgb
from mamlrun.errors import MamlrunError

SPLIT_FILE = "splits/bertinetto/{split}.txt"


class CIFARFSReader(Reader):
    """The three splits as groups: the classes each split file names, their images in ``data/<class>/``."""

    name = "cifarfs"
    how_to = (
        "put data/<class>/*.png (CIFAR-100's images, a folder per class) and splits/bertinetto/train.txt, "
        "val.txt and test.txt (Bertinetto et al.'s split files, one class per line) there, "
        "or the cifar100/ folder that holds them"
    )

    def find(self, root: Path) -> Listing | None:
        bases = [b for b in (root, root / "cifar100") if (b / "data").is_dir()]
        base = next((b for b in bases if all((b / SPLIT_FILE.format(split=s)).is_file() for s in SPLITS)), None)
        if base is None:
            return None
        files = [base / SPLIT_FILE.format(split=s) for s in SPLITS]
        groups = {s: self.classes(base, f) for s, f in zip(SPLITS, files)}
        for a, b in ((0, 1), (0, 2), (1, 2)):
            shared = sorted(set(groups[SPLITS[a]]) & set(groups[SPLITS[b]]))
            if shared:
                raise MamlrunError(f"cifarfs: class {shared[0]!r} is in both {files[a]} and {files[b]}")
        folders = [base / "data" / c for classes in groups.values() for c in classes]
        return Listing(root, groups, [*files, *folders])

    def classes(self, base: Path, split_file: Path) -> dict[str, list[Image]]:
        """Class -> its images, for the classes ``split_file`` names."""
        names = [line.strip() for line in split_file.read_text(errors="replace").splitlines() if line.strip()]
        out = {}
        for name in names:
            folder = base / "data" / check_member(name, split_file, self.name)
            out[name] = [Image(folder, m) for m in folder_members(folder)] if folder.is_dir() else []
            if not out[name]:
                raise MamlrunError(f"cifarfs: {split_file} names class {name!r}, which has no images in {folder}")
        return out

    def convert(self, image: PILImage.Image, size: int) -> np.ndarray:
        return rgb(image, size)


class CIFARFS(ImageTasks):
    """CIFAR-FS few-shot classification tasks.

    ``root`` holds ``data/<class>/*.png`` (the CIFAR-100 images, a folder per class) and the split
    files ``splits/bertinetto/{train,val,test}.txt`` (one class per line: 64 / 16 / 20 classes), as
    the common distribution unzips (directly or inside ``cifar100/``). The data cannot be
    downloaded automatically; a missing dataset is an error that says which files go where.
    Images are decoded once as RGB ``image_size`` squares (32: CIFAR's own size) and cached as
    uint8 in ``cache_dir``.

    References:
        Bertinetto, Henriques, Torr, Vedaldi. "Meta-learning with differentiable closed-form
        solvers." ICLR 2019 (CIFAR-FS and its split). Krizhevsky 2009 (CIFAR-100).
    """

    def __init__(
        self,
        root: str | Path,
        ways: int,
        shots: int,
        query_shots: int,
        eval_query_shots: int | None = None,
        image_size: int = 32,
        cache_dir: str | Path | None = None,
        name: str = "cifarfs",
    ) -> None:
        arrays = load(CIFARFSReader(), root, image_size, cache_dir)
        super().__init__(arrays, ways, shots, query_shots, eval_query_shots, rotations=False, name=name)
