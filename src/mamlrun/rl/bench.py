"""The meta-RL part of ``make bench``: one MAML-TRPO meta-update, three ways, same trajectories.

2D navigation with the paper's recipe (meta-batch 20, 20 trajectories of 100 steps per task, one
inner step, CG 10 iterations): the update that mamlrun runs (all tasks batched, the KL's Hessian
applied as ``J^T F J``), the same batched objective with the KL's Hessian by double backward through
the whole objective (how MAML-TRPO code usually computes it), and learn2learn's ``MAML`` with
``clone()``/``adapt()`` per task (its MAML-TRPO example's structure). All three start from the same
parameters and trajectories; the table also shows how far their updated parameters differ.
"""

from __future__ import annotations

import statistics
import time

import torch

from mamlrun.rl import TRPO, GaussianMLP, MetaRL, Navigation2D
from mamlrun.rl.learner import masked_mean
from mamlrun.rl.policy import kl_divergence, log_prob


def _learner() -> tuple[MetaRL, object]:
    torch.manual_seed(0)
    tasks = Navigation2D()
    learner = MetaRL(
        GaussianMLP((2,), 2), tasks, inner_lr=0.1, inner_steps=1, test_inner_steps=1, shots=20, query_shots=20
    )
    return learner, tasks.sample(20, "train", torch.Generator().manual_seed(0))


def _learn2learn_step(learner: MetaRL, objective) -> dict:
    """Per task: clone the policy, adapt on its support trajectories, surrogate and KL on its query ones."""
    from mamlrun.algorithms.l2l import import_learn2learn

    maml = import_learn2learn().algorithms.MAML(learner.policy, lr=learner.inner_lr)
    ((support, adv),) = objective.supports
    query, query_adv, old = objective.query

    def per_task(t: int):
        clone = maml.clone()
        logp = log_prob(clone(support.obs[t]), clone.log_std, support.actions[t])
        clone.adapt(-masked_mean((logp * adv[t])[None], support.mask[t][None]).sum())
        mean = clone(query.obs[t])
        ratio = torch.exp(log_prob(mean, clone.log_std, query.actions[t]) - old["logp"][t])
        loss = -masked_mean((ratio * query_adv[t])[None], query.mask[t][None]).sum()
        kl = kl_divergence(old["mean"][t], old["log_std"][t], mean, clone.log_std)
        return loss, masked_mean(kl[None], query.mask[t][None]).sum()

    def closure(differentiable: bool):
        parts = [per_task(t) for t in range(query.mask.shape[0])]
        return torch.stack([p[0] for p in parts]).mean(), torch.stack([p[1] for p in parts]).mean()

    return TRPO(learner.parameters()).step(closure)


