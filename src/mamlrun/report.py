"""Tables and plots from finished runs: per-run figures, sweep summaries, paper comparisons.

Runs write ``metrics.jsonl`` (every logged step) and ``metrics.json`` (final metrics) into their
Hydra run directory; everything here reads those files (and ``.hydra/overrides.yaml``), so a
table can be rebuilt from a sweep directory at any time: ``python -m mamlrun.report <sweep dir>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
import yaml
from hydra.experimental.callback import Callback

from mamlrun import paper
from mamlrun.data.tasks import TaskBatch
from mamlrun.probabilistic import bmaml_sinusoid_report, uncertainty_report

FIGURE_TASK_SEED = 12345


# -- one run --------------------------------------------------------------------------------
def read_jsonl(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return pd.DataFrame(rows)


def learning_curve(run_dir: Path) -> Path | None:
    """``learning_curve.png``: the training signal (and validation metric) against meta-iteration.

    Supervised runs plot the query loss after adaptation (log scale); RL runs the average return
    before and after adaptation.
    """
    df = read_jsonl(run_dir / "metrics.jsonl")
    rl = "train/return_post" in df
    if df.empty or not (rl or "train/loss" in df):
        return None
    val_cols = [c for c in ("val/mse_mean", "val/acc_mean", "val/return_mean") if c in df]
    fig, axes = plt.subplots(1, 1 + bool(val_cols), figsize=(5 + 4 * bool(val_cols), 3.5), squeeze=False)
    # A short run logs a handful of points: draw them as markers, or a single point would be invisible.
    train = df.dropna(subset=["train/return_post" if rl else "train/loss"])
    style = {"marker": "o"} if len(train) < 20 else {}
    if rl:
        axes[0, 0].plot(train["step"], train["train/return_pre"], label="before adaptation", **style)
        axes[0, 0].plot(train["step"], train["train/return_post"], label="after adaptation", **style)
        axes[0, 0].set(xlabel="meta-iteration", ylabel="average return (train tasks)")
        axes[0, 0].legend(fontsize=8)
    else:
        axes[0, 0].plot(train["step"], train["train/loss"], **style)
        axes[0, 0].set(xlabel="meta-iteration", ylabel="train/loss (query, after adaptation)", yscale="log")
    if val_cols:
        val = df.dropna(subset=[val_cols[0]])
        axes[0, 1].plot(val["step"], val[val_cols[0]], marker="o")
        axes[0, 1].set(xlabel="meta-iteration", ylabel=val_cols[0])
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sinusoid_fit(learner, sampler, steps: tuple[int, ...] = (0, 1, 10), seed: int = FIGURE_TASK_SEED):
    """Ground truth, support points and predictions after ``steps`` inner updates on one fixed task."""
    device = next(learner.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    amp, phase = sampler.sample_functions(1, gen)
    xs = sampler._uniform((1, sampler.shots, 1), sampler.x_range, gen)
    grid = torch.linspace(*sampler.x_range, 200, device=device, dtype=xs.dtype).view(1, -1, 1)
    batch = TaskBatch(xs, amp * torch.sin(xs - phase), grid, amp * torch.sin(grid - phase))
    preds = learner.predictions(batch, max(steps))
    out = {
        "x": grid.flatten().tolist(),
        "truth": batch.y_query.flatten().tolist(),
        "x_support": xs.flatten().tolist(),
        "y_support": batch.y_support.flatten().tolist(),
    }
    out.update({f"step{k}": preds[k].mean(1).flatten().tolist() for k in steps})  # an ensemble's mean
    return out


def plot_sinusoid_fits(fits: dict[str, dict], path: Path) -> Path:
    """One panel per algorithm, like the paper's Figure 2."""
    fig, axes = plt.subplots(1, len(fits), figsize=(4.5 * len(fits), 3.5), squeeze=False, sharey=True)
    for ax, (title, fit) in zip(axes[0], fits.items()):
        ax.plot(fit["x"], fit["truth"], "r", label="ground truth")
        ax.plot(fit["x_support"], fit["y_support"], "^", color="purple", label="support points")
        for key, style in (("step0", ":"), ("step1", "--"), ("step10", "-")):
            if key in fit:
                ax.plot(
                    fit["x"],
                    fit[key],
                    style,
                    color="C0" if key != "step0" else "gray",
                    label=f"after {key[4:]} step{'s' if key != 'step1' else ''}",
                )
        ax.set(title=title, xlabel="x")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def navigation_paths(learner, sampler, goals: int = 3, steps: int = 3, seed: int = FIGURE_TASK_SEED) -> dict:
    """One sampled trajectory per goal before adaptation and after each of ``steps`` steps (2D navigation)."""
    device = next(learner.parameters()).device
    batch = sampler.sample(goals, "test", torch.Generator(device=device).manual_seed(seed))
    paths = learner.trajectories(batch, steps)
    out: dict[str, Any] = {"goals": batch.goals.tolist()}
    for k, episodes in enumerate(paths):
        lengths = episodes.lengths[:, 0].long().tolist()
        out[f"step{k}"] = [episodes.obs[i, 0, : lengths[i]].tolist() for i in range(goals)]
        out[f"return_step{k}"] = episodes.returns[:, 0].tolist()
    return out


