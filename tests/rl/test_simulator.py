"""The native MuJoCo pool: the same trajectories as gymnasium's own stepping, and workers that fail loudly."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch

from mamlrun.errors import MamlrunError
from mamlrun.rl import ant, half_cheetah
from mamlrun.rl.envs import Draws
from mamlrun.rl.processes import ProcessPool
from mamlrun.rl.simulator import MujocoPool

MAKERS = {
    "cheetah_vel": lambda **kw: half_cheetah("velocity", horizon=40, **kw),
    "ant_dir": lambda **kw: ant("direction", horizon=40, **kw),
}


def roll(tasks, tasks_n: int, trajectories: int, seed: int, scale: float = 3.0):
    """A rollout of ``tasks_n x trajectories`` episodes with violent random actions (float64)."""
    goals = tasks.sample(tasks_n, "train", torch.Generator().manual_seed(seed)).goals.double()
    actions = torch.Generator().manual_seed(seed + 1)

    def act(obs):
        return scale * torch.randn(*obs.shape[:2], tasks.act_dim, generator=actions, dtype=obs.dtype)

    return tasks.rollout(act, goals, trajectories, Draws(torch.Generator().manual_seed(seed + 2)))


def assert_same(a, b) -> None:
    for field in ("obs", "actions", "rewards", "mask", "speed"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("threads", [1, 2])
def test_native_pool_equals_gymnasium_stepping_bit_for_bit(name, threads):
    gym_tasks = MAKERS[name](sampler="gym")
    native = MAKERS[name](sampler="native", sim_threads=threads)
    first = roll(native, 3, 4, seed=0)
    assert_same(first, roll(gym_tasks, 3, 4, seed=0))
    if name == "ant_dir":  # some ants fall mid-pool while the others go on
        lengths = first.lengths.flatten()
        assert (lengths < 40).any() and (lengths > lengths.min()).any()
    # The pool is reused: every episode is reset from its own seed, whatever ran in it before.
    assert_same(roll(native, 2, 3, seed=5), roll(gym_tasks, 2, 3, seed=5))


@pytest.mark.parametrize("name", list(MAKERS))
def test_worker_processes_equal_gymnasium_stepping_bit_for_bit(name):
    gym_tasks = MAKERS[name](sampler="gym")
    native = MAKERS[name](sim_processes=2)
    try:
        first = roll(native, 3, 3, seed=0)  # 9 episodes: shares of 4 and 5
        assert isinstance(native.native_pool(), ProcessPool)
        assert_same(first, roll(gym_tasks, 3, 3, seed=0))
        if name == "ant_dir":  # ants fall mid-pool, in either worker's share
            assert (first.lengths.flatten() < 40).any() and (first.lengths.flatten() == 40).any()
        assert_same(roll(native, 2, 3, seed=5), roll(gym_tasks, 2, 3, seed=5))  # new shares, reused workers
    finally:
        native.native_pool().close()


def workers(pool: ProcessPool) -> list:
    return list(pool._procs)


def test_a_worker_process_that_dies_ends_the_run_with_one_line_and_no_orphans():
    tasks = half_cheetah("direction", horizon=5, sim_processes=2)
    roll(tasks, 2, 2, seed=0)
    pool = tasks.native_pool()
    procs = workers(pool)
    os.kill(procs[1].pid, signal.SIGKILL)
    with pytest.raises(MamlrunError, match=r"simulator worker process 1 (died|is gone)") as info:
        roll(tasks, 2, 2, seed=1)
    assert "\n" not in str(info.value)
    assert not any(p.is_alive() for p in procs) and not multiprocessing.active_children()


def test_a_hanging_worker_process_times_out_and_is_stopped():
    tasks = half_cheetah("direction", horizon=5, sim_processes=2, sim_timeout_s=0.5)
    roll(tasks, 2, 2, seed=0)
    procs = workers(tasks.native_pool())
    os.kill(procs[0].pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(MamlrunError, match=r"simulator worker process 0 did not answer within 0.5 s"):
        roll(tasks, 2, 2, seed=1)
    assert time.monotonic() - start < 15
    assert not any(p.is_alive() for p in procs) and not multiprocessing.active_children()


def test_an_error_inside_a_worker_process_is_one_line():
    pool = ProcessPool("HalfCheetah-v5", processes=1, timeout_s=60)
    try:
        pool.reset([0, 1])
        with pytest.raises(MamlrunError, match=r"a simulator worker process failed: ValueError") as info:
            pool.step(np.array([0, 1]), np.zeros((2, 3)))  # half-cheetah has 6 actuators
        assert "\n" not in str(info.value)
    finally:
        pool.close()
    assert not multiprocessing.active_children()


def test_native_observations_and_rewards_are_gymnasiums_own():
    """Step by step against one gymnasium environment: observation, reward and termination."""
    tasks = ant("velocity", horizon=25, sampler="native", sim_threads=2)
    episodes = roll(tasks, 1, 2, seed=3, scale=1.0)
    seeds = Draws(torch.Generator().manual_seed(5)).integers(2**31 - 1, 1, 2)
    goal = tasks.sample(1, "train", torch.Generator().manual_seed(3)).goals.item()
    for j in range(2):
        env = tasks.make_env(goal=goal)
        obs, _ = env.reset(seed=seeds[j])
        for t in range(25):
            assert np.array_equal(episodes.obs[0, j, t].numpy(), obs)
            obs, reward, terminated, _, _ = env.step(episodes.actions[0, j, t].numpy())
            assert episodes.rewards[0, j, t].item() == reward
            if terminated:
                assert not episodes.mask[0, j, t + 1 :].any()
                break


def test_a_crashing_worker_ends_the_rollout_with_one_line():
    tasks = half_cheetah("direction", horizon=5, sim_threads=2)
    pool = tasks.native_pool()

    def crash(index, actions):
        raise RuntimeError("physics exploded")

    pool._simulate = crash
    with pytest.raises(MamlrunError, match="simulator worker failed: RuntimeError: physics exploded") as info:
        roll(tasks, 2, 2, seed=0)
    assert "\n" not in str(info.value)


def test_a_hanging_worker_times_out_and_never_blocks_exit():
    tasks = half_cheetah("direction", horizon=5, sim_threads=2, sim_timeout_s=0.5)
    pool = tasks.native_pool()
    pool._simulate = lambda index, actions: time.sleep(30)
    start = time.monotonic()
    with pytest.raises(MamlrunError, match=r"did not finish a time step within 0.5 s"):
        roll(tasks, 2, 2, seed=0)
    assert time.monotonic() - start < 10
    assert pool._workers is None  # closed; its threads are daemons


def test_the_pool_refuses_environments_it_cannot_read():
    class Pendulum:
        model, frame_skip, dt = None, 1, 0.01

    with pytest.raises(MamlrunError, match=r"no native stepping for Pendulum; use dataset\.sampler=gym"):
        MujocoPool(Pendulum())


def test_an_unknown_sampler_is_one_line():
    with pytest.raises(MamlrunError, match=r"dataset\.sampler must be native or gym"):
        half_cheetah("direction", sampler="fast")
    with pytest.raises(MamlrunError, match=r"dataset\.sim_processes must be 0 \(threads\) or more"):
        half_cheetah("direction", sim_processes=-1)
