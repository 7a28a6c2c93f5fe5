"""A pool of MuJoCo simulations stepped in native threads, exactly as gymnasium steps each one.

Rolling out a meta-batch steps ``tasks x trajectories`` copies of one gymnasium MuJoCo environment
(half-cheetah, ant) for every time step. Doing it through ``env.step`` costs a Python call chain
per environment per step that is slower than the physics itself. :class:`MujocoPool` keeps one
``MjData`` per episode on one compiled ``MjModel`` and, per time step:

1. writes every live episode's control and runs ``mujoco.mj_step`` (``frame_skip`` substeps) and,
   where the environment reads contact forces, ``mj_rnePostConstraint``, in worker threads (MuJoCo
   releases the GIL while it simulates, so the threads run on separate cores);
2. reads the state back into arrays and computes observations, forward velocities, health and
   contact forces for the whole pool at once with numpy.

Resets go through the gymnasium environment itself (``env.reset(seed=...)``, whose state is
copied into the episode's ``MjData``), and every quantity is computed from the same MuJoCo
fields with the same arithmetic as gymnasium's ``step``: the pool's trajectories equal
single-environment stepping (``tests/rl/test_simulator.py``). gymnasium stays the source of truth
for dynamics, reset noise, observations and rewards.

References:
    MuJoCo documentation, "Python bindings" (``mj_step``, ``mj_copyData``, the GIL);
    gymnasium ``HalfCheetah-v5`` and ``Ant-v5`` (``step``, ``_get_obs``, ``is_healthy``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool

import mujoco
import numpy as np

from mamlrun.errors import MamlrunError


@dataclass(frozen=True)
class Readout:
    """What a gymnasium MuJoCo environment reads from its state, and how.

    Attributes:
        position_body: the body whose ``xpos`` x gives the forward position (ant: the torso), or
            ``None`` when it is ``qpos[0]`` (half-cheetah).
        skip_qpos: leading ``qpos`` entries left out of the observation (the global position).
        contact_range: clip range of ``cfrc_ext`` when the observation or the reward uses contact
            forces (ant), else ``None``.
        contact_in_obs: whether the clipped ``cfrc_ext`` of every body but the world is observed.
        contact_weight: the contact cost's weight (``info["reward_contact"]``).
        healthy_z: torso height range outside which the episode terminates, or ``None``.
    """

    position_body: int | None
    skip_qpos: int
    contact_range: tuple[float, float] | None = None
    contact_in_obs: bool = False
    contact_weight: float = 0.0
    healthy_z: tuple[float, float] | None = None

    @classmethod
    def of(cls, env) -> Readout:
        """The readout of a (bare) gymnasium ``HalfCheetah`` or ``Ant`` environment, from its own settings."""
        name = type(env).__name__
        if name.startswith("HalfCheetah"):
            return cls(None, int(env._exclude_current_positions_from_observation))
        if name.startswith("Ant"):
            return cls(
                position_body=int(env.model.body(env._main_body).id),
                skip_qpos=2 * int(env._exclude_current_positions_from_observation),
                contact_range=tuple(float(v) for v in env._contact_force_range),
                contact_in_obs=bool(env._include_cfrc_ext_in_observation),
                contact_weight=float(env._contact_cost_weight),
                healthy_z=tuple(float(v) for v in env._healthy_z_range) if env._terminate_when_unhealthy else None,
            )
        raise MamlrunError(f"no native stepping for {name}; use dataset.sampler=gym")


@dataclass(frozen=True)
class Step:
    """One time step of the pool, for the episodes that were stepped (``[n, ...]`` arrays)."""

    obs: np.ndarray
    x_velocity: np.ndarray
    terminated: np.ndarray
    contact_reward: np.ndarray  # -contact cost (0 without contact forces)


class MujocoPool:
    """Many episodes of one gymnasium MuJoCo environment, stepped together in ``threads`` threads.

    Args:
        env: a bare gymnasium MuJoCo environment (``gym.make(...).unwrapped``); it compiles the model
            once and performs every reset.
        threads: worker threads for the physics (1: step in the calling thread).
        timeout_s: how long one time step of the pool may take before the run stops with an error
            (a worker that hangs); a worker that raises stops it at once.
    """

    def __init__(self, env, threads: int = 1, timeout_s: float = 120.0) -> None:
        self._workers: ThreadPool | None = None
        self.env, self.model = env, env.model
        self.frame_skip, self.dt = int(env.frame_skip), float(env.dt)
        self.readout = Readout.of(env)
        self.threads, self.timeout_s = max(1, int(threads)), float(timeout_s)
        self.data: list[mujoco.MjData] = []
        self._allocate(0)

    # -- lifecycle ---------------------------------------------------------------------------------
    def _allocate(self, n: int) -> None:
        """The state read back from ``n`` episodes: positions, velocities, contact forces, forward positions."""
        m = self.model
        self._qpos, self._qvel = np.zeros((n, m.nq)), np.zeros((n, m.nv))
        self._cfrc, self._x = np.zeros((n, m.nbody, 6)), np.zeros(n)

    def _grow(self, n: int) -> None:
        if len(self.data) < n:
            self.data += [mujoco.MjData(self.model) for _ in range(n - len(self.data))]
            self._allocate(n)

    def close(self) -> None:
        """Stop the worker threads (they are daemons: a hung one never blocks the interpreter's exit)."""
        if self._workers is not None:
            self._workers.terminate()
            self._workers = None

    def __del__(self) -> None:
        self.close()

    # -- stepping ----------------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset episodes ``0..len(seeds)-1`` as ``env.reset(seed=...)`` does; their observations."""
        n = len(seeds)
        self._grow(n)
        for i, seed in enumerate(seeds):
            self.env.reset(seed=int(seed))
            mujoco.mj_copyData(self.data[i], self.model, self.env.data)
        index = np.arange(n)
        self._read(index)
        return self._observe(index)

    def step(self, index: np.ndarray, actions: np.ndarray) -> Step:
        """Step episodes ``index`` with ``actions`` (``[len(index), act_dim]``, already clipped)."""
        x_before = self._x[index].copy()
        chunks = [c for c in np.array_split(np.arange(len(index)), self.threads) if len(c)]
        if len(chunks) <= 1:
            self._simulate(index, actions)
        else:
            self._parallel([(index[c], actions[c]) for c in chunks])
        x_velocity = (self._x[index] - x_before) / self.dt
        r = self.readout
        terminated = np.zeros(len(index), dtype=bool)
        if r.healthy_z is not None:
            state = np.concatenate([self._qpos[index], self._qvel[index]], axis=1)
            z = state[:, 2]
            terminated = ~(np.isfinite(state).all(axis=1) & (r.healthy_z[0] <= z) & (z <= r.healthy_z[1]))
        contact_reward = np.zeros(len(index))
        if r.contact_range is not None and r.contact_weight:
            forces = np.clip(self._cfrc[index], *r.contact_range).reshape(len(index), -1)
            contact_reward = -(r.contact_weight * np.sum(np.square(forces), axis=1))
        return Step(self._observe(index), x_velocity, terminated, contact_reward)

    def _parallel(self, jobs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        if self._workers is None:
            self._workers = ThreadPool(self.threads)
        pending = self._workers.starmap_async(self._simulate, jobs)
        try:
            pending.get(self.timeout_s)
        except multiprocessing.TimeoutError:
            self.close()
            raise MamlrunError(
                f"a simulator worker did not finish a time step within {self.timeout_s:g} s "
                "(dataset.sim_timeout_s); the run stops"
            ) from None
        except MamlrunError:
            raise
        except Exception as exc:  # any failure inside a worker ends the run in one line
            self.close()
            raise MamlrunError(f"a simulator worker failed: {type(exc).__name__}: {exc}") from None

    def _simulate(self, index: np.ndarray, actions: np.ndarray) -> None:
        """Step episodes ``index`` (one worker's share) and read their state back."""
        m, skip, contact = self.model, self.frame_skip, self.readout.contact_range is not None
        for i, a in zip(index.tolist(), actions, strict=True):
            d = self.data[i]
            d.ctrl[:] = a
            mujoco.mj_step(m, d, nstep=skip)
            if contact:
                mujoco.mj_rnePostConstraint(m, d)
        self._read(index)

    def _read(self, index: np.ndarray) -> None:
        body, contact = self.readout.position_body, self.readout.contact_range is not None
        for i in index.tolist():
            d = self.data[i]
            self._qpos[i], self._qvel[i] = d.qpos, d.qvel
            self._x[i] = d.qpos[0] if body is None else d.xpos[body, 0]
            if contact:
                self._cfrc[i] = d.cfrc_ext

    def _observe(self, index: np.ndarray) -> np.ndarray:
        r = self.readout
        parts = [self._qpos[index, r.skip_qpos :], self._qvel[index]]
        if r.contact_in_obs:
            parts.append(np.clip(self._cfrc[index, 1:], *r.contact_range).reshape(len(index), -1))
        return np.concatenate(parts, axis=1)
