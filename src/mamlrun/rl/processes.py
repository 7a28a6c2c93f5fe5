"""A pool of MuJoCo simulations split over worker processes, for machines with many cores.

:class:`~mamlrun.rl.simulator.MujocoPool` steps its episodes in native threads, but the per-episode
Python around ``mj_step`` (writing controls, reading the state back) and every reset run under one
interpreter lock, which caps it at a few cores. :class:`ProcessPool` gives each of ``processes``
spawned workers a contiguous share of the episodes and a :class:`MujocoPool` of its own (one
thread); per time step the parent sends each worker the indices and actions of its live episodes
and gathers their results, so the Python scales with the processes. Each worker builds its own
gymnasium environment from the environment id, resets its episodes with their own seeds and steps
them with the same code as the threaded pool: the trajectories are gymnasium's, bit for bit
(``tests/rl/test_simulator.py``).

A worker that raises, dies or does not answer within ``timeout_s`` ends the run with a one-line
error; the workers are daemon processes that also exit when their pipe closes, so none outlives
the run.

References:
    Python documentation, ``multiprocessing`` ("spawn" start method, ``Pipe``, daemon processes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Sequence

import numpy as np

from mamlrun.errors import MamlrunError
from mamlrun.rl.simulator import MujocoPool, Step

STARTUP_S = 120.0  # the longest a worker may take to start (import, build its environment)


def _serve(env_id: str, conn) -> None:
    """A worker: build the environment and its one-thread pool, then answer ``reset``/``step`` until closed."""
    import gymnasium as gym

    try:
        pool = MujocoPool(gym.make(env_id, disable_env_checker=True).unwrapped, threads=1)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    conn.send(("ok", None))  # ready
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if command == "close":
            return
        try:
            conn.send(("ok", pool.reset(*args) if command == "reset" else pool.step(*args)))
        except Exception as exc:  # the parent turns it into its one-line error
            conn.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))


class ProcessPool:
    """Many episodes of one gymnasium MuJoCo environment, split over ``processes`` worker processes.

    Args:
        env_id: the gymnasium id every worker makes its (bare) environment from.
        processes: worker processes; each steps its share of the episodes in one thread.
        timeout_s: how long a worker may take to answer one reset or time step of its share.

    The interface is :class:`~mamlrun.rl.simulator.MujocoPool`'s: ``reset(seeds)`` and
    ``step(index, actions)`` over the episodes ``0..len(seeds)-1`` of the last reset.
    """

    def __init__(self, env_id: str, processes: int, timeout_s: float = 120.0) -> None:
        self.timeout_s = float(timeout_s)
        self._conns, self._procs = [], []
        self._bounds = np.zeros(1, dtype=int)
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs torch threads
        for _ in range(max(1, int(processes))):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(env_id, child), daemon=True, name="mamlrun-simulator")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for w in range(self.processes):  # each worker imports gymnasium and MuJoCo first: seconds
            self._receive(w, max(self.timeout_s, STARTUP_S))

    @property
    def processes(self) -> int:
        return len(self._procs)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset episodes ``0..len(seeds)-1`` (contiguous shares per worker); their observations."""
        n = len(seeds)
        self._bounds = np.linspace(0, n, self.processes + 1).round().astype(int)
        shares = [(w, [int(s) for s in seeds[a:b]]) for w, (a, b) in enumerate(self._shares())]
        for w, share in shares:
            self._send(w, ("reset", (share,)))
        return np.concatenate([self._receive(w) for w, _ in shares], axis=0)

    def step(self, index: np.ndarray, actions: np.ndarray) -> Step:
        """Step episodes ``index`` (ascending) with ``actions``, each worker its own share."""
        index = np.asarray(index)
        owner = np.searchsorted(self._bounds, index, side="right") - 1
        busy = [w for w in range(self.processes) if (owner == w).any()] or [0]  # none live: an empty step
        for w in busy:
            mine = owner == w
            self._send(w, ("step", (index[mine] - self._bounds[w], actions[mine])))
        parts = [self._receive(w) for w in busy]
        fields = ("obs", "x_velocity", "terminated", "contact_reward")
        return Step(*(np.concatenate([getattr(p, f) for p in parts], axis=0) for f in fields))

    def _shares(self) -> list[tuple[int, int]]:
        return list(zip(self._bounds[:-1].tolist(), self._bounds[1:].tolist()))

    # -- messages ----------------------------------------------------------------------------------
    def _send(self, worker: int, message) -> None:
        try:
            self._conns[worker].send(message)
        except (BrokenPipeError, EOFError, OSError):
            self._fail(f"simulator worker process {worker} is gone (exit code {self._procs[worker].exitcode})")

    def _receive(self, worker: int, timeout_s: float | None = None):
        conn, timeout_s = self._conns[worker], self.timeout_s if timeout_s is None else timeout_s
        try:
            ready = conn.poll(timeout_s)
            status, value = conn.recv() if ready else (None, None)
        except (EOFError, OSError):
            self._procs[worker].join(1.0)
            self._fail(f"simulator worker process {worker} died (exit code {self._procs[worker].exitcode})")
        if not ready:
            self._fail(
                f"simulator worker process {worker} did not answer within {timeout_s:g} s "
                "(dataset.sim_timeout_s); the run stops"
            )
        if status == "error":
            self._fail(f"a simulator worker process failed: {value}")
        return value

    def _fail(self, message: str):
        self.close()
        raise MamlrunError(message)

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker (asked first, then terminated, then killed) and reap it."""
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, EOFError, OSError):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(1.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __del__(self) -> None:
        if getattr(self, "_procs", None):
            self.close()
