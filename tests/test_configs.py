"""Every config group option, experiment and sweep composes, validates and instantiates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mamlrun.assemble import build_run
from mamlrun.config import build
from mamlrun.errors import MamlrunError
from mamlrun.learner import MetaLearner
from mamlrun.paths import CONF_DIR
from mamlrun.rl import MetaRL
from mamlrun.validation import expand_sweeps, prevalidate, validate
from tests.conftest import ROOT, compose_config
from tests.data.conftest import OMNIGLOT, tiny_cifarfs, tiny_miniimagenet

GROUPS = ("dataset", "model", "algorithm", "optimizer", "hardware", "logger")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# Options that need something this machine may not have.
LEARN2LEARN = importlib.util.find_spec("learn2learn") is not None
NEEDS = {
    ("hardware", "gpu"): torch.cuda.is_available(),
    **{("algorithm", option): LEARN2LEARN for option in ("maml_l2l", "fomaml_l2l", "metasgd_l2l")},
}


@pytest.fixture(scope="module")
def data_overrides(tmp_path_factory):
    """Per dataset, overrides pointing it at data this machine has (real small Omniglot, generated MiniImagenet)."""
    mini = tmp_path_factory.mktemp("mini")
    tiny_miniimagenet(mini, "pickle", classes=(20, 20, 20), per_class=20)
    cifar = tmp_path_factory.mktemp("cifar")
    tiny_cifarfs(cifar, classes=(5, 5, 5), per_class=16)
    cache = tmp_path_factory.mktemp("cache")
    return {
        **{name: [] for name in ("sinusoid", "sine_line", "bmaml_sinusoid")},
        **{name: [] for name in ("navigation2d", "halfcheetah_dir", "halfcheetah_vel", "ant_dir", "ant_vel")},
        "omniglot": [f"dataset.root={OMNIGLOT}", "dataset.split=[0.6,0.2,0.2]", f"dataset.cache_dir={cache}"],
        "miniimagenet": [f"dataset.root={mini}", f"dataset.cache_dir={cache}"],
        "cifarfs": [f"dataset.root={cifar}", f"dataset.cache_dir={cache}"],
    }


def with_data(overrides: dict, *args: str):
    cfg = compose_config(*args)
    if cfg.dataset.name == "omniglot" and not OMNIGLOT.is_dir():
        pytest.skip(f"the real Omniglot archives are not at {OMNIGLOT}")
    return compose_config(*args, *overrides[cfg.dataset.name])


def instantiate_all(cfg):
    """Build what a run builds, short of training."""
    validate(cfg)
    sampler, learner = build_run(cfg)
    optimizer = build(cfg.optimizer, params=learner.parameters())
    assert isinstance(learner, MetaRL if cfg.dataset.get("kind") == "rl" else MetaLearner)
    assert isinstance(optimizer, torch.optim.Optimizer)
    return sampler, learner.policy if isinstance(learner, MetaRL) else learner.model, learner


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_instantiates(group, option, data_overrides):
    # An image dataset needs an image model and classification shapes that the data allows.
    pairs = {
        "omniglot": "model=conv4",
        "miniimagenet": "model=conv4_miniimagenet",
        "cifarfs": "model=conv4_miniimagenet",
        "conv4": "dataset=omniglot",
        "conv4_miniimagenet": "dataset=miniimagenet",
        "mlp_omniglot": "dataset=omniglot",
        "gaussian_mlp": "dataset=navigation2d optimizer=trpo",
        "trpo": "dataset=navigation2d model=gaussian_mlp",
    }
    rl = {p.stem for p in (CONF_DIR / "dataset").glob("*.yaml") if "kind: rl" in p.read_text()}
    if option in rl:
        pairs[option] = "model=gaussian_mlp optimizer=trpo"
    extra = pairs[option].split() if option in pairs else []
    cfg = with_data(data_overrides, f"{group}={option}", *extra)
    assert cfg[group].name == option
    if not NEEDS.get((group, option), True):
        with pytest.raises(MamlrunError):
            validate(cfg)
        return
    instantiate_all(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, data_overrides):
    cfg = with_data(data_overrides, f"experiment={experiment}")
    sampler, model, _ = instantiate_all(cfg)
    header = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert "# Run: mamlrun experiment=" in header  # every experiment says how to run it
    if cfg.dataset.get("kind") == "rl":
        assert model(torch.zeros(3, *sampler.input_shape)).shape == (3, sampler.output_dim)
    else:
        batch = learner_batch(cfg, data_overrides)
        out = model(batch.x_support[0])
        classes = sampler.objective.metric == "acc"
        assert out.shape == ((cfg.ways * cfg.shots, cfg.ways) if classes else (cfg.shots, 1))


def learner_batch(cfg, data_overrides):
    import torch

    sampler = build(cfg.dataset)
    return sampler.sample(2, "train", torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_expands_into_valid_jobs(sweep):
    base = compose_config(f"hydra.searchpath=[file://{CONF_DIR}]", config_dir=ROOT / "sweeps", name=sweep, hydra=True)
    params = OmegaConf.select(base, "hydra.sweeper.params")
    assert params, f"sweeps/{sweep}.yaml has no hydra.sweeper.params"
    jobs = expand_sweeps([f"{k}={v}" for k, v in params.items()])
    assert len(jobs) > 1
    for job in jobs:
        cfg = compose_config(f"hydra.searchpath=[file://{CONF_DIR}]", *job, config_dir=ROOT / "sweeps", name=sweep)
        if cfg.dataset.name not in ("sinusoid", "navigation2d"):
            validate(cfg)  # image and MuJoCo datasets are built in test_every_experiment_composes_and_instantiates
            continue
        instantiate_all(cfg)
    # The CLI's own pre-flight check accepts it too.
    prevalidate(["-cd", str(ROOT / "sweeps"), "-cn", sweep])


def test_table1_sweep_covers_every_cell_with_maml_and_fomaml():
    from mamlrun.paper import TABLE1

    base = compose_config(
        f"hydra.searchpath=[file://{CONF_DIR}]", config_dir=ROOT / "sweeps", name="table1", hydra=True
    )
    params = base.hydra.sweeper.params
    assert (
        set(params.experiment.split(","))
        == set(TABLE1)
        == {e for e in EXPERIMENTS if e.startswith(("omniglot_", "miniimagenet_"))}
    )
    assert set(params.algorithm.split(",")) == {"maml", "fomaml"}


def test_shared_knobs_reach_the_groups():
    cfg = compose_config("inner_steps=3", "inner_lr=0.2", "shots=7", "algorithm=metasgd")
    assert cfg.algorithm.inner_steps == 3 and cfg.algorithm.inner_lr == 0.2 and cfg.dataset.shots == 7
    assert cfg.algorithm.test_inner_steps == 3  # Meta-SGD evaluates with its trained number of steps
    _, _, learner = instantiate_all(cfg)
    assert learner.algorithm.inner_steps == 3 and learner.algorithm.inner_lr == 0.2


def test_fomaml_is_maml_with_first_order():
    maml, fomaml = compose_config("algorithm=maml"), compose_config("algorithm=fomaml")
    assert maml.algorithm._target_ == fomaml.algorithm._target_
    assert not maml.algorithm.first_order and fomaml.algorithm.first_order


def test_conf_dir_is_shipped_inside_the_package():
    import mamlrun

    assert (Path(mamlrun.__file__).parent / "conf" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=rl_navigation2d", "algorithm=reptile"], "algorithm=reptile has no RL form"),
        (["experiment=rl_navigation2d", "optimizer=adam"], "needs optimizer=trpo"),
        (["experiment=rl_navigation2d", "model=mlp"], "needs model=gaussian_mlp"),
        (["experiment=rl_navigation2d", "algorithm=metasgd"], "algorithm=metasgd has no RL form"),
        (["experiment=rl_navigation2d", "algorithm=maml_l2l"], "algorithm=maml_l2l has no RL form"),
        (["optimizer=trpo"], "optimizer=trpo is for RL datasets"),
        (["model=gaussian_mlp"], "model=gaussian_mlp is for RL datasets"),
    ],
)
def test_rl_and_supervised_groups_do_not_mix(overrides, message):
    with pytest.raises(MamlrunError, match=message):
        validate(compose_config(*overrides))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "pretrain", "random"])
def test_rl_algorithms_map_to_the_paper_comparisons(algorithm):
    cfg = compose_config("experiment=rl_navigation2d", f"algorithm={algorithm}")
    _, _, learner = instantiate_all(cfg)
    assert learner.inner_steps == (0 if algorithm == "pretrain" else 1)
    assert learner.first_order == (algorithm == "fomaml")
    assert (learner.inner_lr, learner.later_inner_lr, learner.test_inner_steps) == (0.1, 0.05, 3)
    assert learner.algorithm.meta_train == (algorithm != "random")
    assert cfg.algorithm.get("meta_train", True) == (algorithm != "random")
