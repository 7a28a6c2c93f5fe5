"""Omniglot: 1623 handwritten characters from 50 alphabets, 20 drawings each."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from mamlrun.data import splits
from mamlrun.data.download import download as fetch
from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.data.pipeline import Listing, Reader, load
from mamlrun.data.sources import Image, archive_members, folder_members, gray
from mamlrun.errors import MamlrunError

RELEASE = "https://github.com/brendenlake/omniglot/raw/master/python"
OFFICIAL = {  # archive -> sha256
    "images_background.zip": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation.zip": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}
OFFICIAL_SPLIT = "official"  # dataset.split value for Lake et al.'s background / evaluation protocol
Characters = dict[tuple[str, str], list[Image]]


def find_characters(root: Path) -> tuple[Characters, list[Path]]:
    """Every character under ``root``: ``(alphabet, character) -> [(source, member), ...]``, and the sources.

    Sources are zip archives and folders laid out as ``<Alphabet>/<character>/<drawing>.png``, at
    any depth. A character found in several sources (the official small sets share two
    alphabets) is read from the first.
    """
    listed = [(archive, archive_members(archive, "omniglot")) for archive in sorted(root.glob("*.zip"))]
    listed += [(root, pngs) for pngs in [folder_members(root)] if pngs]
    characters: Characters = {}
    for source, members in listed:
        found: Characters = {}
        for member in members:
            parts = Path(member).parts
            if len(parts) >= 3:
                found.setdefault((parts[-3], parts[-2]), []).append(Image(source, member))
        for key, images in found.items():
            characters.setdefault(key, images)
    return characters, [source for source, _ in listed]


def collection(source: Path, member: str) -> str:
    """``"background"`` or ``"evaluation"``: the official set a drawing belongs to (by archive or folder name)."""
    where = " ".join([source.name, *Path(member).parts[:-3]]).lower()
    return "evaluation" if "evaluation" in where else "background" if "background" in where else "unknown"


def shuffled_split(keys: list, split: Sequence[float], seed: int, root: Path) -> list[list[int]]:
    """Indices of ``keys`` per split (train, val, test): characters shuffled with ``seed``, dealt by counts."""
    return splits.shuffled_split(keys, split, seed, root, "omniglot", "characters", f" or '{OFFICIAL_SPLIT}'")


def official_split(characters: Characters, keys: list, seed: int, root: Path, val_characters: int = 100):
    """Lake et al.'s protocol: meta-train and validate on the background alphabets, test on the evaluation ones.

    Whole background alphabets (shuffled with ``seed``) are held out for validation until they hold at
    least ``val_characters`` characters, so no alphabet is in two splits.
    """
    sets = [collection(*characters[k][0]) for k in keys]
    background = [i for i, s in enumerate(sets) if s == "background"]
    alphabets = sorted({keys[i][0] for i in background})
    if not alphabets or "evaluation" not in sets:
        raise MamlrunError(
            f"omniglot: dataset.split={OFFICIAL_SPLIT} needs the official images_background and images_evaluation "
            f"sets; {root} does not hold both"
        )
    random.Random(seed).shuffle(alphabets)
    size, held = Counter(keys[i][0] for i in background), set()
    for alphabet in alphabets:
        if sum(size[a] for a in held) >= val_characters:
            break
        held.add(alphabet)
    train, val = ([i for i in background if (keys[i][0] in held) == v] for v in (False, True))
    return [train, val, [i for i, s in enumerate(sets) if s == "evaluation"]]


class OmniglotReader(Reader):
    """Omniglot's characters as classes (one group, ``images``), dealt into splits by ``split``."""

    name = "omniglot"
    how_to = (
        "put images_background.zip and images_evaluation.zip there "
        "(or any folder in the layout <Alphabet>/<character>/*.png), or set dataset.download=true"
    )
    split_hint = "; adjust dataset.split"

    def __init__(self, split: Sequence[float] | str, seed: int, download: bool, url: str) -> None:
        self.rule, self.seed, self.download, self.url = split, seed, download, url

    def find(self, root: Path) -> Listing | None:
        characters, sources = find_characters(root)
        return Listing(root, {"images": characters}, sources) if characters else None

    def fetch(self, root: Path) -> bool:
        for archive, sha in OFFICIAL.items() if self.download else ():
            fetch(f"{self.url.rstrip('/')}/{archive}", root / archive, sha)
        return self.download

    def convert(self, image: PILImage.Image, size: int) -> np.ndarray:
        return 255 - gray(image, size)  # strokes bright on black, as the MAML code feeds them

    def split(self, listing: Listing, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        characters = listing.groups["images"]
        keys = sorted(characters)
        if self.rule == OFFICIAL_SPLIT:
            parts = official_split(characters, keys, self.seed, listing.root)
        else:
            parts = shuffled_split(keys, self.rule, self.seed, listing.root)
        return {s: arrays["images"][part] for s, part in zip(SPLITS, parts)}


class Omniglot(ImageTasks):
    """Omniglot few-shot classification tasks.

    Reads the official archives (``images_background.zip``, ``images_evaluation.zip``) or any
    folder/archive in their layout from ``root``; with ``download=True`` fetches the official
    archives first when ``root`` holds none, verifying their SHA-256. Images are decoded once,
    resized to ``image_size`` and cached as uint8 in ``cache_dir`` (rebuilt when the sources
    change).

    Split: characters are sorted, shuffled with ``split_seed`` and dealt into train / val / test
    by ``split``. The default ``[1100, 100, 423]`` is the MAML paper's 1200 meta-training
    characters (the last 100 of which mamlrun holds out for validation) and 423 test characters.
    ``split="official"`` is Lake et al.'s protocol instead: the 964 characters of the 30 background
    alphabets for meta-training (whole alphabets, at least 100 characters, held out for validation)
    and the 659 characters of the 20 evaluation alphabets for testing.
    With ``rotations`` each character gives four classes (0/90/180/270 degrees), in every split.

    References:
        Lake, Salakhutdinov, Tenenbaum. "Human-level concept learning through probabilistic
        program induction." Science 2015 (background / evaluation alphabets). Finn et al. 2017,
        section 5.2 (1200 / 423 split, 28x28, rotations).
    """

    def __init__(
        self,
        root: str | Path,
        ways: int,
        shots: int,
        query_shots: int,
        eval_query_shots: int | None = None,
        split: Sequence[float] | str = (1100, 100, 423),
        split_seed: int = 1,
        rotations: bool = True,
        image_size: int = 28,
        download: bool = False,
        url: str = RELEASE,
        cache_dir: str | Path | None = None,
        name: str = "omniglot",
    ) -> None:
        arrays = load(OmniglotReader(split, split_seed, download, url), root, image_size, cache_dir)
        super().__init__(arrays, ways, shots, query_shots, eval_query_shots, rotations, name)
