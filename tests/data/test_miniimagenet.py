"""MiniImagenet from its two common on-disk forms, generated small."""

from __future__ import annotations

import pytest
import torch

from mamlrun.data.miniimagenet import MiniImagenet
from mamlrun.errors import MamlrunError
from tests.data.conftest import tiny_miniimagenet


@pytest.mark.parametrize("form", ["pickle", "images"])
def test_both_forms_load_the_same_pixels_per_class(tmp_path, form):
    written = tiny_miniimagenet(tmp_path / "mini", form)
    data = MiniImagenet(tmp_path / "mini", ways=3, shots=2, query_shots=3)
    for split, expected in written.items():
        got = data.arrays[split]
        assert got.shape == (expected.shape[0], expected.shape[1], 3, 84, 84)
        assert torch.equal(got, torch.from_numpy(expected).permute(0, 1, 4, 2, 3))
    batch = data.sample(2, "train", torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (2, 6, 3, 84, 84)
    assert batch.x_query.shape == (2, 9, 3, 84, 84)  # 3 ways x query_shots=3
    assert data.sample(2, "test", torch.Generator()).x_query.shape[1] == 9  # eval_query_shots defaults to it


def test_missing_data_names_the_files(tmp_path):
    with pytest.raises(MamlrunError) as info:
        MiniImagenet(tmp_path, 5, 1, 15)
    message = str(info.value)
    for name in ("images/", "train.csv", "val.csv", "test.csv", "mini-imagenet-cache-train.pkl"):
        assert name in message


def test_more_ways_than_classes_is_rejected(tmp_path):
    tiny_miniimagenet(tmp_path / "mini", "pickle")
    with pytest.raises(MamlrunError, match="ways=5 but the val split has only 3 classes"):
        MiniImagenet(tmp_path / "mini", ways=5, shots=1, query_shots=1)


def test_corrupt_pickle_is_a_clear_error(tmp_path):
    tiny_miniimagenet(tmp_path / "mini", "pickle")
    (tmp_path / "mini" / "mini-imagenet-cache-val.pkl").write_bytes(b"garbage")
    with pytest.raises(MamlrunError, match=r"cannot read \S*mini-imagenet-cache-val\.pkl"):
        MiniImagenet(tmp_path / "mini", 3, 1, 1)
