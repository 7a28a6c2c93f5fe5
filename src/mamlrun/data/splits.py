"""Class splits dealt by count or fraction from a seeded shuffle of a dataset's classes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mamlrun.errors import MamlrunError


def split_counts(split: Sequence[float], total: int, root: Path, name: str, noun: str, other: str = "") -> list[int]:
    """Classes per split from counts (``[1100, 100, 423]``) or fractions (``[0.6, 0.2, 0.2]``) of ``total``.

    ``noun`` names the classes in errors ("characters"), ``other`` any further accepted value (" or 'official'").
    """
    if isinstance(split, str) or len(split) != 3 or any(s < 0 for s in split):
        raise MamlrunError(
            f"{name}: dataset.split needs three non-negative numbers (train, val, test){other}, got {split}"
        )
    if all(s <= 1 for s in split) and sum(split) <= 1 + 1e-9 and not all(float(s).is_integer() for s in split):
        counts = [round(s * total) for s in split]
        if abs(sum(split) - 1) < 1e-9:  # fractions of everything: the test split takes what rounding left
            counts[2] = total - counts[0] - counts[1]
    else:
        counts = [int(s) for s in split]
    if sum(counts) > total:
        raise MamlrunError(
            f"{name}: dataset.split asks for {sum(counts)} {noun} but {root} holds {total}; "
            "give fractions instead, e.g. dataset.split=[0.6,0.2,0.2]"
        )
    return counts


def shuffled_split(
    keys: list, split: Sequence[float], seed: int, root: Path, name: str, noun: str, other: str = ""
) -> list[list[int]]:
    """Indices of ``keys`` per split (train, val, test): the classes shuffled with ``seed``, dealt by counts."""
    counts = split_counts(split, len(keys), root, name, noun, other)
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    bounds = np.cumsum([0, *counts])
    return [sorted(order[bounds[i] : bounds[i + 1]]) for i in range(3)]
