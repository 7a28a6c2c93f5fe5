"""The shared image pipeline through a reader written here: fingerprints, the checksummed cache, one-line errors."""

from __future__ import annotations

import ast
import io
import os
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlrun.data import cifarfs, miniimagenet, omniglot
from mamlrun.data.images import SPLITS, ImageTasks
from mamlrun.data.pipeline import Listing, Reader, load
from mamlrun.data.sources import Image as ImageFile
from mamlrun.data.sources import folder_members, gray
from mamlrun.errors import MamlrunError
from tests import crafted


class Toy(Reader):
    """A whole dataset in a few lines: ``<split>/<class>/*.png``, gray, the folders are the splits."""

    name, how_to = "toy", "put <split>/<class>/*.png there"

    def __init__(self) -> None:
        self.decoded = 0

    def find(self, root: Path) -> Listing | None:
        groups = {
            s: {c.name: [ImageFile(c, m) for m in folder_members(c)] for c in (root / s).glob("*")} for s in SPLITS
        }
        return Listing(root, groups, [root / s / c for s in SPLITS for c in groups[s]]) if groups["train"] else None

    def convert(self, image, size):
        self.decoded += 1
        return gray(image, size)


@pytest.fixture
def toy(tmp_path):
    """3 splits x 3 classes x 4 images of 8x8."""
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for c in range(3):
            (tmp_path / "toy" / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                    tmp_path / "toy" / split / f"c{c}" / f"{i}.png"
                )
    return tmp_path / "toy"


def run(root, cache, size=8):
    reader = Toy()
    return load(reader, root, size, cache), reader.decoded


def test_decoded_once_then_read_from_the_cache(toy, tmp_path):
    arrays, decoded = run(toy, tmp_path / "cache")
    assert decoded == 36 and {s: tuple(a.shape) for s, a in arrays.items()} == {s: (3, 4, 1, 8, 8) for s in SPLITS}
    again, decoded = run(toy, tmp_path / "cache")
    assert decoded == 0 and all(torch.equal(arrays[s], again[s]) for s in SPLITS)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [next((tmp_path / "cache").glob("toy_*_8.pt")).name]
    tasks = ImageTasks(again, ways=3, shots=1, query_shots=3)
    assert tasks.sample(2, "test", torch.Generator().manual_seed(0)).x_query.shape == (2, 9, 1, 8, 8)


@pytest.mark.parametrize("change", ["touch", "add", "remove", "size"])
def test_a_changed_source_invalidates_the_cache(toy, tmp_path, change):
    run(toy, tmp_path / "cache")
    image = toy / "val" / "c1" / "2.png"
    if change == "touch":  # same bytes, new modification time
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    elif change == "add":
        for c in range(3):
            (toy / "val" / f"c{c}" / "9.png").write_bytes(image.read_bytes())
    elif change == "remove":
        image.unlink()
    arrays, decoded = run(toy, tmp_path / "cache", size=6 if change == "size" else 8)
    assert decoded == 36 - (change == "remove") * 3 + (change == "add") * 3
    assert arrays["val"].shape[1] == {"add": 5, "remove": 3}.get(change, 4)
    assert len(list((tmp_path / "cache").glob("toy_*.pt"))) == (2 if change == "size" else 1)


@pytest.mark.parametrize("damage", ["flipped byte", "random bytes", "code-running", "no checksums"])
def test_a_damaged_cache_is_rebuilt_in_one_line(toy, tmp_path, capsys, damage):
    fresh, _ = run(toy, tmp_path / "cache")
    path = next((tmp_path / "cache").glob("toy_*.pt"))
    marker = tmp_path / "ran"
    if damage == "flipped byte":
        raw = bytearray(path.read_bytes())
        raw[raw.find(fresh["val"].numpy().tobytes()[:32]) + 40] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif damage == "code-running":
        crafted.crafted_checkpoint(path, marker)
    else:
        blob = torch.load(path, weights_only=True)
        torch.save({"key": blob["key"], "arrays": blob["arrays"]}, path)
    capsys.readouterr()
    arrays, decoded = run(toy, tmp_path / "cache")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mamlrun:")]
    expected = {"flipped byte": "is damaged (checksum of 'val'", "no checksums": "has no checksums"}
    assert len(err) == 1 and expected.get(damage, "is unreadable") in err[0] and err[0].endswith("rebuilding it")
    assert decoded == 36 and all(torch.equal(arrays[s], fresh[s]) for s in SPLITS)
    assert not marker.exists()
    assert torch.load(path, weights_only=True)["sha256"].keys() == set(SPLITS)  # the rebuilt cache is intact


def test_an_undecodable_image_is_one_line_and_nothing_is_cached(toy, tmp_path):
    (toy / "test" / "c2" / "1.png").write_bytes(b"<html>not an image</html>")
    with pytest.raises(MamlrunError) as info:
        run(toy, tmp_path / "cache")
    assert str(info.value).startswith(f"toy: cannot decode 1.png in {toy / 'test' / 'c2'}: ")
    assert len(str(info.value).splitlines()) == 1 and not (tmp_path / "cache").exists()


def test_a_cache_folder_that_cannot_be_made_is_one_line(toy, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MamlrunError, match="cannot create the dataset cache folder"):
        run(toy, tmp_path / "file" / "cache")


def test_no_data_and_empty_splits_are_one_line(toy, tmp_path):
    with pytest.raises(MamlrunError, match=r"^toy: no data in \S*nothing: put <split>/<class>/\*\.png there$"):
        run(tmp_path / "nothing", tmp_path / "cache")
    for c in range(3):
        for image in (toy / "val" / f"c{c}").iterdir():
            image.unlink()
        (toy / "val" / f"c{c}").rmdir()
    with pytest.raises(MamlrunError, match="toy: the val data lists no classes"):
        run(toy, tmp_path / "cache")


def code_lines(source: str, skip: str | None = None) -> int:
    """Lines holding code: no blank lines, comments or docstrings, nor the class named ``skip``."""
    tree = ast.parse(source)
    excluded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == skip:
            excluded.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                excluded.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - excluded)


@pytest.mark.parametrize(
    ("module", "dataset"),
    [(omniglot, "Omniglot"), (miniimagenet, "MiniImagenet"), (cifarfs, "CIFARFS")],
)
def test_a_dataset_is_a_short_reader(module, dataset):
    """Beyond its constructor (which only forwards its settings), a dataset is its reader and split rule.

    About 80 lines of code: Omniglot's, the longest, carries two split protocols and the download.
    """
    assert code_lines(Path(module.__file__).read_text(), skip=dataset) <= 85
