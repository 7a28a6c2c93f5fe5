"""Omniglot: 1623 handwritten characters from 50 alphabets, 20 drawings each."""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mamlrun.data.cache import cache_path, cached, fingerprint
from mamlrun.data.download import download as fetch
from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.errors import MamlrunError

RELEASE = "https://github.com/brendenlake/omniglot/raw/master/python"
OFFICIAL = {  # archive -> sha256
    "images_background.zip": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation.zip": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}
OFFICIAL_SPLIT = "official"  # dataset.split value for Lake et al.'s background / evaluation protocol


def find_characters(root: Path) -> tuple[dict[tuple[str, str], list[tuple[Path, str]]], list[Path]]:
    """Every character under ``root``: ``(alphabet, character) -> [(source, member), ...]``.

    Sources are zip archives and folders laid out as ``<Alphabet>/<character>/<drawing>.png``, at
    any depth. A character found in several sources (the official small sets share two
    alphabets) is read from the first.
    """
    characters: dict[tuple[str, str], list[tuple[Path, str]]] = {}
    sources = []
    for archive in sorted(root.glob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as z:
                members = [m for m in z.namelist() if m.lower().endswith(".png")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise MamlrunError(f"omniglot: {archive} is not a readable zip archive ({exc})") from None
        found = _group(members, archive)
        sources.append(archive)
        for key, images in found.items():
            characters.setdefault(key, images)
    pngs = [p for p in root.rglob("*.png") if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if pngs:
        sources.append(root)
        for key, images in _group([str(p.relative_to(root)) for p in pngs], root).items():
            characters.setdefault(key, images)
    return characters, sources


def _group(members: Sequence[str], source: Path) -> dict[tuple[str, str], list[tuple[Path, str]]]:
    out: dict[tuple[str, str], list[tuple[Path, str]]] = {}
    for member in sorted(members):
        parts = Path(member).parts
        if ".." in parts or Path(member).is_absolute():  # a path that leaves the archive is no drawing
            raise MamlrunError(f"omniglot: {source} holds an unsafe member {member!r} (absolute or with '..')")
        if len(parts) >= 3:
            out.setdefault((parts[-3], parts[-2]), []).append((source, member))
    return out


def decode(characters: dict, keys: list, per_class: int, size: int) -> torch.Tensor:
    """``[characters, per_class, 1, size, size]`` uint8, strokes bright on black (as the MAML code feeds them)."""
    out = np.empty((len(keys), per_class, 1, size, size), dtype=np.uint8)
    archives: dict[Path, zipfile.ZipFile] = {}
    try:
        for i, key in enumerate(tqdm(keys, desc="decode omniglot", unit="char", leave=False)):
            for j, (source, member) in enumerate(characters[key][:per_class]):
                if source.suffix == ".zip":
                    z = archives.get(source) or archives.setdefault(source, zipfile.ZipFile(source))
                    raw = io.BytesIO(z.read(member))
                else:
                    raw = source / member
                try:
                    with Image.open(raw) as im:
                        small = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
                except (OSError, ValueError) as exc:  # a damaged or foreign file: name it, not PIL's internals
                    reason = str(exc).split(" <")[0] or type(exc).__name__  # drop "<_io.BytesIO object at 0x...>"
                    raise MamlrunError(f"omniglot: cannot decode {member} in {source}: {reason}") from None
                out[i, j, 0] = 255 - np.asarray(small, dtype=np.uint8)
    finally:
        for z in archives.values():
            z.close()
    return torch.from_numpy(out)


def split_counts(split: Sequence[float], total: int, root: Path) -> list[int]:
    """Characters per split from counts (``[1100, 100, 423]``) or fractions (``[0.6, 0.2, 0.2]``)."""
    if isinstance(split, str) or len(split) != 3 or any(s < 0 for s in split):
        raise MamlrunError(
            f"omniglot: dataset.split needs three non-negative numbers (train, val, test) or '{OFFICIAL_SPLIT}', "
            f"got {split}"
        )
    if all(s <= 1 for s in split) and sum(split) <= 1 + 1e-9 and not all(float(s).is_integer() for s in split):
        counts = [round(s * total) for s in split]
        if abs(sum(split) - 1) < 1e-9:  # fractions of everything: the test split takes what rounding left
            counts[2] = total - counts[0] - counts[1]
    else:
        counts = [int(s) for s in split]
    if sum(counts) > total:
        raise MamlrunError(
            f"omniglot: dataset.split asks for {sum(counts)} characters but {root} holds {total}; "
            "give fractions instead, e.g. dataset.split=[0.6,0.2,0.2]"
        )
    return counts


def shuffled_split(keys: list, split: Sequence[float], seed: int, root: Path) -> list[list[int]]:
    """Indices of ``keys`` per split (train, val, test): characters shuffled with ``seed``, dealt by counts."""
    counts = split_counts(split, len(keys), root)
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    bounds = np.cumsum([0, *counts])
    return [sorted(order[bounds[i] : bounds[i + 1]]) for i in range(3)]


def collection(source: Path, member: str) -> str:
    """``"background"`` or ``"evaluation"``: the official set a drawing belongs to (by archive or folder name)."""
    where = " ".join([source.name, *Path(member).parts[:-3]]).lower()
    return "evaluation" if "evaluation" in where else "background" if "background" in where else "unknown"


def official_split(characters: dict, keys: list, seed: int, root: Path, val_characters: int = 100) -> list[list[int]]:
    """Lake et al.'s protocol: meta-train and validate on the background alphabets, test on the evaluation ones.

    Whole background alphabets (shuffled with ``seed``) are held out for validation until they hold at
    least ``val_characters`` characters, so no alphabet is in two splits.
    """
    sets = [collection(*characters[k][0]) for k in keys]
    background = sorted({k[0] for k, s in zip(keys, sets) if s == "background"})
    if not background or "evaluation" not in sets:
        raise MamlrunError(
            f"omniglot: dataset.split={OFFICIAL_SPLIT} needs the official images_background and images_evaluation "
            f"sets; {root} does not hold both"
        )
    random.Random(seed).shuffle(background)
    val_alphabets: set[str] = set()
    for alphabet in background:
        if sum(k[0] in val_alphabets for k, s in zip(keys, sets) if s == "background") >= val_characters:
            break
        val_alphabets.add(alphabet)
    train = [i for i, (k, s) in enumerate(zip(keys, sets)) if s == "background" and k[0] not in val_alphabets]
    val = [i for i, (k, s) in enumerate(zip(keys, sets)) if s == "background" and k[0] in val_alphabets]
    test = [i for i, s in enumerate(sets) if s == "evaluation"]
    return [train, val, test]


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
        root = Path(root).expanduser()
        characters, sources = find_characters(root) if root.is_dir() else ({}, [])
        if not characters and download:
            for archive, sha in OFFICIAL.items():
                fetch(f"{url.rstrip('/')}/{archive}", root / archive, sha)
            characters, sources = find_characters(root)
        if not characters:
            raise MamlrunError(
                f"omniglot: no data in {root}: put images_background.zip and images_evaluation.zip there "
                "(or any folder in the layout <Alphabet>/<character>/*.png), or set dataset.download=true"
            )
        keys = sorted(characters)
        per_class = min(len(v) for v in characters.values())
        key = fingerprint(sources, size=image_size, per_class=per_class, n=len(keys))
        cache_file = cache_path("omniglot", root, image_size, cache_dir)
        images = cached(cache_file, key, lambda: {"images": decode(characters, keys, per_class, image_size)})["images"]

        if split == OFFICIAL_SPLIT:
            parts = official_split(characters, keys, split_seed, root)
        else:
            parts = shuffled_split(keys, split, split_seed, root)
        arrays = {s: images[part] for s, part in zip(SPLITS, parts)}
        empty = [s for s, a in arrays.items() if len(a) == 0]
        if empty:
            raise MamlrunError(f"omniglot: the {', '.join(empty)} split is empty; adjust dataset.split")
        super().__init__(arrays, ways, shots, query_shots, eval_query_shots, rotations, name)
