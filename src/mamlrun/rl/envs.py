"""Meta-RL task distributions: 2D navigation and MuJoCo locomotion, on gymnasium's current API.

A task distribution samples a meta-batch of tasks (goals) and rolls a policy out on all of them at
once: ``rollout(act, goals, trajectories, draws)`` steps ``tasks x trajectories`` episodes
together and calls ``act`` once per time step with every observation ``[tasks, trajectories, obs]``.
Each one also exists as a single ``gymnasium.Env`` (``make_env``) with the same dynamics and rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from mamlrun import parallel
from mamlrun.errors import MamlrunError
from mamlrun.objectives import Return
from mamlrun.rl.episodes import Episodes
from mamlrun.rl.processes import ProcessPool
from mamlrun.rl.simulator import MujocoPool

Actor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EnvTaskBatch:
    """A meta-batch of RL tasks: one goal per task, and the seed of its rollouts' randomness.

    A data-parallel rank holds a share of a meta-batch (:meth:`part`): the tasks from ``start`` on
    of ``whole`` tasks, whose random numbers it draws as the whole meta-batch would (:class:`Draws`).
    """

    goals: torch.Tensor  # [tasks, goal_dim]
    seed: int
    start: int = 0
    whole: int | None = None  # tasks of the meta-batch this is a share of (None: this is all of it)

    @property
    def num_tasks(self) -> int:
        return self.goals.shape[0]

    def part(self, tasks: slice) -> EnvTaskBatch:
        """The tasks ``tasks`` of the batch, drawing their random numbers as the whole batch does."""
        return EnvTaskBatch(self.goals[tasks], self.seed, self.start + tasks.start, self.whole or self.num_tasks)

    def draws(self) -> Draws:
        """A fresh source of the rollouts' random numbers (seeded by the batch)."""
        generator = torch.Generator(device=self.goals.device).manual_seed(self.seed)
        return Draws(generator, self.start, self.whole)


