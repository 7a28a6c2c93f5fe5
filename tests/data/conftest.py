"""Fixtures for the data tests: the real Omniglot archives, generated image folders and pickles."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED

OMNIGLOT = SHARED / "data" / "omniglot"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Every test decodes into its own cache."""
    monkeypatch.setenv("MAMLRUN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def omniglot_small():
    if not (OMNIGLOT / "images_background_small1.zip").exists():
        pytest.skip(f"the real Omniglot archives are not at {OMNIGLOT}")
    return OMNIGLOT


@pytest.fixture
def omniglot_folder(tmp_path):
    """A tiny folder in Omniglot's layout: 2 alphabets x 3 characters x 20 drawings, 105x105."""
    rng = np.random.default_rng(0)
    root = tmp_path / "omni"
    for alphabet in ("Alpha", "Beta"):
        for c in range(1, 4):
            folder = root / "images_background" / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(20):
                pixels = (rng.random((105, 105)) > 0.1).astype(np.uint8) * 255
                Image.fromarray(pixels).convert("1").save(folder / f"{c:02d}{d:02d}_{d + 1:02d}.png")
    return root


def tiny_miniimagenet(root, form: str, classes=(5, 3, 3), per_class=8, size=84):
    """MiniImagenet-shaped data in one of its two on-disk forms; returns the arrays written per split."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n_classes in zip(("train", "val", "test"), classes):
        data = rng.integers(0, 256, (n_classes * per_class, size, size, 3), dtype=np.uint8)
        written[split] = data.reshape(n_classes, per_class, size, size, 3)
        labels = [f"n{split}{c:03d}" for c in range(n_classes)]
        if form == "pickle":
            class_dict = {lab: list(range(c * per_class, (c + 1) * per_class)) for c, lab in enumerate(labels)}
            with (root / f"mini-imagenet-cache-{split}.pkl").open("wb") as f:
                pickle.dump({"image_data": data, "class_dict": class_dict}, f)
        else:
            (root / "images").mkdir(exist_ok=True)
            lines = ["filename,label"]
            for c, lab in enumerate(labels):
                for i in range(per_class):
                    name = f"{lab}{i:08d}.png"  # lossless, so the test can compare pixels
                    Image.fromarray(data[c * per_class + i]).save(root / "images" / name)
                    lines.append(f"{name},{lab}")
            (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return written


def copy_archives(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for archive in src.glob("*.zip"):
        shutil.copy(archive, dst / archive.name)
    return dst


def tiny_cifarfs(root, classes=(6, 4, 4), per_class=8, size=32, nested=False):
    """CIFAR-FS in its distributed layout: ``data/<class>/*.png`` and ``splits/bertinetto/<split>.txt``.

    Returns the images written, ``{split: {class: [H, W, 3] uint8 array, ...]}}``; with ``nested``
    the layout lies inside ``root/cifar100``, as the common archive unzips.
    """
    rng = np.random.default_rng(0)
    base = root / "cifar100" if nested else root
    (base / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n_classes in zip(("train", "val", "test"), classes):
        names = [f"{split}_class_{c:02d}" for c in range(n_classes)]
        written[split] = {}
        for name in names:
            (base / "data" / name).mkdir(parents=True)
            images = rng.integers(0, 256, (per_class, size, size, 3), dtype=np.uint8)
            for i, pixels in enumerate(images):
                Image.fromarray(pixels).save(base / "data" / name / f"{name}_s_{i:03d}.png")
            written[split][name] = images
        (base / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return written