def rl_update(repeats: int = 2) -> list[dict]:
    """Median time of one TRPO meta-update per implementation, and the largest parameter difference."""
    learner, batch = _learner()
    objective = learner.meta_objective(batch)
    start = {k: v.clone() for k, v in learner.state_dict().items()}
    implementations = {
        "mamlrun (J^T F J)": lambda: TRPO(learner.parameters()).step(objective.closure, objective.fisher_vector),
        "mamlrun, double-backward KL Hessian": lambda: TRPO(learner.parameters()).step(objective.closure),
        "learn2learn clone/adapt per task": lambda: _learn2learn_step(learner, objective),
    }
    rows, reference = [], None
    print("\nMAML-TRPO meta-update, 2D navigation (meta-batch 20 x 20 trajectories x 100 steps)", flush=True)
    for name, step in implementations.items():
        times = []
        try:
            for _ in range(repeats + 1):  # the first call warms up and is not timed
                learner.load_state_dict(start)
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        except Exception as exc:  # a missing peer is reported, never fatal
            print(f"  {name:<40} skipped: {str(exc).splitlines()[0]}")
            continue
        params = torch.cat([p.detach().flatten() for p in learner.parameters()])
        reference = params if reference is None else reference
        times = sorted(times[1:])
        ms = times[(len(times) - 1) // 2] * 1e3
        diff = (params - reference).abs().max().item()
        rows.append({"case": "rl_navigation2d_update", "implementation": name, "ms": ms, "max_param_diff": diff})
        print(f"  {name:<40} {ms:8.0f} ms   |dtheta| vs mamlrun {diff:.1e}", flush=True)
    learner.load_state_dict(start)
    base = next((r["ms"] for r in rows if r["implementation"].startswith("learn2learn")), None)
    for row in rows:
        row["speedup_vs_learn2learn"] = base / row["ms"] if base else None
    return rows


# -- the simulator ------------------------------------------------------------------------------
def _cheetah_learner(sampler: str, threads: int | None, tasks: int = 40, processes: int = 0) -> tuple[MetaRL, object]:
    """The paper's half-cheetah direction shape: 40 tasks, 20 trajectories per step, horizon 200."""
    from mamlrun.algorithms import MAML
    from mamlrun.rl import half_cheetah

    torch.manual_seed(0)
    env_tasks = half_cheetah("direction", sampler=sampler, sim_threads=threads, sim_processes=processes)
    policy = GaussianMLP(env_tasks.input_shape, env_tasks.output_dim)
    learner = MetaRL(policy, MAML(0.1, 1, 1), env_tasks, shots=20, query_shots=20)
    return learner, env_tasks.sample(tasks, "train", torch.Generator().manual_seed(0))


def physics_floor_us(steps: int = 2000) -> float:
    """Microseconds of ``mj_step`` alone per half-cheetah env step (5 substeps), one thread, no Python around it."""
    import mujoco
    import numpy as np

    from mamlrun.rl import half_cheetah

    env = half_cheetah("direction").pool[0].unwrapped
    env.reset(seed=0)
    model, data = env.model, env.data
    controls = np.random.default_rng(0).uniform(-1, 1, (steps, model.nu))
    t0 = time.perf_counter()
    for a in controls:
        data.ctrl[:] = a
        mujoco.mj_step(model, data, nstep=env.frame_skip)
    return (time.perf_counter() - t0) / steps * 1e6


def sampler_speed(rounds: int = 3, horizon: int = 50, tasks: int = 40) -> list[dict]:
    """MuJoCo steps per second of the half-cheetah pool (40 x 20 episodes): gymnasium vs native threads vs processes.

    Interleaved rounds of one rollout each (``horizon`` steps with the untrained policy); medians.
    """
    import os

    cores = len(os.sched_getaffinity(0))
    configs = {"gymnasium env.step loop": ("gym", None, 0)}
    configs.update({f"native, {k} thread{'s' * (k > 1)}": ("native", k, 0) for k in sorted({1, cores})})
    configs.update({f"native, {k} process{'es' * (k > 1)}": ("native", 1, k) for k in sorted({1, cores})})
    runs = {}
    for name, (sampler, threads, processes) in configs.items():
        learner, batch = _cheetah_learner(sampler, threads, tasks, processes)
        learner.tasks.horizon = horizon
        params = {k: v.detach() for k, v in learner.policy.batched_params(batch.num_tasks).items()}
        learner.sample(params, batch.goals, 20, batch.draws())  # builds the pool (not timed)
        runs[name] = (learner, params, batch)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (learner, params, batch) in runs.items():
            t0 = time.perf_counter()
            learner.sample(params, batch.goals, 20, batch.draws())
            times[name].append(time.perf_counter() - t0)
    steps = batch.num_tasks * 20 * horizon
    floor = physics_floor_us()
    print(f"\nHalf-cheetah pool ({tasks} tasks x 20 trajectories, {horizon} steps, untrained policy), {cores} cores")
    print(f"  mj_step alone: {floor:.1f} us per env step -> at most {1e6 / floor:,.0f} steps/s per thread")
    rows, base = [], None
    for name, t in times.items():
        rate = steps / statistics.median(t)
        base = base or rate
        rows.append(
            {
                "case": "rl_halfcheetah_sampler",
                "implementation": name,
                "steps_per_s": rate,
                "speedup_vs_gymnasium": rate / base,
                "physics_floor_us": floor,
                "cores": cores,
            }
        )
        print(f"  {name:<28} {rate:10,.0f} steps/s   {rate / base:5.2f}x")
    rates = {r["implementation"]: r["steps_per_s"] for r in rows}
    for unit, plural in (("thread", "threads"), ("process", "processes")):
        one, two = rates.get(f"native, 1 {unit}"), rates.get(f"native, 2 {plural}")
        if not (one and two and two > one):
            continue
        # Amdahl from the 1- and 2-worker rates: t(k) = serial + parallel / k per env step.
        parallel = 2 * (1 / one - 1 / two)
        serial = 1 / one - parallel
        row = next(r for r in rows if r["implementation"] == f"native, 2 {plural}")
        for k in (4, 8, 16):
            estimate = 1 / (serial + parallel / k)
            row[f"estimate_{k}_{plural}"] = estimate
            print(f"  estimate with {k:>2} simulator {plural} (Amdahl, from 1 and 2): {estimate:10,.0f} steps/s")
    for learner, _, _ in runs.values():
        close = getattr(learner.tasks._native, "close", None)
        if close is not None:
            close()
    return rows


def iteration_profile(tasks: int = 40, horizon: int = 200, processes: int = 0) -> list[dict]:
    """Where one half-cheetah MAML-TRPO meta-iteration (paper shape, native sampler) spends its time.

    ``processes > 0``: the simulator runs in that many worker processes instead of threads.
    """
    from mamlrun.rl.processes import ProcessPool
    from mamlrun.rl.simulator import MujocoPool
    from mamlrun.rl.trpo import TRPO

    learner, batch = _cheetah_learner("native", None, tasks, processes)
    learner.tasks.horizon = horizon
    spent = {"simulator": 0.0, "policy": 0.0}
    pool_class = ProcessPool if processes else MujocoPool
    step, actor = pool_class.step, learner.actor

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - t0
            return out

        return wrapper

    pool_class.step = timed("simulator", step)
    learner.actor = lambda params, draws: timed("policy", actor(params, draws))
    try:
        learner.tasks.native_pool()  # worker processes start outside the timing
        t0 = time.perf_counter()
        learner.meta_gradient(batch)
        t1 = time.perf_counter()
        TRPO(learner.parameters()).step(*learner.step_args())
        t2 = time.perf_counter()
    finally:
        pool_class.step = step
        if processes:
            learner.tasks.native_pool().close()
    workers = f"{processes} process{'es' * (processes > 1)}" if processes else "threads"
    parts = {
        f"simulator (MuJoCo steps, {workers})": spent["simulator"],
        "policy (actions for the pool)": spent["policy"],
        "rest of sampling (resets, advantages, inner step)": t1 - t0 - spent["simulator"] - spent["policy"],
        "TRPO (surrogate, CG with J^T F J, line search)": t2 - t1,
    }
    total = t2 - t0
    print(f"\nOne half-cheetah MAML-TRPO meta-iteration ({tasks} x 20 x {horizon}, twice): {total:.1f} s")
    for name, seconds in parts.items():
        print(f"  {name:<50} {seconds:6.1f} s  {seconds / total:5.1%}")
    return [
        {"case": "rl_halfcheetah_iteration", "implementation": name, "s": s, "fraction": s / total}
        for name, s in parts.items()
    ]
