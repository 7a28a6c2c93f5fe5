"""Environments: rewards and termination as specified; batched stepping equals one env at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamlrun.rl import Navigation2D, ant, half_cheetah
from mamlrun.rl.envs import Draws


def scripted_actor(actions: torch.Tensor):
    """Replays ``actions[t]`` (``[T, N, act]``) at step t; records the observations it is given."""
    seen = []

    def act(obs):
        seen.append(obs.clone())
        return actions[len(seen) - 1]

    return act, seen


def test_navigation_env_follows_the_specification():
    env = Navigation2D(normalized_actions=False).make_env()
    obs, info = env.reset(seed=0, options={"goal": (0.25, -0.05)})
    assert np.allclose(obs, 0) and np.allclose(info["goal"], (0.25, -0.05))
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.02]))  # x clipped to 0.1
    assert np.allclose(obs, (0.1, -0.02))
    assert reward == pytest.approx(-np.hypot(0.15, 0.03))
    assert not terminated and not truncated
    env.step(np.array([0.1, -0.03]))
    obs, reward, terminated, _, _ = env.step(np.array([0.045, 0.0]))  # within 0.01 of the goal
    assert np.allclose(obs, (0.245, -0.05)) and terminated
    assert reward == pytest.approx(-0.005)
    env.reset(seed=1)
    assert np.all(np.abs(env.goal) <= 0.5)
    for _ in range(99):
        *_, truncated, _ = env.step(np.zeros(2))
        assert not truncated
    assert env.step(np.zeros(2))[3]  # horizon 100


def test_normalized_navigation_actions_scale_to_the_velocity_range():
    env = Navigation2D().make_env()
    assert np.allclose(env.action_space.low, -1) and np.allclose(env.action_space.high, 1)
    env.reset(options={"goal": (0.3, 0.3)})
    obs, *_ = env.step(np.array([0.5, -3.0]))
    assert np.allclose(obs, (0.05, -0.1))


def test_navigation_env_passes_gymnasiums_checker():
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    env = gym.make("mamlrun/Navigation2D-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("normalized", [True, False])
def test_navigation_batched_rollout_equals_single_env_stepping(normalized):
    tasks = Navigation2D(horizon=30, normalized_actions=normalized)
    scale = 0.1 if normalized else 1.0  # velocity per unit of action
    gen = torch.Generator().manual_seed(0)
    goals = tasks.sample(3, "train", gen).goals.double()
    goals[0] = torch.tensor([0.05, 0.02])  # reachable quickly: that episode terminates early
    actions = 0.08 * torch.randn(30, 3, 4, 2, generator=gen, dtype=torch.float64) / scale
    actions[:, 0, 0] = torch.tensor([0.03, 0.01]) / scale
    act, _ = scripted_actor(actions)
    episodes = tasks.rollout(act, goals, 4, Draws(gen))
    assert episodes.obs.shape == (3, 4, 30, 2) and episodes.rewards.shape == (3, 4, 30)
    assert episodes.mask[0, 0].sum() < 30  # terminated
    env = tasks.make_env()
    for i in range(3):
        for j in range(4):
            obs, _ = env.reset(options={"goal": goals[i].numpy()})
            terminated = False
            for t in range(30):
                if episodes.mask[i, j, t] == 0:
                    assert terminated and episodes.rewards[i, j, t:].abs().sum() == 0
                    break
                assert np.allclose(episodes.obs[i, j, t].numpy(), obs)
                obs, reward, terminated, truncated, _ = env.step(actions[t, i, j].numpy())
                assert episodes.rewards[i, j, t].item() == pytest.approx(reward, abs=1e-12)
            else:
                assert truncated


@pytest.mark.parametrize("make", [lambda: half_cheetah("direction"), lambda: ant("velocity")], ids=["cheetah", "ant"])
def test_locomotion_reward_is_the_task_reward(make):
    tasks = make()
    env = tasks.make_env(goal=-1.0 if tasks.reward == "direction" else 1.3)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1.5, 1.5, tasks.act_dim)
        _, reward, _, _, info = env.step(action)
        clipped = np.clip(action, -1, 1)
        speed = info["x_velocity"]
        forward = -speed if tasks.reward == "direction" else -abs(speed - 1.3)
        expected = forward - env.ctrl_cost * np.square(clipped).sum() + env.survive_reward
        expected += info.get("reward_contact", 0.0) if env.contact_cost else 0.0
        assert reward == pytest.approx(expected)


def test_locomotion_batched_rollout_equals_single_env_stepping():
    tasks = half_cheetah("velocity", horizon=15)
    gen = torch.Generator().manual_seed(0)
    batch = tasks.sample(2, "train", gen)
    actions = torch.randn(15, 2, 2, tasks.act_dim, generator=gen)
    act, _ = scripted_actor(actions)
    seeds_gen = torch.Generator().manual_seed(7)
    episodes = tasks.rollout(act, batch.goals, 2, Draws(seeds_gen))
    seeds = torch.randint(2**31 - 1, (4,), generator=torch.Generator().manual_seed(7)).tolist()
    for i in range(2):
        for j in range(2):
            env = tasks.make_env(goal=batch.goals[i].item())
            obs, _ = env.reset(seed=seeds[2 * i + j])
            for t in range(15):
                assert np.allclose(episodes.obs[i, j, t].numpy(), obs, atol=1e-5)
                obs, reward, *_ = env.step(actions[t, i, j].numpy())
                assert episodes.rewards[i, j, t].item() == pytest.approx(reward, rel=1e-5, abs=1e-5)


def test_direction_goals_are_signs_and_velocity_goals_in_range():
    gen = torch.Generator().manual_seed(0)
    directions = half_cheetah("direction").sample_goals(400, gen)
    assert set(directions.unique().tolist()) == {-1.0, 1.0}
    assert 0.4 < (directions > 0).float().mean() < 0.6
    speeds = ant("velocity").sample_goals(400, gen)
    assert speeds.min() >= 0 and speeds.max() <= 3 and speeds.std() > 0.5


def test_ant_episodes_stop_when_the_ant_falls():
    tasks = ant("direction", horizon=200)
    gen = torch.Generator().manual_seed(0)
    # Violent random actions flip the ant over (its torso leaves the healthy height range) within 200 steps.
    episodes = tasks.rollout(
        lambda obs: 20 * torch.randn(*obs.shape[:2], tasks.act_dim, generator=gen), torch.ones(1, 1), 3, Draws(gen)
    )
    lengths = episodes.lengths
    assert (lengths < 200).any()
    for j in range(3):
        n = int(lengths[0, j])
        assert episodes.mask[0, j, :n].all() and not episodes.mask[0, j, n:].any()
