"""Every config group option, experiment and sweep composes, validates and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mamlrun.algorithms import MetaLearner
from mamlrun.cli import CONF_DIR, expand_sweeps, prevalidate
from mamlrun.config import build, validate
from mamlrun.errors import MamlrunError
from tests.conftest import ROOT, compose_config

GROUPS = ("dataset", "model", "algorithm", "optimizer", "hardware", "logger")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# Options that need something this machine may not have.
NEEDS = {("hardware", "gpu"): torch.cuda.is_available()}


def instantiate_all(cfg):
    """Build what a run builds, short of training."""
    validate(cfg)
    sampler = build(cfg.dataset)
    model = build(cfg.model, input_shape=tuple(sampler.input_shape), output_dim=sampler.output_dim)
    learner = build(cfg.algorithm, model=model, task_type=sampler.task_type,
                    chunk_size=cfg.hardware.chunk_size, strategy=cfg.hardware.strategy)
    optimizer = build(cfg.optimizer, params=learner.parameters())
    assert isinstance(learner, MetaLearner) and isinstance(optimizer, torch.optim.Optimizer)
    return sampler, model, learner


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_instantiates(group, option):
    cfg = compose_config(f"{group}={option}")
    assert cfg[group].name == option
    if not NEEDS.get((group, option), True):
        with pytest.raises(MamlrunError):
            validate(cfg)
        return
    instantiate_all(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment):
    cfg = compose_config(f"experiment={experiment}")
    instantiate_all(cfg)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_expands_into_valid_jobs(sweep):
    base = compose_config(f"hydra.searchpath=[file://{CONF_DIR}]", config_dir=ROOT / "sweeps", name=sweep, hydra=True)
    params = OmegaConf.select(base, "hydra.sweeper.params")
    assert params, f"sweeps/{sweep}.yaml has no hydra.sweeper.params"
    jobs = expand_sweeps([f"{k}={v}" for k, v in params.items()])
    assert len(jobs) > 1
    for job in jobs:
        cfg = compose_config(f"hydra.searchpath=[file://{CONF_DIR}]", *job, config_dir=ROOT / "sweeps", name=sweep)
        instantiate_all(cfg)
    # The CLI's own pre-flight check accepts it too.
    prevalidate(["-cd", str(ROOT / "sweeps"), "-cn", sweep])


def test_shared_knobs_reach_the_groups():
    cfg = compose_config("inner_steps=3", "inner_lr=0.2", "shots=7", "algorithm=metasgd")
    assert cfg.algorithm.inner_steps == 3 and cfg.algorithm.inner_lr == 0.2 and cfg.dataset.shots == 7
    assert cfg.algorithm.test_inner_steps == 3  # Meta-SGD evaluates with its trained number of steps
    _, _, learner = instantiate_all(cfg)
    assert learner.inner_steps == 3 and learner.inner_lr == 0.2


def test_fomaml_is_maml_with_first_order():
    maml, fomaml = compose_config("algorithm=maml"), compose_config("algorithm=fomaml")
    assert maml.algorithm._target_ == fomaml.algorithm._target_
    assert not maml.algorithm.first_order and fomaml.algorithm.first_order


def test_conf_dir_is_shipped_inside_the_package():
    import mamlrun

    assert (Path(mamlrun.__file__).parent / "conf" / "config.yaml").is_file()
