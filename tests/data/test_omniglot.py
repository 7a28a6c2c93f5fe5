"""Omniglot from the real official archives and from folders in its layout."""

from __future__ import annotations

import os
import time

import pytest
import torch

from mamlrun.data.omniglot import Omniglot, find_characters
from mamlrun.errors import MamlrunError
from tests.data.conftest import copy_archives


def test_real_small_archives_dedupe_shared_alphabets(omniglot_small):
    characters, sources = find_characters(omniglot_small)
    # Greek and Latin are in both archives: 136 + 156 characters, 242 distinct, 8 alphabets.
    assert len(characters) == 242 and len({a for a, _ in characters}) == 8
    assert all(len(v) == 20 for v in characters.values())
    assert len(sources) == 2


def test_real_archives_decode_split_and_sample(omniglot_small):
    data = Omniglot(omniglot_small, ways=5, shots=1, query_shots=1, split=[0.6, 0.2, 0.2])
    sizes = {s: a.shape[0] for s, a in data.arrays.items()}
    assert sum(sizes.values()) == 242 and sizes["train"] == 145
    assert data.arrays["train"].shape[1:] == (20, 1, 28, 28) and data.arrays["train"].dtype == torch.uint8
    # Strokes are bright on black: most pixels of a character are background.
    assert data.arrays["train"].float().mean() < 60
    # Character sets of the splits are disjoint.
    flat = {s: {bytes(a[i].numpy()) for i in range(len(a))} for s, a in data.arrays.items()}
    assert not flat["train"] & flat["test"] and not flat["train"] & flat["val"]
    batch = data.sample(4, "test", torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (4, 5, 1, 28, 28) and batch.num_tasks == 4
    assert data.num_classes("train") == 4 * 145


def test_cache_is_reused_and_rebuilt_when_the_sources_change(omniglot_small, tmp_path):
    root = copy_archives(omniglot_small, tmp_path / "omni")
    Omniglot(root, 5, 1, 1, split=[0.6, 0.2, 0.2])
    cache = next((tmp_path / "cache").glob("omniglot_*.pt"))
    stamp = cache.stat().st_mtime_ns
    Omniglot(root, 5, 1, 1, split=[0.6, 0.2, 0.2])
    assert cache.stat().st_mtime_ns == stamp, "an unchanged source must not be decoded again"
    (root / "images_background_small2.zip").unlink()
    time.sleep(0.01)
    data = Omniglot(root, 5, 1, 1, split=[0.6, 0.2, 0.2])
    assert cache.stat().st_mtime_ns != stamp
    assert sum(a.shape[0] for a in data.arrays.values()) == 136
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_any_folder_in_the_layout_with_a_count_split(omniglot_folder):
    data = Omniglot(omniglot_folder, ways=3, shots=2, query_shots=2, split=[4, 1, 1])
    assert {s: a.shape[0] for s, a in data.arrays.items()} == {"train": 4, "val": 1, "test": 1}
    assert data.num_classes("val") == 4  # one character, four rotations


def test_same_split_seed_same_split(omniglot_folder):
    a = Omniglot(omniglot_folder, 2, 1, 1, split=[4, 1, 1])
    b = Omniglot(omniglot_folder, 2, 1, 1, split=[4, 1, 1])
    assert torch.equal(a.arrays["test"], b.arrays["test"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": [1100, 100, 423]}, "asks for 1623 characters but .* holds 6"),
        ({"split": [4, 1, 1], "ways": 5}, "ways=5 but the val split has only 4 classes"),
        (
            {"split": [4, 1, 1], "shots": 15, "query_shots": 6},
            "shots \\+ query_shots = 15 \\+ 6 but classes have only 20",
        ),
        ({"split": [6, 0, 0]}, "the val, test split is empty"),
    ],
)
def test_impossible_requests_are_clear_errors(omniglot_folder, kwargs, message):
    args = {"ways": 2, "shots": 1, "query_shots": 1, **kwargs}
    with pytest.raises(MamlrunError, match=message):
        Omniglot(omniglot_folder, **args)


def test_missing_data_says_what_to_put_where(tmp_path):
    with pytest.raises(MamlrunError, match=r"put images_background\.zip and images_evaluation\.zip there"):
        Omniglot(tmp_path / "nothing", 5, 1, 1)


def test_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"<html>not found</html>")
    with pytest.raises(MamlrunError, match="not a readable zip archive"):
        Omniglot(tmp_path, 5, 1, 1)
    assert os.listdir(tmp_path) == ["images_background.zip"]
