"""The complete Omniglot release (``../shared/data/omniglot_full``): both split protocols on the real archives."""

from __future__ import annotations

import pytest

from mamlrun.data.omniglot import Omniglot, collection, find_characters, official_split, shuffled_split
from mamlrun.paths import SHARED_DATA

FULL = SHARED_DATA / "omniglot_full"


@pytest.fixture(scope="module")
def characters():
    if not (FULL / "images_evaluation.zip").is_file():
        pytest.skip(f"the full Omniglot release is not at {FULL}")
    found, _ = find_characters(FULL)
    return found, sorted(found)


def test_the_release_holds_1623_characters_of_20_drawings(characters):
    found, keys = characters
    assert len(keys) == 1623 and {len(v) for v in found.values()} == {20}
    sets = [collection(*found[k][0]) for k in keys]
    assert (sets.count("background"), sets.count("evaluation")) == (964, 659)
    assert len({k[0] for k, s in zip(keys, sets) if s == "background"}) == 30
    assert len({k[0] for k, s in zip(keys, sets) if s == "evaluation"}) == 20


def test_the_papers_split_deals_1100_100_423_disjoint_characters(characters):
    _, keys = characters
    parts = shuffled_split(keys, [1100, 100, 423], 1, FULL)
    assert [len(p) for p in parts] == [1100, 100, 423]
    assert len(set().union(*map(set, parts))) == 1623  # every character in exactly one split


def test_the_official_protocol_tests_on_the_evaluation_alphabets_only(characters):
    found, keys = characters
    train, val, test = official_split(found, keys, 1, FULL)
    alphabets = [{keys[i][0] for i in part} for part in (train, val, test)]
    assert not (alphabets[0] & alphabets[1] or alphabets[0] & alphabets[2] or alphabets[1] & alphabets[2])
    assert len(train) + len(val) == 964 and len(test) == 659 and len(val) >= 100
    assert all(collection(*found[keys[i]][0]) == "evaluation" for i in test)
    assert official_split(found, keys, 1, FULL) == [train, val, test]  # deterministic
    assert official_split(found, keys, 2, FULL)[1] != val  # the seed picks the validation alphabets


def test_the_loader_builds_both_protocols_with_rotation_classes(characters):
    paper = Omniglot(FULL, ways=5, shots=1, query_shots=1)
    assert [paper.arrays[s].shape[0] for s in ("train", "val", "test")] == [1100, 100, 423]
    assert paper.num_classes("train") == 4400 and paper.arrays["test"].shape[1:] == (20, 1, 28, 28)
    official = Omniglot(FULL, ways=20, shots=5, query_shots=5, split="official")
    assert official.arrays["test"].shape[0] == 659 and official.num_classes("test") == 4 * 659
    assert official.arrays["train"].shape[0] + official.arrays["val"].shape[0] == 964
