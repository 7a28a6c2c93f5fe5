"""Choosing a dataset brings its network, optimizer and the paper's recipe; data is found where documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from mamlrun import paths
from mamlrun.paths import CONF_DIR
from mamlrun.validation import validate
from tests.conftest import compose_config

DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
LOCOMOTION = ("halfcheetah_dir", "halfcheetah_vel", "ant_dir", "ant_vel")
# dataset -> (model, optimizer, recipe values): Finn et al. 2017 appendix A and section 5.3.
RECIPES = {
    "sinusoid": ("mlp", "adam", {"inner_lr": 0.01, "meta_batch_size": 25, "inner_steps": 1}),
    # the probabilistic papers' regression toys (their network: test_the_regression_toys_train_bmamls_regressor)
    **{d: ("mlp", "adam", {"inner_lr": 0.01, "meta_batch_size": 25}) for d in ("sine_line", "bmaml_sinusoid")},
    "omniglot": (
        "conv4",
        "adam",
        {"ways": 5, "shots": 1, "query_shots": 1, "inner_lr": 0.4, "meta_batch_size": 32, "test_inner_steps": 3},
    ),
    "miniimagenet": (
        "conv4_miniimagenet",
        "adam",
        {"ways": 5, "shots": 1, "query_shots": 15, "inner_lr": 0.01, "inner_steps": 5, "meta_batch_size": 4},
    ),
    "cifarfs": (
        "conv4_miniimagenet",
        "adam",
        {"ways": 5, "shots": 1, "query_shots": 15, "inner_lr": 0.01, "inner_steps": 5, "meta_batch_size": 4},
    ),
    "navigation2d": ("gaussian_mlp", "trpo", {"shots": 20, "inner_lr": 0.1, "meta_batch_size": 20}),
    **{d: ("gaussian_mlp", "trpo", {"shots": 20, "inner_lr": 0.1, "meta_batch_size": 40}) for d in LOCOMOTION},
}


def test_the_regression_toys_train_bmamls_regressor():
    """BMAML's 1-40-40-40-1 ReLU network (LEO's "3-layer MLP")."""
    for dataset in ("sine_line", "bmaml_sinusoid"):
        assert list(compose_config(f"dataset={dataset}").model.hidden) == [40, 40, 40]


def test_every_dataset_has_a_recipe():
    assert set(DATASETS) == set(RECIPES)


@pytest.mark.parametrize("dataset", DATASETS)
def test_choosing_a_dataset_brings_its_network_and_recipe(dataset):
    model, optimizer, values = RECIPES[dataset]
    cfg = compose_config(f"dataset={dataset}")
    assert (cfg.model.name, cfg.optimizer.name) == (model, optimizer)
    assert {k: cfg[k] for k in values} == values
    validate(cfg)  # a runnable combination as it stands, without further overrides
    # The regression datasets' recipes are quick defaults; CIFAR-FS is no paper cell: no experiment file.
    if dataset not in ("sinusoid", "sine_line", "bmaml_sinusoid", "cifarfs"):
        assert cfg.meta_iterations == compose_config(f"experiment={_first_experiment(dataset)}").meta_iterations


def _first_experiment(dataset: str) -> str:
    files = sorted((CONF_DIR / "experiment").glob("*.yaml"))
    # The MAML paper's cells (not the MAML++ / ANIL files, whose recipes are their papers').
    return next(
        p.stem
        for p in files
        if f"/dataset: {dataset}\n" in p.read_text() and not p.stem.startswith(("mamlpp_", "anil_"))
    )


def test_the_users_own_example_trains_the_papers_miniimagenet_setup():
    cfg = compose_config("algorithm=fomaml", "dataset=miniimagenet")
    assert cfg.model.name == "conv4_miniimagenet" and cfg.model.filters == 32 and cfg.model.pool == "max"
    assert cfg.algorithm.first_order and cfg.algorithm.inner_lr == 0.01 and cfg.algorithm.inner_steps == 5
    assert (cfg.query_shots, cfg.dataset.eval_query_shots, cfg.test_inner_steps) == (15, 1, 10)


def test_the_command_line_still_wins_over_the_recipe():
    cfg = compose_config("dataset=omniglot", "model=mlp_omniglot", "shots=5", "optimizer.lr=0.01")
    chosen = (cfg.model.name, cfg.shots, cfg.query_shots, cfg.optimizer.lr, cfg.inner_lr)
    assert chosen == ("mlp_omniglot", 5, 5, 0.01, 0.4)
    assert compose_config().model.name == "mlp"  # the default experiment is unchanged


def test_experiment_files_change_only_what_their_cell_changes():
    cfg = compose_config("experiment=omniglot_20w5s")
    assert (cfg.ways, cfg.shots, cfg.inner_steps, cfg.inner_lr, cfg.meta_batch_size) == (20, 5, 5, 0.1, 16)
    assert cfg.model.name == "conv4" and cfg.meta_iterations == 60000
    assert compose_config("experiment=omniglot_noconv_5w1s").model.name == "mlp_omniglot"


def test_data_root_prefers_mamlrun_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLRUN_DATA", str(tmp_path / "elsewhere"))
    assert compose_config("dataset=omniglot").dataset.root == str(tmp_path / "elsewhere" / "omniglot")


def test_data_root_searches_the_working_directory_then_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MAMLRUN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared" / "data"
    monkeypatch.setattr(paths, "SHARED_DATA", shared)
    monkeypatch.setattr(paths, "CHECKOUT", tmp_path / "checkout")
    assert compose_config("dataset=omniglot").dataset.root == str(Path("data") / "omniglot")  # nothing: the default
    (shared / "omniglot_full").mkdir(parents=True)
    assert compose_config("dataset=omniglot").dataset.root == str(shared / "omniglot_full")
    (tmp_path / "data" / "omniglot").mkdir(parents=True)
    assert compose_config("dataset=omniglot").dataset.root == str(Path("data") / "omniglot")
