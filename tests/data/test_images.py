"""Task sampler properties on synthetic uint8 arrays whose pixels identify their class and image."""

from __future__ import annotations

import pytest
import torch

from mamlrun.data.images import ImageTasks
from mamlrun.errors import MamlrunError


def labelled_arrays(classes=12, per_class=10, size=6):
    """Image (c, i) holds c at its top-left pixel and i at its bottom-right: a sample says where it came from."""
    arrays = {}
    for split, n in (("train", classes), ("val", 6), ("test", 6)):
        a = torch.zeros(n, per_class, 1, size, size, dtype=torch.uint8)
        a[:, :, 0, 0, 0] = torch.arange(n).view(-1, 1)
        a[:, :, 0, -1, -1] = torch.arange(per_class).view(1, -1)
        arrays[split] = a
    return arrays


def origin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, image) of unrotated samples, from the marker pixels."""
    px = (x * 255).round().long()
    return px[..., 0, 0, 0], px[..., 0, -1, -1]


def test_shapes_labels_and_disjoint_support_query():
    sampler = ImageTasks(labelled_arrays(), ways=4, shots=2, query_shots=3)
    batch = sampler.sample(7, "train", torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (7, 8, 1, 6, 6) and batch.x_query.shape == (7, 12, 1, 6, 6)
    assert batch.x_support.dtype == torch.float32 and batch.x_support.min() >= 0 and batch.x_support.max() <= 1
    for t in range(7):
        assert batch.y_support[t].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert batch.y_query[t].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
        cls_s, img_s = origin(batch.x_support[t])
        cls_q, img_q = origin(batch.x_query[t])
        # Each label is one source class, distinct per task; support and query images never overlap.
        classes = [
            set(cls_s[batch.y_support[t] == k].tolist()) | set(cls_q[batch.y_query[t] == k].tolist()) for k in range(4)
        ]
        assert all(len(c) == 1 for c in classes) and len({min(c) for c in classes}) == 4
        for k in range(4):
            s = set(img_s[batch.y_support[t] == k].tolist())
            q = set(img_q[batch.y_query[t] == k].tolist())
            assert len(s) == 2 and len(q) == 3 and not s & q


def test_eval_splits_use_eval_query_shots():
    sampler = ImageTasks(labelled_arrays(), ways=3, shots=1, query_shots=5, eval_query_shots=1)
    g = torch.Generator().manual_seed(0)
    assert sampler.sample(2, "train", g).x_query.shape[1] == 15
    assert sampler.sample(2, "test", g).x_query.shape[1] == 3


def test_same_seed_same_tasks_other_seed_other_tasks():
    sampler = ImageTasks(labelled_arrays(), ways=3, shots=1, query_shots=1)
    a = sampler.sample(4, "train", torch.Generator().manual_seed(5))
    b = sampler.sample(4, "train", torch.Generator().manual_seed(5))
    c = sampler.sample(4, "train", torch.Generator().manual_seed(6))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert not torch.equal(a.x_support, c.x_support)


def test_rotations_make_four_classes_per_source_class():
    arrays = {s: torch.randint(0, 256, (3, 6, 1, 5, 5), dtype=torch.uint8) for s in ("train", "val", "test")}
    sampler = ImageTasks(arrays, ways=12, shots=1, query_shots=1, rotations=True)
    assert sampler.num_classes("train") == 12
    batch = sampler.sample(1, "train", torch.Generator().manual_seed(0))
    originals = (arrays["train"].float() / 255).flatten(0, 1)
    seen = set()
    for image in batch.x_support[0]:
        matches = [
            (i, k) for i, o in enumerate(originals) for k in range(4) if torch.equal(o.rot90(k, (-2, -1)), image)
        ]
        assert matches, "every sample is a rotation of a source image"
        seen.add((matches[0][0] // 6, matches[0][1]))
    assert len(seen) == 12  # all 3 characters x 4 rotations, each its own class


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 13, "shots": 1, "query_shots": 1}, "ways=13 but the train split has only 12 classes"),
        ({"ways": 2, "shots": 6, "query_shots": 5}, "shots + query_shots = 6 + 5 but classes have only 10 images"),
    ],
)
def test_impossible_task_shapes_are_rejected(kwargs, message):
    with pytest.raises(MamlrunError, match=message.replace("+", r"\+")):
        ImageTasks(labelled_arrays(), **kwargs)
