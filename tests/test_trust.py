"""Trust: no code runs from a data or checkpoint file, no run overwrites another, no run loses data.

The hostile files would create a marker file if anything executed them; each test first proves
that its payload does run under a plain unpickler, so a pass means the loader refused it.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mamlrun import rundirs
from mamlrun.data.cache import cached
from mamlrun.data.miniimagenet import MiniImagenet
from mamlrun.errors import MamlrunError
from mamlrun.logging import MetricLogger
from mamlrun.objectives import Regression
from mamlrun.train import RESUME_KEYS, Schedule, Trainer, read_checkpoint
from tests import crafted
from tests.conftest import MAMLRUN, TINY, read_metrics, run_mamlrun
from tests.data.conftest import tiny_miniimagenet

QUIET = {"TQDM_DISABLE": "1"}


# -- nothing executes from a file ----------------------------------------------------------------
def test_payload_runs_under_a_plain_unpickler(tmp_path):
    """The control: the crafted files below are live, so refusing them is what keeps the marker away."""
    marker = tmp_path / "ran"
    pickle.loads(crafted.crafted_pickle(tmp_path / "p.pkl", marker).read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(crafted.crafted_checkpoint(tmp_path / "c.pt", marker), weights_only=False)
    assert marker.exists()


def test_crafted_miniimagenet_pickle_is_refused_and_never_runs(tmp_path):
    root, marker = tmp_path / "mini", tmp_path / "ran"
    tiny_miniimagenet(root, "pickle", classes=(5, 5, 5), per_class=4)
    crafted.crafted_pickle(root / "mini-imagenet-cache-val.pkl", marker)
    with pytest.raises(
        MamlrunError, match=r"cannot read \S*mini-imagenet-cache-val\.pkl: it asks to load builtins\.exec"
    ):
        MiniImagenet(root, ways=2, shots=1, query_shots=1, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_real_miniimagenet_pickles_still_load(tmp_path):
    """The restricted unpickler admits what the caches hold: numpy arrays, dicts, lists, strings."""
    written = tiny_miniimagenet(tmp_path / "mini", "pickle", classes=(5, 5, 5), per_class=4)
    tasks = MiniImagenet(tmp_path / "mini", ways=2, shots=1, query_shots=1, cache_dir=tmp_path / "cache")
    assert torch.equal(tasks.arrays["val"], torch.from_numpy(written["val"]).permute(0, 1, 4, 2, 3))


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = crafted.crafted_checkpoint(tmp_path / "c.pt", marker)
    with pytest.raises(MamlrunError, match="asks to load exec, which is refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_checkpoints_load_weights_only_with_everything_resume_needs(tmp_path):
    path = crafted.real_checkpoint(tmp_path / "run", "optimizer=sgd")
    state = torch.load(path, weights_only=True)
    assert set(RESUME_KEYS) <= set(state)
    assert read_checkpoint(path, RESUME_KEYS)["iteration"] == 0


# -- run directories -----------------------------------------------------------------------------
def test_claim_never_adopts_a_taken_directory(tmp_path):
    first = rundirs.claim(tmp_path / "run", explicit=False, resume=False, key="hydra.run.dir")
    (first / "metrics.json").write_text("{}")
    second = rundirs.claim(tmp_path / "run", explicit=False, resume=False, key="hydra.run.dir")
    third = rundirs.claim(tmp_path / "run", explicit=False, resume=False, key="hydra.run.dir")
    assert len({first, second, third}) == 3 and second.name == "run-2"
    with pytest.raises(MamlrunError, match="already holds a run"):
        rundirs.claim(first, explicit=True, resume=False, key="hydra.run.dir")
    assert rundirs.claim(first, explicit=True, resume=True, key="hydra.run.dir") == first
    assert (first / "metrics.json").read_text() == "{}"


def test_job_folder_names_are_short_and_safe():
    assert rundirs.job_dirname("inner_steps-2__seed-1", "x") == "inner_steps-2__seed-1"
    assert rundirs.job_dirname("", "sinusoid__maml") == "sinusoid__maml"
    risky = rundirs.job_dirname("dataset.root-../a/b c,$HOME__model.hidden-[8,8]", "x")
    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", risky) and not risky.startswith(".")
    long = [rundirs.job_dirname(f"lr-{i}" + "x" * 200, "x") for i in range(2)]
    assert all(len(n) <= rundirs.MAX_NAME for n in long) and long[0] != long[1]


def test_two_runs_started_in_the_same_second_keep_separate_directories(tmp_path):
    # Occupy the default run directory of every second of the next two minutes, so that both runs
    # below start in a second whose name is taken, whenever they start.
    now = datetime.datetime.now()
    taken = []
    for s in range(120):
        t = now + datetime.timedelta(seconds=s)
        folder = (
            tmp_path / "outputs/runs" / t.strftime("%Y-%m-%d") / f"{t.strftime('%H-%M-%S')}_sinusoid__maml__k5__seed0"
        )
        folder.mkdir(parents=True)
        (folder / "keep.txt").write_text("an earlier run")
        taken.append(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **QUIET}
    procs = [
        subprocess.Popen([str(MAMLRUN), *TINY], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    runs = [p.parent for p in tmp_path.glob("outputs/runs/*/*/metrics.json")]
    assert len(runs) == 2 and runs[0] != runs[1]
    assert all(re.search(r"-\d+$", run.name) for run in runs)
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == sorted(r["step"] for r in rows), "two runs wrote into one log"
        assert sum("test/mse_mean" in r for r in rows) == 1, "two runs wrote into one log"
    assert all(sorted(p.name for p in folder.iterdir()) == ["keep.txt"] for folder in taken)


# -- dataset caches ------------------------------------------------------------------------------
def test_damaged_cache_is_rebuilt_and_says_so(tmp_path, capsys):
    images = torch.arange(4096, dtype=torch.int32).view(torch.uint8).reshape(4, 4, 1, 32, 32)
    builds = []

    def build():
        builds.append(1)
        return {"images": images.clone()}

    path = tmp_path / "omniglot_x_28.pt"
    cached(path, "k", build)
    assert torch.equal(cached(path, "k", build)["images"], images) and len(builds) == 1  # reused when intact

    # Flip one byte inside the stored images: the file still loads, the checksum catches it.
    raw = bytearray(path.read_bytes())
    at = raw.find(images.numpy().tobytes()[:64]) + 100
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert torch.equal(cached(path, "k", build)["images"], images) and len(builds) == 2
    assert "is damaged (checksum of 'images' does not match); rebuilding it" in capsys.readouterr().err

    path.write_bytes(os.urandom(2000))
    assert torch.equal(cached(path, "k", build)["images"], images) and len(builds) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreadable" in err[0] and str(path) in err[0]

    torch.save({"key": "k", "arrays": {"images": images}}, path)  # a cache without checksums
    cached(path, "k", build)
    assert len(builds) == 4 and "has no checksums" in capsys.readouterr().err


# -- divergence ----------------------------------------------------------------------------------
class Diverging(nn.Module):
    """A stand-in learner whose loss (or, with ``nan_weights``, whose parameters) turn NaN at one iteration."""

    objective = Regression()

    def __init__(self, bad_at: int, nan_weights: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.bad_at, self.nan_weights, self.calls = bad_at, nan_weights, 0

    def start_iteration(self, iteration: int) -> None:
        pass

    def step_args(self) -> tuple:
        return ()

    def meta_gradient(self, batch) -> dict[str, torch.Tensor]:
        self.calls += 1
        bad = self.calls >= self.bad_at
        if bad and self.nan_weights:
            with torch.no_grad():
                self.w.fill_(float("nan"))
        return {"loss": torch.tensor(float("nan") if bad and not self.nan_weights else 1.0)}


class NoTasks:
    def sample(self, *args):
        return None


def trainer(tmp_path: Path, learner: nn.Module, checkpoint_every: int) -> Trainer:
    schedule = Schedule(meta_iterations=50, meta_batch_size=1, log_every=0, checkpoint_every=checkpoint_every)
    return Trainer(
        learner, NoTasks(), torch.optim.SGD(learner.parameters(), lr=0.1), schedule, tmp_path, progress=False
    )


def test_without_a_per_iteration_sync_divergence_is_caught_before_the_next_checkpoint(tmp_path):
    """The device path (GPU): a flag on the device, read only when something is about to be written."""
    run = trainer(tmp_path, Diverging(bad_at=7), checkpoint_every=5)
    run.check_every_iteration = False
    with pytest.raises(MamlrunError, match=r"non-finite loss at iteration 7 .*last good checkpoint is \S+last\.pt"):
        run.fit(MetricLogger(tmp_path))
    assert run.iteration == 10  # found at the checkpoint, not before
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt", RESUME_KEYS)["iteration"] == 5


def test_on_the_cpu_divergence_stops_the_run_at_once(tmp_path):
    run = trainer(tmp_path, Diverging(bad_at=3), checkpoint_every=0)
    with pytest.raises(MamlrunError, match=r"non-finite loss at iteration 3 .*no checkpoint was written"):
        run.fit(MetricLogger(tmp_path))
    assert run.iteration == 3 and not (tmp_path / "checkpoints").exists()


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    run = trainer(tmp_path, Diverging(bad_at=4, nan_weights=True), checkpoint_every=2)
    with pytest.raises(MamlrunError, match="non-finite parameters at iteration 4"):
        run.fit(MetricLogger(tmp_path))
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt", RESUME_KEYS)["iteration"] == 2


def test_diverged_run_keeps_its_last_good_checkpoint(tmp_path):
    proc = run_mamlrun(
        "optimizer=sgd",
        "optimizer.lr=1",
        "hardware.strategy=batched",
        "meta_iterations=200",
        "train.log_every=0",
        "train.val_every=0",
        "train.checkpoint_every=1",
        "train.progress=false",
        "hydra.run.dir=out",
        cwd=tmp_path,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    found = re.fullmatch(
        r"mamlrun: error: training diverged: non-finite (?:loss|parameters) at iteration (\d+) .*"
        r"the last good checkpoint is (\S+)",
        lines[0],
    )
    assert found, lines[0]
    kept = read_checkpoint(Path(found.group(2)), RESUME_KEYS)  # loads: finite, complete
    assert 1 <= kept["iteration"] < int(found.group(1))
    assert not (tmp_path / "out" / "metrics.json").exists()


# -- interruptions and failures ------------------------------------------------------------------
def test_ctrl_c_says_where_the_resumable_checkpoint_is(tmp_path):
    args = [*TINY, "meta_iterations=1000000", "train.checkpoint_every=20", "hydra.run.dir=out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **QUIET}
    proc = subprocess.Popen(
        [str(MAMLRUN), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As from a terminal: a test run started in the background inherits SIGINT ignored (the shell's rule).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert len(lines) == 1 and "Traceback" not in err.decode()
    assert lines[0].startswith(f"mamlrun: error: interrupted; the resumable checkpoint is {last}")
    assert "resume=true hydra.run.dir=" in lines[0]
    assert read_checkpoint(last, RESUME_KEYS)["iteration"] % 20 == 0


def test_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    """Files may grow to 12 kB only (as on a nearly full disk): the checkpoint cannot be written."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **QUIET}
    proc = subprocess.run(
        [str(MAMLRUN), *TINY, "hydra.run.dir=out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.fullmatch(r"mamlrun: error: cannot write \S+last\.pt: File too large", lines[0]), lines[0]
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if p.suffix in (".tmp", ".pt", ".png")]
    assert leftovers == [] and not (tmp_path / "out" / "metrics.json").exists()


# -- reproducible by default ---------------------------------------------------------------------
def test_same_seed_same_numbers_with_the_default_strategy(tmp_path):
    for name in ("a", "b"):
        run_mamlrun(*TINY, "seed=3", f"hydra.run.dir={name}", cwd=tmp_path, env=QUIET)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert {k: v for k, v in a.items() if "wall" not in k} == {k: v for k, v in b.items() if "wall" not in k}
    for name in ("a", "b"):
        (start,) = json.loads((tmp_path / name / "provenance.json").read_text())
        assert start["packages"]["torch"] == torch.__version__.split("+")[0] and "git_commit" in start
