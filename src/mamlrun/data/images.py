"""N-way K-shot tasks sampled on the training device from uint8 image arrays."""

from __future__ import annotations

import torch

from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError
from mamlrun.objectives import Classification

SPLITS = ("train", "val", "test")


class ImageTasks:
    """Samples whole meta-batches of N-way K-shot tasks as tensors, on the device the images live on.

    ``arrays[split]`` is a uint8 tensor ``[classes, images_per_class, C, H, W]``. With
    ``rotations``, every class also appears rotated by 90, 180 and 270 degrees as three further
    classes (Omniglot's augmentation). For every task: ``ways`` distinct classes in random order
    (labels ``0..ways-1``), then ``shots + query_shots`` distinct images of each; the first
    ``shots`` form the support set and the rest the query set, so they never overlap. During
    meta-training the query set has ``query_shots`` images per class, at validation and test
    ``eval_query_shots``.

    No Python loop over tasks or images runs per batch: indices are drawn with ``topk`` over
    random keys and the images gathered in one indexing operation, then scaled to ``[0, 1]``.
    """

    objective = Classification()

    def __init__(
        self,
        arrays: dict[str, torch.Tensor],
        ways: int,
        shots: int,
        query_shots: int,
        eval_query_shots: int | None = None,
        rotations: bool = False,
        name: str = "images",
    ) -> None:
        self.name, self.ways, self.shots, self.query_shots = name, ways, shots, query_shots
        self.eval_query_shots = query_shots if eval_query_shots is None else eval_query_shots
        self.rotations = rotations
        self.arrays = arrays
        self.device, self.dtype = torch.device("cpu"), torch.float32
        some = next(iter(arrays.values()))
        self.input_shape = tuple(some.shape[2:])
        self.output_dim = ways
        if rotations and self.input_shape[-1] != self.input_shape[-2]:
            raise MamlrunError(f"{name}: rotations need square images, got {self.input_shape}")
        for split, data in arrays.items():
            classes = self.num_classes(split)
            if ways > classes:
                raise MamlrunError(f"{name}: ways={ways} but the {split} split has only {classes} classes")
            for query in {query_shots, self.eval_query_shots}:
                if shots + query > data.shape[1]:
                    raise MamlrunError(
                        f"{name}: shots + query_shots = {shots} + {query} but classes have only {data.shape[1]} images"
                    )

    def num_classes(self, split: str) -> int:
        return self.arrays[split].shape[0] * (4 if self.rotations else 1)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ImageTasks:
        self.device, self.dtype = torch.device(device), dtype
        self.arrays = {k: v.to(self.device) for k, v in self.arrays.items()}
        return self

    def sample(self, num_tasks: int, split: str, generator: torch.Generator) -> TaskBatch:
        data = self.arrays[split]
        chars, per_class = data.shape[:2]
        query = self.query_shots if split == "train" else self.eval_query_shots
        n = self.shots + query

        def draw(*shape: int, k: int) -> torch.Tensor:
            keys = torch.rand(*shape, generator=generator, device=self.device)
            return keys.topk(k, dim=-1).indices

        classes = draw(num_tasks, self.num_classes(split), k=self.ways)  # [T, N]
        images = draw(num_tasks, self.ways, per_class, k=n)  # [T, N, S]
        x = data[(classes % chars).unsqueeze(-1), images]  # [T, N, S, C, H, W]
        if self.rotations:
            turns = (classes // chars).view(num_tasks, self.ways, 1, 1, 1, 1)
            for k in (1, 2, 3):
                x = torch.where(turns == k, x.rot90(k, dims=(-2, -1)), x)
        x = x.to(self.dtype) / 255
        labels = torch.arange(self.ways, device=self.device).view(1, -1, 1)
        y = labels.expand(num_tasks, self.ways, n)
        flat = lambda t: t.flatten(1, 2)  # noqa: E731  [T, N, s, ...] -> [T, N*s, ...]
        return TaskBatch(
            flat(x[:, :, : self.shots]),
            flat(y[:, :, : self.shots]).contiguous(),
            flat(x[:, :, self.shots :]),
            flat(y[:, :, self.shots :]).contiguous(),
        )