def plot_navigation_paths(paths: dict[str, dict], path: Path) -> Path:
    """Like the paper's Figure 4 (left): trajectories towards each goal before and after adaptation."""
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 4), squeeze=False)
    for ax, (title, run) in zip(axes[0], paths.items()):
        steps = sorted(int(k[4:]) for k in run if k.startswith("step"))
        for g, goal in enumerate(run["goals"]):
            color = f"C{g}"
            for k in steps:
                xy = [[0.0, 0.0], *run[f"step{k}"][g]]
                style = ":" if k == 0 else "-"
                alpha = 0.35 + 0.65 * k / max(steps[-1], 1)
                label = ("pre-update" if k == 0 else f"{k} step{'s' if k > 1 else ''}") if g == 0 else None
                ax.plot(*zip(*xy), style, color=color, alpha=alpha, lw=1.2, label=label)
            ax.plot(*goal, "*", color=color, ms=14, mec="k")
        ax.plot(0, 0, "ko", ms=4)
        ax.set(title=title, xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class LearningCurve:
    """A run's figure: ``learning_curve.png`` (see :func:`learning_curve`); nothing when nothing was logged."""

    def __call__(self, run_dir: Path, learner, sampler) -> Path | None:
        return learning_curve(run_dir)


class SinusoidFit:
    """A sinusoid run's figure: ``sinusoid_fit.png`` and the numbers behind it, ``sinusoid_fit.json``."""

    def __init__(self, title: str) -> None:
        self.title = title

    def __call__(self, run_dir: Path, learner, sampler) -> Path:
        fit = sinusoid_fit(learner, sampler)
        (run_dir / "sinusoid_fit.json").write_text(json.dumps(fit))
        return plot_sinusoid_fits({self.title: fit}, run_dir / "sinusoid_fit.png")


class Trajectories:
    """A 2D navigation run's figure: ``trajectories.png`` and the paths behind it, ``trajectories.json``."""

    def __init__(self, title: str, steps: int = 3) -> None:
        self.title, self.steps = title, min(3, steps)

    def __call__(self, run_dir: Path, learner, sampler) -> Path:
        paths = navigation_paths(learner, sampler, steps=self.steps)
        (run_dir / "trajectories.json").write_text(json.dumps(paths))
        return plot_navigation_paths({self.title: paths}, run_dir / "trajectories.png")


def forward_speeds(learner, sampler, goals: list[float], steps: int = 3, seed: int = FIGURE_TASK_SEED) -> dict:
    """Mean forward velocity over time per goal, before adaptation and after each of ``steps`` steps (locomotion)."""
    from mamlrun.rl.envs import EnvTaskBatch

    device = next(learner.parameters()).device
    seed_draw = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(seed)).item())
    batch = EnvTaskBatch(torch.tensor(goals, dtype=sampler.dtype, device=device).view(-1, 1), seed_draw)
    out: dict[str, Any] = {"goals": goals, "reward": sampler.reward}
    for k, episodes in enumerate(learner.trajectories(batch, steps)):
        mask = episodes.mask
        speed = (episodes.speed * mask).sum(1) / mask.sum(1).clamp(min=1)  # [goals, horizon]
        out[f"speed_step{k}"] = speed.tolist()
        out[f"return_step{k}"] = episodes.returns.mean(1).tolist()
    return out


