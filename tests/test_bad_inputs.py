"""Every bad input is one line: the ``mamlrun`` command, as a subprocess, on a table of bad or hostile inputs.

Each case must end with exit status 2, exactly one line on stderr that starts ``mamlrun: error:``
and says what is wrong, no traceback, and no file created or changed (no run directory, no cache,
nothing a hostile file could have made).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests import crafted
from tests.conftest import MAMLRUN

TINY = ["meta_iterations=2", "train.val_every=0", "eval.test_tasks=4", "train.progress=false", "test_inner_steps=1"]
MARKER = "payload_ran"  # a crafted file's code would create this file in the working directory
NO_GPU_DEVICE = "hardware.device=cuda" if not torch.cuda.is_available() else "hardware.device=tpu"


@dataclass
class Case:
    """A bad input: the command's arguments, a fragment of its error line, and the files it finds."""

    args: list[str]
    fragment: str
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return make


def saved(name: str, obj: object) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, cwd / name)

    return make


def truncated(name: str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        whole = crafted.real_checkpoint(cwd / "src").read_bytes()
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_bytes(whole[: len(whole) // 2])

    return make


def checkpoint_file(name: str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        crafted.real_checkpoint(cwd / "src").rename(cwd / name)

    return make


def hostile_checkpoint(name: str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        crafted.crafted_checkpoint(cwd / name, cwd / MARKER)

    return make


def nan_checkpoint(cwd: Path) -> None:
    crafted.nan_checkpoint(cwd / "nan.pt", crafted.real_checkpoint(cwd / "src"))


def run_dir_of_earlier_run(cwd: Path) -> None:
    """What a finished run leaves: config files, a log, a checkpoint (written with the default settings)."""
    crafted.real_checkpoint(cwd / "run", *TINY)
    write("run/.hydra/config.yaml", "seed: 0\n")(cwd)
    write("run/cli.log", "")(cwd)


def run_dir_of_another_run(cwd: Path) -> None:
    """Another run's results without a checkpoint (a run of another config, stopped before its first checkpoint)."""
    write("run/.hydra/config.yaml", "seed: 5\n")(cwd)
    write("run/metrics.jsonl", '{"step": 1}\n')(cwd)


def mini_pickles(hostile: bool) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        from tests.data.conftest import tiny_miniimagenet

        tiny_miniimagenet(cwd / "mini", "pickle", classes=(5, 5, 5), per_class=4)
        target = cwd / "mini" / "mini-imagenet-cache-train.pkl"
        if hostile:
            crafted.crafted_pickle(target, cwd / MARKER)
        else:
            target.write_bytes(os.urandom(300))

    return make


def omniglot(extra: dict[str, bytes]) -> Callable[[Path], None]:
    return lambda cwd: crafted.omniglot_zip(cwd / "omni" / "images_background.zip", extra=extra)


OMNIGLOT = ["dataset=omniglot", "dataset.root=omni", "dataset.split=[0.6,0.2,0.2]", "ways=2", "dataset.cache_dir=cache"]
MINI = ["dataset=miniimagenet", "dataset.root=mini", "ways=2", "shots=1", "query_shots=1", "dataset.cache_dir=cache"]
ESCAPING = "images_background/../../evil/a/b.png"
WANDB_ONLINE = ["logger=wandb", "logger.mode=online"]
EVAL = ["mode=eval", "checkpoint=c.pt"]
RESUME = ["resume=true", "hydra.run.dir=run"]
LAST = "run/checkpoints/last.pt"
NOT_OURS = "not a mamlrun checkpoint"
NO_KEY = {"WANDB_API_KEY": "", "NETRC": "/nonexistent/netrc"}

CASES: dict[str, Case] = {
    # -- settings ------------------------------------------------------------------------------
    "negative inner_steps": Case(["inner_steps=-1"], "inner_steps must be at least 0"),
    "zero meta_batch_size": Case(["meta_batch_size=0"], "meta_batch_size must be at least 1"),
    "float meta_batch_size": Case(["meta_batch_size=25.0"], "meta_batch_size must be an integer, got 25.0"),
    "negative lr": Case(["optimizer.lr=-0.1"], "optimizer.lr must be greater than 0"),
    "infinite lr": Case(["optimizer.lr=inf"], "optimizer.lr must be a finite number, got inf"),
    "nan lr": Case(["optimizer.lr=nan"], "optimizer.lr must be a finite number"),
    "negative inner_lr": Case(["inner_lr=-1"], "inner_lr must be at least 0"),
    "nan inner_lr": Case(["inner_lr=nan"], "inner_lr must be a finite number, got nan"),
    "text shots": Case(["shots=abc"], "shots must be an integer"),
    "negative meta_iterations": Case(["meta_iterations=-5"], "meta_iterations must be at least 0"),
    "text log_every": Case(["train.log_every=abc"], "train.log_every must be an integer"),
    "zero test tasks": Case(["eval.test_tasks=0"], "eval.test_tasks must be at least 1"),
    "huge seed": Case(["seed=99999999999999999999"], "seed must be at most 4294967295"),
    "float seed": Case(["seed=1e30"], "seed must be an integer"),
    "negative seed": Case(["seed=-1"], "seed must be at least 0"),
    "negative threads": Case(["hardware.threads=-1"], "hardware.threads must be at least 1, got -1"),
    "text threads": Case(["hardware.threads=abc"], "hardware.threads must be an integer, got 'abc'"),
    "zero chunk_size": Case(["hardware.chunk_size=0"], "hardware.chunk_size must be at least 1"),
    "text dataset knob": Case(["dataset.amplitude=abc"], "dataset.amplitude must be a list of 2 numbers, got 'abc'"),
    "wrong-length dataset knob": Case(["dataset.amplitude=[1,2,3]"], "dataset.amplitude must be a list of 2"),
    "text model knob": Case(["model.hidden=abc"], "model.hidden must be a list of integers"),
    "unknown dtype": Case(["hardware.dtype=float16"], "hardware.dtype must be one of float32, float64"),
    "unknown mode": Case(["mode=bogus"], "mode must be one of train, eval"),
    "unknown sweep metric": Case(["train.sweep_metric=loss"], "train.sweep_metric must be one of test, val"),
    "val sweep metric without validation": Case(
        ["train.sweep_metric=val"], "train.sweep_metric=val needs a validation during training"
    ),
    "unknown key": Case(["no_such_key=1"], "unknown key 'no_such_key' (to add a new key, use +no_such_key=1)"),
    "unknown option": Case(
        ["algorithm=nope"],
        "Could not find 'algorithm/nope' (available: anil, bmaml, emaml, fomaml, fomaml_l2l, leo, maml, maml_l2l, "
        "mamlpp, metasgd, metasgd_l2l, platipus, pretrain, random, reptile)",
    ),
    "unknown option in a sweep": Case(["-m", "experiment=nope,sinusoid"], "Could not find 'experiment/nope'"),
    "bad value in a sweep": Case(["-m", "inner_steps=1,-2"], "inner_steps must be at least 0"),
    "float seed in a sweep": Case(["-m", "seed=0,1e30"], "seed must be an integer"),
    "unparsable override": Case(["inner_steps=[1"], "cannot parse 'inner_steps=[1'"),
    "missing config dir": Case(["-cd", "nowhere"], "config directory nowhere does not exist"),
    "device not present": Case([NO_GPU_DEVICE], "hardware.device"),
    "removed backend key": Case(["algorithm.backend=learn2learn"], "unknown key 'algorithm.backend'"),
    "image model on regression": Case(["model=conv4"], "Conv4 needs image inputs"),
    # -- logging -------------------------------------------------------------------------------
    "unknown W&B mode": Case(["logger=wandb", "logger.mode=bogus"], "logger.mode must be one of offline, online"),
    "W&B online without a key": Case(WANDB_ONLINE, "needs a W&B API key", env=NO_KEY),
    "W&B online without a network": Case(
        WANDB_ONLINE,
        "cannot reach http://127.0.0.1:9",
        env={"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
    ),
    # -- where runs write ----------------------------------------------------------------------
    "run dir under /proc": Case(["hydra.run.dir=/proc/mamlrun/run"], "cannot create hydra.run.dir=/proc/mamlrun/run"),
    "run dir is a file": Case(["hydra.run.dir=afile"], "a file of that name exists", write("afile", "x")),
    "run dir under a file": Case(
        ["hydra.run.dir=afile/run"], "cannot create hydra.run.dir=afile/run", write("afile", "x")
    ),
    "run dir of another run": Case(["hydra.run.dir=run"], "already holds a run", run_dir_of_earlier_run),
    "sweep dir of another sweep": Case(
        ["-m", "seed=0,1", "hydra.sweep.dir=sweep"], "already holds a run", write("sweep/0_seed-0/metrics.json", "{}")
    ),
    # -- checkpoints to evaluate ---------------------------------------------------------------
    "eval without checkpoint": Case(["mode=eval"], "checkpoint="),
    "missing checkpoint": Case(["mode=eval", "checkpoint=none.pt"], "checkpoint none.pt does not exist"),
    "directory as checkpoint": Case(["mode=eval", "checkpoint=adir"], "is a directory", write("adir/x", "")),
    "random bytes checkpoint": Case(EVAL, NOT_OURS, write("c.pt", os.urandom(512))),
    "truncated checkpoint": Case(EVAL, NOT_OURS, truncated("c.pt")),
    "text checkpoint": Case(EVAL, NOT_OURS, write("c.pt", "hello\n")),
    "list checkpoint": Case(EVAL, "not a mamlrun checkpoint (no learner)", saved("c.pt", [1, 2])),
    "foreign dict checkpoint": Case(EVAL, "(no learner)", saved("c.pt", {"model": 1})),
    "code-running checkpoint": Case(EVAL, "asks to load exec, which is refused", hostile_checkpoint("c.pt")),
    "diverged checkpoint": Case(["mode=eval", "checkpoint=nan.pt"], "holds non-finite parameters", nan_checkpoint),
    "checkpoint of another model": Case(
        ["mode=eval", "checkpoint=c.pt", "model.hidden=[8]"], "does not fit this model", checkpoint_file("c.pt")
    ),
    # -- checkpoints to resume -----------------------------------------------------------------
    "resume without a run dir": Case(["resume=true"], "resume=true needs hydra.run.dir="),
    "resume a missing dir": Case(["resume=true", "hydra.run.dir=gone"], "hydra.run.dir=gone is not a directory"),
    "resume without checkpoint": Case(
        RESUME,
        "no checkpoint to continue from at run/checkpoints/last.pt",
        write("run/x", ""),
    ),
    "resume random bytes": Case(
        RESUME,
        NOT_OURS,
        write(LAST, os.urandom(512)),
    ),
    "resume truncated": Case(RESUME, NOT_OURS, truncated(LAST)),
    "resume text": Case(RESUME, NOT_OURS, write(LAST, "x\n")),
    "resume list": Case(RESUME, NOT_OURS, saved(LAST, [1])),
    "resume model-only checkpoint": Case(RESUME, "(no iteration, optimizer, generator", saved(LAST, {"learner": {}})),
    "resume code-running checkpoint": Case(
        RESUME,
        "asks to load exec, which is refused",
        hostile_checkpoint(LAST),
    ),
    "resume with another config": Case(
        ["resume=true", "hydra.run.dir=run", "inner_lr=0.02"],
        "config differs in algorithm.inner_lr, inner_lr",
        run_dir_of_earlier_run,
    ),
    "unknown resume value": Case(["resume=maybe"], "resume must be one of true, false, auto, got 'maybe'"),
    "resume=auto in another run's directory": Case(
        ["resume=auto", "hydra.run.dir=run"],
        "resume=auto but hydra.run.dir=run holds another run's results and no checkpoint to continue from",
        run_dir_of_another_run,
    ),
    "resume=auto from another config's checkpoint": Case(
        ["resume=auto", "hydra.run.dir=run", "inner_lr=0.02"],
        "config differs in algorithm.inner_lr, inner_lr",
        run_dir_of_earlier_run,
    ),
    # -- datasets ------------------------------------------------------------------------------
    "no dataset": Case(
        ["dataset=omniglot", "dataset.root=empty"], "omniglot: no data in empty", write("empty/x.txt", "")
    ),
    "archive member leaving the archive": Case(
        OMNIGLOT,
        "holds an unsafe member 'images_background/../../evil/a/b.png'",
        omniglot({"images_background/../../evil/a/b.png": b"x"}),
    ),
    "absolute archive member": Case(
        OMNIGLOT, "holds an unsafe member '/abs/a/b.png'", omniglot({"/abs/a/b.png": b"x"})
    ),
    "bad image in an archive": Case(
        OMNIGLOT,
        "cannot decode images_background/Alpha/character00/000.png in ",
        omniglot({"images_background/Alpha/character00/000.png": b"not a png"}),
    ),
    "damaged pickle cache": Case(MINI, "cannot read mini/mini-imagenet-cache-train.pkl", mini_pickles(hostile=False)),
    "code-running pickle cache": Case(
        MINI, "asks to load builtins.exec, which a MiniImagenet cache never holds", mini_pickles(hostile=True)
    ),
}


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (and every directory) with a digest of its contents."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, name):
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    before = tree(tmp_path)
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",
        "MAMLRUN_CACHE": str(tmp_path / "cache"),
        "TQDM_DISABLE": "1",  # progress bars (dataset decoding) are not error lines
        **case.env,
    }
    proc = subprocess.run(
        [str(MAMLRUN), *TINY, *case.args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("mamlrun: error: "), proc.stderr[-2000:]
    assert case.fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / MARKER).exists(), "code from a data or checkpoint file ran"
    assert tree(tmp_path) == before, "files were created or changed"


def test_the_table_covers_at_least_forty_bad_inputs():
    assert len(CASES) >= 40
