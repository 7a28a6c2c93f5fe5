"""``make bench``: learn2learn's networks compute mamlrun's function; the report is written."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mamlrun import bench
from mamlrun.models import MLP, Conv4


@pytest.mark.parametrize("case", ["omniglot_5w1s", "omniglot_noconv_5w1s"], ids=["OmniglotCNN", "OmniglotFC"])
def test_learn2learn_network_computes_the_same_function(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("learn2learn", reason="learn2learn missing: run `make install-l2l`")
    torch.manual_seed(0)
    model = bench.CASES[case].model().double()
    net, order = bench.learn2learn_network(model, bench.CASES[case])
    net = net.double()
    assert isinstance(model, (Conv4, MLP)) and net is not model
    assert [p.shape for p in order] == [p.shape for p in model.parameters()]
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(net(x), model(x), rtol=1e-10, atol=1e-10)
    assert any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())


def test_bench_writes_interleaved_results_and_flops(tmp_path):
    out = tmp_path / "bench.json"
    code = bench.main(
        [
            "--cases",
            "sinusoid",
            "--implementations",
            "per-task loop,mamlrun auto",
            "--seconds",
            "0",
            "--e2e-iterations",
            "0",
            "--rl-repeats",
            "0",
            "--rl-sim-rounds",
            "0",
            "--rl-iterations",
            "0",
            "--algorithm-cases",
            "sinusoid",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["environment"]["peak_gflops"] > 0
    rows = {r["implementation"]: r for r in report["results"] if r["case"] == "sinusoid"}
    assert set(rows) == {"per-task loop", "mamlrun auto"}
    assert rows["mamlrun auto"]["strategy"] == "batched"
    # Paired rounds: every implementation timed in every round, FLOPs counted once and shared.
    assert rows["per-task loop"]["rounds"] == rows["mamlrun auto"]["rounds"] >= 3
    assert rows["per-task loop"]["gflop"] == rows["mamlrun auto"]["gflop"] > 0
    assert rows["mamlrun auto"]["max_grad_diff"] < 1e-5
    # The algorithms' costs, each against second-order MAML timed in the same rounds.
    costs = {r["implementation"]: r for r in report["results"] if r["case"] == "sinusoid_algorithms"}
    assert set(costs) == set(bench.ALGORITHMS)
    assert costs["MAML"]["time_vs_maml"] == 1.0 and all(r["ms"] > 0 for r in costs.values())


def test_bench_ddp_reports_the_scaling_of_two_processes(tmp_path):
    from mamlrun import bench_ddp

    out = tmp_path / "ddp.json"
    assert bench_ddp.main(["--case", "sinusoid", "--rounds", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["ms_1"] > 0 and report["ms_n"] > 0
    assert report["speedup"] == pytest.approx(report["ms_1"] / report["ms_n"])
    assert report["efficiency"] == pytest.approx(report["speedup"] / 2)
    assert 0 < report["all_reduce_share"] < 1


def test_rl_bench_times_the_samplers_and_splits_a_meta_iteration():
    from mamlrun.rl.bench import iteration_profile, sampler_speed

    rows = sampler_speed(rounds=1, horizon=3, tasks=2)
    names = [r["implementation"] for r in rows]
    assert names[0] == "gymnasium env.step loop" and "native, 1 thread" in names and "native, 1 process" in names
    assert rows[0]["speedup_vs_gymnasium"] == 1.0 and all(r["steps_per_s"] > 0 for r in rows)
    assert rows[0]["physics_floor_us"] > 0
    parts = iteration_profile(tasks=2, horizon=5, processes=2)
    assert sum(r["fraction"] for r in parts) == pytest.approx(1.0)
    assert all(r["s"] >= 0 for r in parts) and parts[0]["s"] > 0
