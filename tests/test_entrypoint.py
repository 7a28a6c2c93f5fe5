"""The entrypoint's shape: ``python -m mamlrun``, a short ``cli.py``, and what config builds by ``_target_``.

Loggers, figures, learn2learn and quick runs are options in ``conf/``: nothing in the code asks which
dataset, algorithm or logger a run was given.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from mamlrun import cli
from mamlrun.algorithms.l2l import Learn2LearnMAML, Learn2LearnMetaSGD
from mamlrun.errors import MamlrunError
from mamlrun.paths import CONF_DIR
from mamlrun.validation import validate
from tests.conftest import MAMLRUN, ROOT, compose_config, read_metrics

SRC = ROOT / "src" / "mamlrun"
TWO = ["meta_iterations=2", "train.val_every=0", "eval.test_tasks=4", "train.progress=false", "test_inner_steps=1"]
LEARN2LEARN = importlib.util.find_spec("learn2learn") is not None


def code_lines(path: Path) -> int:
    """Lines of ``path`` that hold code: not blank, not a comment, not part of a docstring."""
    text = path.read_text()
    docstrings = set()
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    for prev, tok in zip([None, *tokens], tokens):
        starts_statement = prev is None or prev.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        if tok.type == tokenize.STRING and starts_statement:
            docstrings.update(range(tok.start[0], tok.end[0] + 1))
    return sum(
        1
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def test_the_entrypoint_reads_top_to_bottom_in_under_100_lines():
    assert code_lines(SRC / "cli.py") < 100
    # Not even counting its docstrings, the file stays well short.
    blank_or_comment = sum(
        1 for ln in (SRC / "cli.py").read_text().splitlines() if not ln.strip() or ln.lstrip()[0] == "#"
    )
    assert len((SRC / "cli.py").read_text().splitlines()) - blank_or_comment < 100


def test_path_constants_live_in_paths_only():
    defined = [
        p.name for p in SRC.rglob("*.py") if re.search(r"^(CONF_DIR|SWEEPS_DIR|CHECKOUT)\s*=", p.read_text(), re.M)
    ]
    assert defined == ["paths.py"]
    assert "mamlrun.reproduce" not in (SRC / "bench.py").read_text()


def test_python_dash_m_mamlrun_runs_like_the_command(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "mamlrun", *TWO, "hydra.run.dir=run"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(tmp_path / "run")["train/meta_iterations"] == 2
    assert "mamlrun: done" in proc.stdout and (tmp_path / "run" / "cli.log").exists()  # the same job name
    bad = subprocess.run(
        [sys.executable, "-m", "mamlrun", "inner_steps=-1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr == "mamlrun: error: inner_steps must be at least 0, got -1\n"


# -- debug=quick -------------------------------------------------------------------------------
def test_debug_quick_composes_the_quick_settings():
    cfg = compose_config("debug=quick")
    assert (cfg.meta_iterations, cfg.meta_batch_size, cfg.eval.test_tasks, cfg.eval.batch_size) == (6, 2, 10, 10)
    assert (cfg.train.log_every, cfg.train.val_every, cfg.train.val_tasks, cfg.train.checkpoint_every) == (3, 3, 4, 3)
    assert not cfg.train.progress and (cfg.hardware.strategy, cfg.hardware.threads) == ("batched", 1)
    validate(cfg)
    # It wins over an experiment's recipe but keeps what makes the cell (ways, shots, network) ...
    cell = compose_config("experiment=omniglot_20w5s", "debug=quick")
    assert (cell.meta_iterations, cell.ways, cell.shots, cell.model.name) == (6, 20, 5, "conv4")
    # ... and the command line still wins over it.
    assert compose_config("debug=quick", "meta_iterations=9").meta_iterations == 9
    assert "debug" not in compose_config()  # without it, no key is added (resumed runs compare configs)


def test_debug_quick_reaches_sweep_files():
    cfg = compose_config(
        f"hydra.searchpath=[file://{CONF_DIR}]", "debug=quick", config_dir=ROOT / "sweeps", name="sinusoid"
    )
    assert cfg.meta_iterations == 6 and cfg.dataset.name == "sinusoid"


def test_the_makefile_and_reproduce_say_quick_only_through_debug_quick():
    from mamlrun import reproduce

    assert reproduce.QUICK == ["debug=quick"]
    makefile = (ROOT / "Makefile").read_text()
    assert (
        "QUICK_" not in makefile
        and "meta_batch_size=" not in makefile
        and "DEBUG := $(if $(QUICK),debug=quick)" in makefile
    )


# -- loggers and figures -----------------------------------------------------------------------
def test_the_logger_group_names_its_loggers_by_target():
    targets = lambda cfg: [w._target_ for w in cfg.logger.writers.values()]  # noqa: E731
    assert targets(compose_config()) == ["mamlrun.logging.JsonlLogger"]
    assert targets(compose_config("logger=wandb")) == ["mamlrun.logging.JsonlLogger", "mamlrun.logging.WandbLogger"]
    wandb = compose_config("logger=wandb", "logger.mode=disabled", "logger.project=p").logger.writers.wandb
    assert (wandb.mode, wandb.project) == ("disabled", "p")  # the group's settings reach the W&B logger
    with pytest.raises(MamlrunError, match=r"logger\.mode must be one of offline, online, disabled"):
        validate(compose_config("logger=wandb", "logger.mode=bogus"))


@pytest.mark.parametrize(
    ("dataset", "figures"),
    [
        ("sinusoid", ["learning_curve", "sinusoid_fit"]),
        ("navigation2d", ["learning_curve", "trajectories"]),
        ("sine_line", ["learning_curve", "posterior_samples"]),
        ("omniglot", ["learning_curve", "reliability"]),
        ("halfcheetah_dir", ["learning_curve", "velocity"]),
    ],
)
def test_a_datasets_recipe_names_its_figures(dataset, figures):
    cfg = compose_config(f"dataset={dataset}")
    assert list(cfg.train.figures) == figures
    modules = ("mamlrun.report.", "mamlrun.probabilistic.")
    assert all(node._target_.startswith(modules) for node in cfg.train.figures.values())


def test_no_name_dispatch_in_the_runner():
    """Which dataset, algorithm or logger a run has is never asked by name in these files."""
    owned = ["cli.py", "run.py", "validation.py", "config.py", "logging.py", "report.py", "reproduce.py", "paths.py"]
    for name in owned:
        text = (SRC / name).read_text()
        assert ".name ==" not in text and '== "wandb"' not in text and "learn2learn_target" not in text, name


def test_no_name_dispatch_anywhere_in_src():
    """No module asks a component's name (``.name ==``) or a task's kind (``task_type``): classes and config decide."""
    found = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if ".name ==" in p.read_text() or ".name !=" in p.read_text() or "task_type" in p.read_text()
    ]
    assert found == []


# -- learn2learn ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "cls", "first_order"),
    [
        ("maml_l2l", Learn2LearnMAML, False),
        ("fomaml_l2l", Learn2LearnMAML, True),
        ("metasgd_l2l", Learn2LearnMetaSGD, False),
    ],
)
def test_learn2learn_algorithms_are_ordinary_options(option, cls, first_order):
    cfg = compose_config(f"algorithm={option}")
    assert cfg.algorithm._target_ == f"{cls.__module__}.{cls.__name__}" and cfg.algorithm.name == option
    assert cfg.algorithm.first_order == first_order
    assert not any("backend" in p.read_text() for p in (CONF_DIR / "algorithm").glob("*.yaml"))


@pytest.mark.skipif(not LEARN2LEARN, reason="learn2learn missing: run `make install-l2l`")
def test_maml_l2l_trains(tmp_path):
    proc = subprocess.run(
        [str(MAMLRUN), "algorithm=maml_l2l", *TWO, "hydra.run.dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(tmp_path / "run")["train/meta_iterations"] == 2
    assert "strategy: loop" in proc.stdout  # learn2learn's clone()/adapt(), one task at a time


@pytest.mark.parametrize("option", ["maml_l2l", "metasgd_l2l"])
def test_without_learn2learn_the_command_says_so_in_one_line(option, tmp_path, monkeypatch, capsys):
    def missing(cls):
        raise MamlrunError("learn2learn is not installed: run `make install-l2l`")

    for cls in (Learn2LearnMAML, Learn2LearnMetaSGD):
        monkeypatch.setattr(cls, "check_environment", classmethod(missing))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamlrun", f"algorithm={option}", *TWO])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == "mamlrun: error: learn2learn is not installed: run `make install-l2l`\n"
    assert not list(tmp_path.iterdir())  # nothing written