@dataclass(frozen=True)
class Draws:
    """Random numbers for a batch's rollouts, drawn for the whole meta-batch and cut to its own tasks.

    A task's actions and resets are then the same whichever rank of a data-parallel run samples it,
    and the same as in a single process (where the cut is everything).
    """

    generator: torch.Generator
    start: int = 0
    whole: int | None = None

    def _cut(self, draw: Callable[[int], torch.Tensor], tasks: int) -> torch.Tensor:
        return draw(self.whole or tasks)[self.start : self.start + tasks]

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal numbers ``[tasks, ...]`` (``shape[0]`` tasks)."""
        g = self.generator
        return self._cut(lambda n: torch.randn((n, *shape[1:]), generator=g, device=g.device), shape[0])

    def integers(self, high: int, tasks: int, per_task: int) -> list[int]:
        """``tasks * per_task`` integers in ``[0, high)``, task-major."""
        g = self.generator
        draw = lambda n: torch.randint(high, (n * per_task,), generator=g, device=g.device).view(n, per_task)  # noqa: E731
        return self._cut(draw, tasks).flatten().tolist()


class EnvTasks:
    """What every task distribution shares: sampling goals, device and dtype, the trainer's protocol."""

    objective = Return()
    name = "env"
    horizon = 100
    goal_low: tuple[float, ...] = (0.0,)
    goal_high: tuple[float, ...] = (1.0,)

    def __init__(self, discount: float = 0.99) -> None:
        self.discount = float(discount)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.obs_dim,)

    @property
    def output_dim(self) -> int:
        return self.act_dim

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> EnvTasks:
        self.device, self.dtype = torch.device(device), dtype
        return self

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        low = torch.tensor(self.goal_low, device=self.device, dtype=self.dtype)
        high = torch.tensor(self.goal_high, device=self.device, dtype=self.dtype)
        u = torch.rand(num_tasks, len(self.goal_low), generator=generator, device=generator.device)
        return low + (high - low) * u.to(self.device, self.dtype)

    def sample(self, num_tasks: int, split: str, generator: torch.Generator) -> EnvTaskBatch:
        """``num_tasks`` goals; train, validation and test tasks differ by the generator's stream."""
        goals = self.sample_goals(num_tasks, generator)
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
        return EnvTaskBatch(goals, seed)

    def rollout(self, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        raise NotImplementedError


# -- 2D navigation ------------------------------------------------------------------------------
class Navigation2DEnv(gym.Env):
    """A point in the plane moves by its (clipped) action; reward is minus the distance to the goal.

    The velocity is clipped to ``[-action_bound, action_bound]^2``. With ``normalized_actions`` (the
    default) the action space is ``[-1, 1]^2``, scaled to that range, as the paper's code does by
    wrapping the environment in rllab's ``normalize``: the policy's unit initial standard deviation
    then explores at the scale of one step. Starts at the origin; the episode terminates within
    ``goal_tolerance`` of the goal in both coordinates and is truncated after ``horizon`` steps.
    ``reset(options={"goal": (x, y)})`` sets the goal; otherwise it is drawn uniformly from
    ``goal_range`` in both coordinates.

    References:
        Finn et al. 2017, section 5.3 (2D navigation); the paper's code, ``point_env_randgoal.py``.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        horizon: int = 100,
        action_bound: float = 0.1,
        goal_range=(-0.5, 0.5),
        goal_tolerance: float = 0.01,
        normalized_actions: bool = True,
    ) -> None:
        self.horizon, self.goal_tolerance = horizon, goal_tolerance
        self.goal_range = tuple(goal_range)
        self.limit, self.scale = action_limits(action_bound, normalized_actions)
        reach = horizon * action_bound  # the farthest the point can get from the origin in each coordinate
        self.observation_space = gym.spaces.Box(-reach, reach, (2,), np.float64)
        self.action_space = gym.spaces.Box(-self.limit, self.limit, (2,), np.float64)
        self.goal = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        goal = (options or {}).get("goal")
        if goal is None:
            goal = self.np_random.uniform(*self.goal_range, 2)
        self.goal = np.asarray(goal, dtype=np.float64)
        self.state, self.t = np.zeros(2), 0
        return self.state.copy(), {"goal": self.goal.copy()}

    def step(self, action):
        self.state = self.state + np.clip(action, -self.limit, self.limit) * self.scale
        self.t += 1
        delta = self.state - self.goal
        reward = -float(np.sqrt((delta**2).sum()))
        terminated = bool((np.abs(delta) < self.goal_tolerance).all())
        return self.state.copy(), reward, terminated, self.t >= self.horizon, {"goal": self.goal.copy()}


def action_limits(action_bound: float, normalized: bool) -> tuple[float, float]:
    """(clip limit of the action, factor from action to velocity)."""
    return (1.0, action_bound) if normalized else (action_bound, 1.0)


gym.register("mamlrun/Navigation2D-v0", entry_point=Navigation2DEnv)


class Navigation2D(EnvTasks):
    """2D navigation tasks, stepped as tensors: every task and trajectory of a meta-batch at once.

    Identical dynamics, reward and termination to :class:`Navigation2DEnv`.
    """

    name = "navigation2d"
    obs_dim = act_dim = 2

    def __init__(
        self,
        horizon: int = 100,
        action_bound: float = 0.1,
        goal_range: tuple[float, float] = (-0.5, 0.5),
        goal_tolerance: float = 0.01,
        normalized_actions: bool = True,
        discount: float = 0.99,
    ) -> None:
        super().__init__(discount)
        self.horizon, self.action_bound, self.goal_tolerance = int(horizon), float(action_bound), float(goal_tolerance)
        self.normalized_actions = bool(normalized_actions)
        self.limit, self.scale = action_limits(self.action_bound, self.normalized_actions)
        self.goal_low, self.goal_high = (goal_range[0],) * 2, (goal_range[1],) * 2

    def make_env(self) -> Navigation2DEnv:
        goal_range = (self.goal_low[0], self.goal_high[0])
        return Navigation2DEnv(
            self.horizon, self.action_bound, goal_range, self.goal_tolerance, self.normalized_actions
        )

    def rollout(self, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        tasks = goals.shape[0]
        pos = torch.zeros(tasks, trajectories, 2, device=goals.device, dtype=goals.dtype)
        alive = torch.ones(tasks, trajectories, device=goals.device, dtype=torch.bool)
        goal = goals.unsqueeze(1)
        obs, actions, rewards, masks = [], [], [], []
        for _ in range(self.horizon):
            action = act(pos)
            moved = pos + action.clamp(-self.limit, self.limit) * self.scale
            delta = moved - goal
            live = alive.to(pos.dtype)
            obs.append(pos)
            actions.append(action)
            rewards.append(-delta.norm(dim=-1) * live)
            masks.append(live)
            pos = torch.where(alive.unsqueeze(-1), moved, pos)
            alive = alive & ~(delta.abs() < self.goal_tolerance).all(-1)
            if not parallel.any_rank(bool(alive.any())):  # every rank steps as long as the whole batch
                break
        return _stack(obs, actions, rewards, masks, self.horizon)


def _stack(obs, actions, rewards, masks, horizon: int, speeds=None) -> Episodes:
    """Stack per-step tensors along a time axis, zero-padding to ``horizon`` steps."""
    pad = horizon - len(obs)
    parts = []
    for seq in (obs, actions, rewards, masks, *([speeds] if speeds else [])):
        t = torch.stack(seq, dim=2)
        if pad:
            t = torch.cat([t, t.new_zeros(*t.shape[:2], pad, *t.shape[3:])], dim=2)
        parts.append(t)
    return Episodes(*parts)


# -- MuJoCo locomotion --------------------------------------------------------------------------
class LocomotionTask(gym.Wrapper):
    """A locomotion task as a reward over a gymnasium MuJoCo (v5) environment.

    ``reward="direction"``: reward ``goal * x_velocity`` with ``goal`` = +1 (forward) or -1 (backward);
    ``reward="velocity"``: reward ``-|x_velocity - goal|``. Both subtract ``ctrl_cost * |a|^2``
    (of the action clipped to the action space), add ``survive_reward`` per step and, when
    ``contact_cost``, the environment's own contact cost (the ant's).

    References:
        Finn et al. 2017, section 5.3; the paper's code, ``half_cheetah_env_rand(_direc).py`` and
        ``ant_env_rand(_direc).py`` (the coefficients used here).
    """

    def __init__(
        self,
        env: gym.Env,
        reward: str,
        goal: float = 1.0,
        ctrl_cost: float = 0.05,
        contact_cost: bool = False,
        survive_reward: float = 0.0,
    ) -> None:
        super().__init__(env)
        if reward not in ("direction", "velocity"):
            raise MamlrunError(f"locomotion reward must be direction or velocity, got {reward!r}")
        self.reward, self.goal = reward, float(goal)
        self.ctrl_cost, self.contact_cost, self.survive_reward = ctrl_cost, contact_cost, survive_reward

    def step(self, action):
        action = np.clip(action, self.action_space.low, self.action_space.high)
        obs, _, terminated, truncated, info = self.env.step(action)
        speed = info["x_velocity"]
        forward = self.goal * speed if self.reward == "direction" else -abs(speed - self.goal)
        reward = forward - self.ctrl_cost * float(np.square(action).sum()) + self.survive_reward
        if self.contact_cost:
            reward += info.get("reward_contact", 0.0)
        return obs, float(reward), terminated, truncated, info


class Locomotion(EnvTasks):
    """Half-cheetah / ant direction and velocity tasks over a pool of MuJoCo environments.

    All ``tasks x trajectories`` episodes advance together: one policy call per time step for the
    whole meta-batch, then one physics step per live episode. Goals: direction tasks draw +1 or -1
    with equal probability; velocity tasks draw the target speed uniformly from ``goal_range``.

    ``sampler="native"`` (the default) steps the episodes' MuJoCo data directly in ``sim_threads``
    native threads (:class:`~mamlrun.rl.simulator.MujocoPool`; ``None``: torch's thread count), or,
    with ``sim_processes > 0``, in that many worker processes
    (:class:`~mamlrun.rl.processes.ProcessPool`, for machines with many cores);
    ``sampler="gym"`` calls each episode's gymnasium ``step``, one at a time. All give the same
    trajectories; ``sim_timeout_s`` bounds one time step of the pool.
    """

    def __init__(
        self,
        name: str,
        env_id: str,
        reward: str,
        goal_range: tuple[float, float] = (0.0, 2.0),
        horizon: int = 200,
        ctrl_cost: float = 0.05,
        contact_cost: bool = False,
        survive_reward: float = 0.0,
        discount: float = 0.99,
        sampler: str = "native",
        sim_threads: int | None = None,
        sim_timeout_s: float = 120.0,
        sim_processes: int = 0,
    ) -> None:
        super().__init__(discount)
        if sampler not in ("native", "gym"):
            raise MamlrunError(f"dataset.sampler must be native or gym, got {sampler!r}")
        if int(sim_processes) < 0:
            raise MamlrunError(f"dataset.sim_processes must be 0 (threads) or more (processes), got {sim_processes}")
        self.sim_processes = int(sim_processes)
        self.name, self.env_id, self.reward, self.horizon = name, env_id, reward, int(horizon)
        self.sampler, self.sim_timeout_s = sampler, float(sim_timeout_s)
        self.sim_threads = None if sim_threads is None else int(sim_threads)
        self.ctrl_cost, self.contact_cost, self.survive_reward = float(ctrl_cost), bool(contact_cost), survive_reward
        self.goal_low, self.goal_high = (float(goal_range[0]),), (float(goal_range[1]),)
        self.task_kwargs = dict(
            reward=reward, ctrl_cost=ctrl_cost, contact_cost=contact_cost, survive_reward=survive_reward
        )
        self.pool: list[LocomotionTask] = []
        probe = self.make_env(bare=True)
        self.obs_dim, self.act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        self.action_low, self.action_high = probe.action_space.low, probe.action_space.high
        self.pool.append(probe)
        self._native: MujocoPool | ProcessPool | None = None

    def make_env(self, goal: float = 1.0, bare: bool = False) -> LocomotionTask:
        """One task as a gymnasium environment (truncated after ``horizon`` steps).

        ``bare`` leaves out gymnasium's wrappers (time limit, order and API checks): the batched
        rollout, which enforces the horizon itself, steps the physics without their overhead.
        """
        try:
            env = gym.make(self.env_id, max_episode_steps=self.horizon, disable_env_checker=True)
        except (gym.error.Error, ImportError) as exc:
            raise MamlrunError(f"cannot make {self.env_id}: {exc}") from None
        return LocomotionTask(env.unwrapped if bare else env, goal=goal, **self.task_kwargs)

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        goals = super().sample_goals(num_tasks, generator)
        if self.reward == "direction":
            return torch.where(goals < 0.5 * (self.goal_low[0] + self.goal_high[0]), -1.0, 1.0).to(goals.dtype)
        return goals

    def rollout(self, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        """Every episode of the meta-batch, stepped natively (``sampler=native``) or through gymnasium."""
        if self.sampler == "gym":
            return self._rollout_gym(act, goals, trajectories, draws)
        return self._rollout_native(act, goals, trajectories, draws)

    def native_pool(self) -> MujocoPool | ProcessPool:
        """The pool of native simulations: ``sim_processes`` worker processes, else threads
        (``sim_threads``, else torch's thread count)."""
        if self._native is None:
            if self.sim_processes:
                self._native = ProcessPool(self.env_id, self.sim_processes, self.sim_timeout_s)
            else:
                threads = self.sim_threads or torch.get_num_threads()
                self._native = MujocoPool(self.pool[0].unwrapped, threads, self.sim_timeout_s)
        return self._native

    def _rollout_native(self, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        # The policy runs on one torch thread meanwhile: torch's idle OpenMP threads spin on the cores
        # the simulator threads need (measured: 1.7x more steps per second with two simulator threads).
        pool, threads = self.native_pool(), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._step_pool(pool, act, goals, trajectories, draws)
        finally:
            torch.set_num_threads(threads)

    def _step_pool(
        self, pool: MujocoPool | ProcessPool, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws
    ):
        current = pool.reset(draws.integers(2**31 - 1, goals.shape[0], trajectories))
        goal = np.asarray(goals.repeat_interleave(trajectories, 0).flatten().tolist())

        def step(actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a = np.clip(actions, self.action_low, self.action_high)
            index = np.flatnonzero(alive)
            out = pool.step(index, a[index])
            speed = out.x_velocity
            forward = goal[index] * speed if self.reward == "direction" else -np.abs(speed - goal[index])
            r, v = np.zeros(len(alive)), np.zeros(len(alive))
            r[index] = forward - self.ctrl_cost * np.square(a[index]).sum(axis=1) + self.survive_reward
            if self.contact_cost:
                r[index] += out.contact_reward
            v[index] = speed
            current[index] = out.obs
            alive[index] = ~out.terminated
            return r, v

        return self._episodes(act, goals, trajectories, current, step)

    def _rollout_gym(self, act: Actor, goals: torch.Tensor, trajectories: int, draws: Draws) -> Episodes:
        """The reference sampler: one ``env.step`` per live episode per time step, in one thread."""
        n = goals.shape[0] * trajectories
        while len(self.pool) < n:
            self.pool.append(self.make_env(bare=True))
        envs = self.pool[:n]
        seeds = draws.integers(2**31 - 1, goals.shape[0], trajectories)
        goal_list = goals.repeat_interleave(trajectories, 0).flatten().tolist()
        current = np.zeros((n, self.obs_dim))
        for i, env in enumerate(envs):
            env.goal = goal_list[i]
            current[i] = env.reset(seed=seeds[i])[0]

        def step(actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r, v = np.zeros(n), np.zeros(n)
            for i in np.flatnonzero(alive):
                current[i], r[i], terminated, _, info = envs[i].step(actions[i])
                alive[i], v[i] = not terminated, info["x_velocity"]
            return r, v

        return self._episodes(act, goals, trajectories, current, step)

    def _episodes(self, act: Actor, goals: torch.Tensor, trajectories: int, current: np.ndarray, step) -> Episodes:
        """The time loop both samplers share: one policy call for the pool per step, then ``step``.

        ``step(actions, alive)`` advances the live episodes, updating ``current`` (their observations)
        and ``alive`` in place, and returns every episode's reward and forward velocity (``[n]``).
        """
        tasks, n = goals.shape[0], current.shape[0]
        alive = np.ones(n, dtype=bool)
        obs, actions, rewards, masks, speeds = [], [], [], [], []

        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values, device=goals.device, dtype=goals.dtype).view(tasks, trajectories)

        for _ in range(self.horizon):
            # A copy (torch.tensor): ``current`` changes in place below.
            o = torch.tensor(current, device=goals.device, dtype=goals.dtype).view(tasks, trajectories, -1)
            action = act(o)
            live = alive.copy()
            r, v = step(action.detach().reshape(n, -1).cpu().double().numpy(), alive)
            obs.append(o)
            actions.append(action)
            rewards.append(tensor(r))
            masks.append(tensor(live))
            speeds.append(tensor(v))
            if not parallel.any_rank(bool(alive.any())):  # every rank steps as long as the whole batch
                break
        return _stack(obs, actions, rewards, masks, self.horizon, speeds)


def half_cheetah(
    reward: str, goal_range=(0.0, 2.0), horizon: int = 200, discount: float = 0.99, **sampling
) -> Locomotion:
    """Half-cheetah forward/backward (``direction``) or target velocity in ``goal_range`` (``velocity``).

    ``sampling``: ``sampler`` (``native`` or ``gym``), ``sim_threads``, ``sim_processes``, ``sim_timeout_s`` (see
    :class:`Locomotion`).
    """
    name = f"halfcheetah_{reward[:3]}"
    return Locomotion(name, "HalfCheetah-v5", reward, goal_range, horizon, 0.05, discount=discount, **sampling)


def ant(reward: str, goal_range=(0.0, 3.0), horizon: int = 200, discount: float = 0.99, **sampling) -> Locomotion:
    """Ant forward/backward (``direction``) or target velocity in ``goal_range`` (``velocity``)."""
    return Locomotion(
        f"ant_{reward[:3]}",
        "Ant-v5",
        reward,
        goal_range,
        horizon,
        0.005,
        contact_cost=True,
        survive_reward=0.05,
        discount=discount,
        **sampling,
    )
