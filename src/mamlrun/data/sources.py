"""Image files of a dataset, in folders or inside zip archives, listed safely and decoded one at a time."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image as PILImage

from mamlrun.errors import MamlrunError


class Image(NamedTuple):
    """One image file: ``member`` (a relative path) inside ``source`` (a folder or a zip archive)."""

    source: Path
    member: str


def archive_members(archive: Path, name: str, suffix: str = ".png") -> list[str]:
    """The ``suffix`` files in a zip archive, sorted; a member that would leave the archive is an error."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = sorted(m for m in z.namelist() if m.lower().endswith(suffix))
    except (zipfile.BadZipFile, OSError) as exc:
        raise MamlrunError(f"{name}: {archive} is not a readable zip archive ({exc})") from None
    for member in members:
        check_member(member, archive, name)
    return members


def check_member(member: str, where: Path, name: str) -> str:
    """``member``, a relative path that stays inside ``where``; else an error naming it."""
    if ".." in Path(member).parts or Path(member).is_absolute():
        raise MamlrunError(f"{name}: {where} holds an unsafe member {member!r} (absolute or with '..')")
    return member


def folder_members(folder: Path, suffix: str = ".png") -> list[str]:
    """The ``suffix`` files under ``folder`` at any depth (hidden folders skipped), as sorted relative paths."""
    found = (p.relative_to(folder) for p in folder.rglob(f"*{suffix}") if p.is_file())
    return sorted(str(p) for p in found if not any(part.startswith(".") for part in p.parts))


def gray(im: PILImage.Image, size: int) -> np.ndarray:
    """``[1, size, size]`` uint8: luminance, resized with Lanczos filtering."""
    return np.asarray(im.convert("L").resize((size, size), PILImage.Resampling.LANCZOS), dtype=np.uint8)[None]


def rgb(im: PILImage.Image, size: int) -> np.ndarray:
    """``[3, size, size]`` uint8: RGB, resized with Lanczos filtering only when not already ``size``."""
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), PILImage.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


class Opener:
    """Opens images from folders and zip archives, keeping each archive open until the context ends."""

    def __init__(self, name: str) -> None:
        self.name, self.archives = name, {}

    def __enter__(self) -> Opener:
        return self

    def __exit__(self, *exc) -> None:
        for z in self.archives.values():
            z.close()
        self.archives.clear()

    def pixels(self, image: Image, convert) -> np.ndarray:
        """``convert(PIL image)`` of one image; a missing, damaged or foreign file is one line naming it."""
        source, member = image
        if source.suffix == ".zip":
            if source not in self.archives:
                self.archives[source] = zipfile.ZipFile(source)
            raw = io.BytesIO(self.archives[source].read(member))
        elif (source / member).is_file():
            raw = source / member
        else:
            raise MamlrunError(f"{self.name}: {member} is not in {source}")
        try:
            with PILImage.open(raw) as im:
                return convert(im)
        except (OSError, ValueError) as exc:  # name the file, not PIL's internals ("<_io.BytesIO object at 0x...>")
            reason = str(exc).split(" <")[0] or type(exc).__name__
            raise MamlrunError(f"{self.name}: cannot decode {member} in {source}: {reason}") from None
