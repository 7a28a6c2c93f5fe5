"""The meta-RL part of ``make bench``: one MAML-TRPO meta-update, three ways, same trajectories.

2D navigation with the paper's recipe (meta-batch 20, 20 trajectories of 100 steps per task, one
inner step, CG 10 iterations): the update that mamlrun runs (all tasks batched, the KL's Hessian
applied as ``J^T F J``), the same batched objective with the KL's Hessian by double backward through
the whole objective (how MAML-TRPO code usually computes it), and learn2learn's ``MAML`` with
``clone()``/``adapt()`` per task (its MAML-TRPO example's structure). All three start from the same
parameters and trajectories; the table also shows how far their updated parameters differ.
"""

from __future__ import annotations

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
