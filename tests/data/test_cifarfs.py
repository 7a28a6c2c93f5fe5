"""CIFAR-FS on generated PNGs in its distributed layout (the real data cannot be downloaded here)."""

from __future__ import annotations

import pytest
import torch

from mamlrun.assemble import build_run
from mamlrun.data.cifarfs import CIFARFS
from mamlrun.errors import MamlrunError
from mamlrun.validation import validate
from tests.conftest import compose_config
from tests.data.conftest import tiny_cifarfs


def test_the_64_16_20_split_with_600_images_per_class_shape(tmp_path):
    written = tiny_cifarfs(tmp_path / "cifar", classes=(64, 16, 20), per_class=4)
    data = CIFARFS(tmp_path / "cifar", ways=5, shots=1, query_shots=2)
    assert {s: a.shape[0] for s, a in data.arrays.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(a.shape[1:] == (4, 3, 32, 32) and a.dtype == torch.uint8 for a in data.arrays.values())
    for split, classes in written.items():  # lossless PNGs: the pixels of every class, in sorted class order
        expected = torch.stack([torch.from_numpy(classes[c]) for c in sorted(classes)]).permute(0, 1, 4, 2, 3)
        assert torch.equal(data.arrays[split], expected)
    # No class in two splits: no image is in two splits.
    seen = {s: {bytes(img.numpy()) for img in a.flatten(0, 1)} for s, a in data.arrays.items()}
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])


def test_tasks_sample_from_one_split_with_disjoint_support_and_query(tmp_path):
    written = tiny_cifarfs(tmp_path / "cifar", nested=True)  # the layout inside cifar100/, as it unzips
    data = CIFARFS(tmp_path / "cifar", ways=3, shots=2, query_shots=3, eval_query_shots=1)
    batch = data.sample(5, "val", torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (5, 6, 3, 32, 32) and batch.x_query.shape == (5, 3, 3, 32, 32)
    assert data.sample(2, "train", torch.Generator()).x_query.shape == (2, 9, 3, 32, 32)
    val_images = {bytes(img): c for c, imgs in written["val"].items() for img in imgs.transpose(0, 3, 1, 2)}
    for t in range(5):
        support = [val_images[bytes((x * 255).round().to(torch.uint8).numpy())] for x in batch.x_support[t]]
        query = [val_images[bytes((x * 255).round().to(torch.uint8).numpy())] for x in batch.x_query[t]]
        # Each label is one val class, different labels different classes.
        by_label = {int(y): {c} for y, c in zip(batch.y_support[t], support)}
        for y, c in zip(batch.y_query[t], query):
            by_label[int(y)].add(c)
        assert all(len(c) == 1 for c in by_label.values()) and len(set().union(*by_label.values())) == 3
        assert not {bytes(x.numpy()) for x in batch.x_support[t]} & {bytes(x.numpy()) for x in batch.x_query[t]}


def test_other_image_sizes_are_resized(tmp_path):
    tiny_cifarfs(tmp_path / "cifar", per_class=3)
    data = CIFARFS(tmp_path / "cifar", ways=2, shots=1, query_shots=1, image_size=28)
    assert data.arrays["test"].shape == (4, 3, 3, 28, 28)


def test_missing_data_says_what_to_put_where(tmp_path):
    with pytest.raises(MamlrunError, match=r"cifarfs: no data in .*: put data/<class>/\*\.png .*splits/bertinetto"):
        CIFARFS(tmp_path, 5, 1, 15)


def test_a_class_in_two_split_files_is_refused(tmp_path):
    tiny_cifarfs(tmp_path / "cifar")
    (tmp_path / "cifar" / "splits" / "bertinetto" / "test.txt").write_text("train_class_00\ntest_class_01\n")
    with pytest.raises(MamlrunError, match=r"class 'train_class_00' is in both \S*train\.txt and \S*test\.txt"):
        CIFARFS(tmp_path / "cifar", 2, 1, 1)


@pytest.mark.parametrize("name", ["no_such_class", "../outside"])
def test_a_split_file_naming_a_missing_or_unsafe_class_is_one_line(tmp_path, name):
    tiny_cifarfs(tmp_path / "cifar")
    (tmp_path / "cifar" / "splits" / "bertinetto" / "val.txt").write_text(f"val_class_00\n{name}\n")
    with pytest.raises(MamlrunError, match=r"which has no images in|unsafe member '\.\./outside'") as info:
        CIFARFS(tmp_path / "cifar", 2, 1, 1)
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_too_few_classes_or_images_is_rejected(tmp_path):
    tiny_cifarfs(tmp_path / "cifar", per_class=3)
    with pytest.raises(MamlrunError, match="ways=5 but the val split has only 4 classes"):
        CIFARFS(tmp_path / "cifar", ways=5, shots=1, query_shots=1)
    with pytest.raises(MamlrunError, match=r"shots \+ query_shots = 1 \+ 15 but classes have only 3 images"):
        CIFARFS(tmp_path / "cifar", ways=2, shots=1, query_shots=15)


def test_the_config_brings_the_recipe_and_builds_a_runnable_setup(tmp_path):
    tiny_cifarfs(tmp_path / "cifar", classes=(5, 5, 5), per_class=16)
    cfg = compose_config("dataset=cifarfs", f"dataset.root={tmp_path / 'cifar'}", f"dataset.cache_dir={tmp_path}")
    assert (cfg.model.name, cfg.model.filters, cfg.model.pool) == ("conv4_miniimagenet", 32, "max")
    assert (cfg.ways, cfg.shots, cfg.query_shots, cfg.inner_lr, cfg.meta_batch_size) == (5, 1, 15, 0.01, 4)
    validate(cfg)
    sampler, learner = build_run(cfg)
    batch = sampler.sample(2, "train", torch.Generator().manual_seed(0))
    assert sampler.input_shape == (3, 32, 32)
    assert learner.model(batch.x_support[0]).shape == (5, 5)