class ForwardVelocity:
    """A locomotion run's figure: ``velocity.png`` (and ``velocity.json``), the forward velocity over an episode.

    For a forward and a backward task (direction tasks) or a slow and a fast target (velocity tasks),
    the velocity averaged over the test-time trajectories before adaptation and after each step,
    like the paper's videos of the adapted cheetah.
    """

    def __init__(self, title: str, steps: int = 3) -> None:
        self.title, self.steps = title, min(3, steps)

    def __call__(self, run_dir: Path, learner, sampler) -> Path:
        if sampler.reward == "direction":
            goals = [1.0, -1.0]
        else:
            low, high = sampler.goal_low[0], sampler.goal_high[0]
            goals = [low + 0.25 * (high - low), low + 0.75 * (high - low)]
        run = forward_speeds(learner, sampler, goals, self.steps)
        (run_dir / "velocity.json").write_text(json.dumps(run))
        return plot_forward_speeds(run, self.title, run_dir / "velocity.png")


def plot_forward_speeds(run: dict, title: str, path: Path) -> Path:
    steps = sorted(int(k.removeprefix("speed_step")) for k in run if k.startswith("speed_step"))
    fig, axes = plt.subplots(1, len(run["goals"]), figsize=(4.2 * len(run["goals"]), 3.4), squeeze=False)
    for g, (ax, goal) in enumerate(zip(axes[0], run["goals"], strict=True)):
        for k in steps:
            label = "pre-update" if k == 0 else f"{k} step{'s' if k > 1 else ''}"
            label += f" (return {run[f'return_step{k}'][g]:.0f})"
            ax.plot(run[f"speed_step{k}"][g], color=f"C{k}", lw=1.2, label=label)
        if run["reward"] == "velocity":
            ax.axhline(goal, color="k", ls="--", lw=0.8, label="target")
        name = {1.0: "forward", -1.0: "backward"}.get(goal) if run["reward"] == "direction" else f"target {goal:.2f}"
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set(title=f"{title}: {name}", xlabel="time step", ylabel="forward velocity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sweeps ---------------------------------------------------------------------------------
def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished job of a sweep: its overrides, a few config values, its final metrics."""
    rows = []
    for metrics_path in sorted(Path(sweep_dir).rglob("metrics.json")):
        job = metrics_path.parent
        row: dict[str, Any] = {"job": str(job.relative_to(sweep_dir))}
        hydra_path = job / ".hydra" / "hydra.yaml"
        if hydra_path.exists():
            choices = yaml.safe_load(hydra_path.read_text())["hydra"]["runtime"]["choices"]
            row["experiment"] = choices.get("experiment")
            row["ablation"] = choices.get("ablation")
        cfg_path = job / ".hydra" / "config.yaml"
        if cfg_path.exists():
            cfg = yaml.safe_load(cfg_path.read_text())
            row.update(
                {
                    "dataset": cfg["dataset"]["name"],
                    "algorithm": cfg["algorithm"]["name"],
                    "posterior": cfg["algorithm"].get("posterior"),
                    "ways": cfg.get("ways"),
                    "shots": cfg.get("shots"),
                    "inner_steps": cfg.get("inner_steps"),
                    "seed": cfg.get("seed"),
                    "train_functions": cfg["dataset"].get("train_functions"),
                }
            )
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.exists():
            row["overrides"] = " ".join(yaml.safe_load(overrides.read_text()) or [])
        row.update(json.loads(metrics_path.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, stem: Path, shown: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """``<stem>.csv`` (all numbers) and ``<stem>.md`` (``shown``, a formatted view, if given)."""
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv, index=False)
    md.write_text((df if shown is None else shown).to_markdown(index=False, floatfmt=".4g") + "\n")
    return csv, md


def with_ci(mean: float, ci: float, digits: int = 3) -> str:
    return "—" if pd.isna(mean) else f"{mean:.{digits}f} ± {ci:.{digits}f}" if not pd.isna(ci) else f"{mean:.{digits}f}"


def summarize_sweep(sweep_dir: Path) -> Path | None:
    """``summary.csv`` / ``summary.md`` in the sweep directory, with the headline metrics per job."""
    df = collect(sweep_dir)
    if df.empty:
        return None
    keep = [
        c
        for c in df.columns
        if not c.startswith(("test/", "val/", "train/"))
        or c.endswith(("_mean", "_ci95", "_best"))
        or c in ("train/wall_s", "test/mse_step1", "test/return_step0")
    ]
    return write_table(df[keep], Path(sweep_dir) / "summary")[1]


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write the sweep's summary table next to its jobs."""

    def on_multirun_end(self, config, **kwargs) -> None:
        path = summarize_sweep(Path(config.hydra.sweep.dir))
        if path:
            print(f"mamlrun: sweep summary: {path}", flush=True)


def sinusoid_table(sweep_dir: Path) -> pd.DataFrame:
    """MSE after 1/5/10 steps per algorithm and K, with the paper's K = 5 numbers beside ours."""
    df = collect(sweep_dir)
    df = df[df["dataset"] == "sinusoid"]
    rows = []
    for (algo, shots), group in df.groupby(["algorithm", "shots"], sort=True):
        row: dict[str, Any] = {"algorithm": algo, "K": int(shots), "seeds": len(group)}
        for k in (1, 5, 10):
            row[f"mse_step{k}"] = group[f"test/mse_step{k}"].mean()
            row[f"ci95_step{k}"] = group[f"test/mse_ci95_step{k}"].mean()
            published = paper.SINUSOID.get(algo, {}).get(k) if shots == 5 else None
            row[f"paper_step{k}"] = published
        row["wall_s"] = group["train/wall_s"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def sinusoid_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """The sinusoid table (markdown + CSV) and a Figure-2-style plot of MAML next to pretrain."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = sinusoid_table(sweep_dir)
    shown = table[["algorithm", "K", "seeds"]].copy()
    for k in (1, 5, 10):
        shown[f"MSE {k} step{'s' if k > 1 else ''}"] = [
            with_ci(m, c) for m, c in zip(table[f"mse_step{k}"], table[f"ci95_step{k}"])
        ]
        shown[f"paper {k}"] = [with_ci(p, float("nan"), 2) for p in table[f"paper_step{k}"]]
    shown["wall (s)"] = table["wall_s"].round(0)
    written = list(write_table(table, out_dir / "sinusoid", shown))
    fits = {}
    for job in sorted(Path(sweep_dir).glob("*/sinusoid_fit.json")):
        cfg = yaml.safe_load((job.parent / ".hydra" / "config.yaml").read_text())
        if cfg["shots"] == 5:
            fits[f"{cfg['algorithm']['name']}, K=5"] = json.loads(job.read_text())
    if fits:
        written.append(plot_sinusoid_fits(dict(sorted(fits.items())), out_dir / "sinusoid_fit.png"))
    return written


def accuracy(group: pd.DataFrame, published: tuple) -> dict[str, Any]:
    """Test accuracy (%) of a group of finished runs (mean over seeds), beside ``(mean, ci)`` published."""
    return {
        "seeds": len(group),
        "acc": 100 * group["test/acc_mean"].mean(),
        "ci95": 100 * group["test/acc_ci95"].mean(),
        "paper": published[0],
        "paper_ci95": published[1],
        "meta_iterations": int(group["train/meta_iterations"].max()),
        "wall_s": group["train/wall_s"].mean(),
    }


def accuracy_columns(table: pd.DataFrame) -> dict[str, Any]:
    """The shown columns of a table of :func:`accuracy` rows: ours and the paper's with intervals, iterations, wall."""
    return {
        "mamlrun acc (%)": [with_ci(a, c, 2) for a, c in zip(table["acc"], table["ci95"])],
        "paper (%)": [with_ci(a, c, 2) for a, c in zip(table["paper"], table["paper_ci95"])],
        "meta-iterations": table["meta_iterations"],
        "wall (s)": table["wall_s"].round(0),
    }


def table1(sweep_dir: Path) -> pd.DataFrame:
    """Accuracy (%) per Table 1 cell and algorithm, mean over seeds, beside the paper's."""
    df = collect(sweep_dir)
    df = df[df["experiment"].isin(list(paper.TABLE1))] if "experiment" in df else df.iloc[0:0]
    rows = []
    for (cell, algo), group in df.groupby(["experiment", "algorithm"], sort=False):
        published = paper.TABLE1[cell].get(algo, (None, None))
        rows.append({"cell": cell, "algorithm": algo, **accuracy(group, published)})
    if not rows:
        return pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(paper.TABLE1)}
    table = pd.DataFrame(rows).assign(order=lambda t: t["cell"].map(order))
    return table.sort_values(["order", "algorithm"], ascending=[True, False]).drop(columns="order")


def table1_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """Table 1 (markdown + CSV) and accuracy against inner steps (``table1_steps.png``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table1(sweep_dir)
    if table.empty:
        return []
    shown = pd.DataFrame(
        {
            "cell": table["cell"],
            "algorithm": table["algorithm"],
            **accuracy_columns(table),
        }
    )
    written = list(write_table(table, out_dir / "table1", shown))
    df = collect(sweep_dir)
    df = df[df["experiment"].isin(list(paper.TABLE1))]
    cells = list(dict.fromkeys(table["cell"]))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for algo, group in df[df["experiment"] == cell].groupby("algorithm"):
            steps = sorted(int(c.rsplit("step", 1)[1]) for c in group if c.startswith("test/acc_step"))
            ax.plot(steps, [100 * group[f"test/acc_step{k}"].mean() for k in steps], marker="o", label=algo)
        ax.set(title=cell.replace("_", " "), xlabel="inner steps at test", ylabel="accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "table1_steps.png", dpi=110)
    plt.close(fig)
    return [*written, out_dir / "table1_steps.png"]


def mamlpp_ablation(sweep_dir: Path) -> pd.DataFrame:
    """Accuracy (%) per MAML++ ablation row (``+ablation=``) and Omniglot 20-way cell, beside the paper's."""
    df = collect(sweep_dir)
    if df.empty or "ablation" not in df:
        return pd.DataFrame()
    df = df[df["experiment"].isin(list(paper.MAMLPP_ABLATION)) & df["ablation"].isin(list(paper.MAMLPP_ABLATION_ROWS))]
    rows = [
        {"cell": cell, "row": row, "name": paper.MAMLPP_ABLATION_ROWS[row]}
        | accuracy(group, paper.MAMLPP_ABLATION[cell].get(row, (None, None)))
        for (cell, row), group in df.groupby(["experiment", "ablation"])
    ]
    if not rows:
        return pd.DataFrame()
    order = {"cell": list(paper.MAMLPP_ABLATION).index, "row": list(paper.MAMLPP_ABLATION_ROWS).index}
    return pd.DataFrame(rows).sort_values(["cell", "row"], key=lambda column: column.map(order[column.name]))


def mamlpp_ablation_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """MAML++'s ablation table (markdown + CSV) and ``mamlpp_ablation.png``: each row's accuracy per cell."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = mamlpp_ablation(sweep_dir)
    if table.empty:
        return []
    shown = pd.DataFrame(
        {
            "cell": table["cell"].str.removeprefix("mamlpp_"),
            "row": table["name"],
            **accuracy_columns(table),
        }
    )
    written = list(write_table(table, out_dir / "mamlpp_ablation", shown))
    cells = list(dict.fromkeys(table["cell"]))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False, sharey=True)
    for ax, cell in zip(axes[0], cells):
        part = table[table["cell"] == cell].reset_index(drop=True)
        ax.barh(part.index, part["acc"], xerr=part["ci95"], color="C0", capsize=3, label="mamlrun")
        published = part.dropna(subset=["paper"])
        ax.plot(published["paper"], published.index, "kx", markersize=8, label="paper")
        ax.set(yticks=part.index, yticklabels=part["name"], xlabel="test accuracy (%)")
        ax.set(title=cell.removeprefix("mamlpp_"), xlim=(max(0.0, min([*part["acc"], *published["paper"]]) - 5), 100))
        ax.invert_yaxis()
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "mamlpp_ablation.png", dpi=110)
    plt.close(fig)
    return [*written, out_dir / "mamlpp_ablation.png"]


def rl_table(sweep_dir: Path, experiment: str) -> pd.DataFrame:
    """Average return after 0..3 steps per algorithm (mean over seeds), with the paper's MAML numbers."""
    df = collect(sweep_dir)
    df = df[df["experiment"] == experiment] if "experiment" in df else df.iloc[0:0]
    rows = []
    for algo, group in df.groupby("algorithm", sort=False):
        row: dict[str, Any] = {"algorithm": algo, "seeds": len(group)}
        for k in range(4):
            row[f"return_step{k}"] = group.get(f"test/return_step{k}", pd.Series(dtype=float)).mean()
            row[f"ci95_step{k}"] = group.get(f"test/return_ci95_step{k}", pd.Series(dtype=float)).mean()
            row[f"paper_step{k}"] = paper.RL.get(experiment, {}).get(algo, {}).get(k)
        row["meta_iterations"] = int(group["train/meta_iterations"].max())
        row["wall_s"] = group["train/wall_s"].mean()
        rows.append(row)
    order = {"maml": 0, "fomaml": 1, "pretrain": 2, "random": 3}
    table = pd.DataFrame(rows)
    return table.sort_values("algorithm", key=lambda c: c.map(lambda a: order.get(a, 9))) if rows else table


def rl_report(sweep_dir: Path, out_dir: Path, experiment: str) -> list[Path]:
    """The RL table (markdown + CSV), return against steps and, for 2D navigation, trajectory plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rl_table(sweep_dir, experiment)
    if table.empty:
        return []
    shown = table[["algorithm", "seeds"]].copy()
    for k in range(4):
        shown[f"{k} steps"] = [with_ci(m, c, 2) for m, c in zip(table[f"return_step{k}"], table[f"ci95_step{k}"])]
        shown[f"paper {k}"] = [with_ci(p, float("nan"), 2) for p in table[f"paper_step{k}"]]
    shown["meta-iterations"] = table["meta_iterations"]
    shown["wall (s)"] = table["wall_s"].round(0)
    written = list(write_table(table, out_dir / experiment, shown))
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for _, row in table.iterrows():
        steps = [k for k in range(4) if not pd.isna(row[f"return_step{k}"])]
        ax.errorbar(
            steps,
            [row[f"return_step{k}"] for k in steps],
            [row[f"ci95_step{k}"] for k in steps],
            marker="o",
            capsize=3,
            label=row["algorithm"],
        )
    published = paper.RL.get(experiment, {}).get("maml")
    if published:
        ax.plot(list(published), list(published.values()), "k--", marker="x", label="paper (MAML)")
    ax.set(xlabel="number of gradient steps", ylabel="average return", title=experiment.removeprefix("rl_"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{experiment}_steps.png", dpi=110)
    plt.close(fig)
    written.append(out_dir / f"{experiment}_steps.png")
    paths = {}
    for job in sorted(Path(sweep_dir).glob("*/trajectories.json")):
        cfg = yaml.safe_load((job.parent / ".hydra" / "config.yaml").read_text())
        paths[cfg["algorithm"]["name"]] = json.loads(job.read_text())
    if paths:
        ordered = dict(sorted(paths.items(), key=lambda kv: {"maml": 0, "pretrain": 1}.get(kv[0], 2)))
        written.append(plot_navigation_paths(ordered, out_dir / f"{experiment}_trajectories.png"))
    return written


REPORTS = {
    "sinusoid": sinusoid_report,
    "uncertainty": uncertainty_report,
    "bmaml_sinusoid": bmaml_sinusoid_report,
    "table1": table1_report,
    "mamlpp_ablation": mamlpp_ablation_report,
    "rl_navigation2d": lambda sweep, out: rl_report(sweep, out, "rl_navigation2d"),
    "rl_halfcheetah_dir": lambda sweep, out: rl_report(sweep, out, "rl_halfcheetah_dir"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlrun.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--table", choices=sorted(REPORTS), help="also write this paper comparison")
    parser.add_argument("--out", type=Path, default=Path("outputs/reports"))
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"mamlrun: error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    if collect(args.sweep_dir).empty:
        print(f"mamlrun: error: no finished runs (metrics.json) under {args.sweep_dir}", file=sys.stderr)
        return 2
    written = [summarize_sweep(args.sweep_dir)]
    if args.table:
        written += REPORTS[args.table](args.sweep_dir, args.out)
    for path in written:
        print(path)
    if args.table:
        print((args.out / f"{args.table}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
