"""What the probabilistic meta-learners exist for, made visible: sampled functions, calibration.

- :class:`PosteriorSamples` (``posterior_samples.png``): on a sine and a line task, every model an
  algorithm adapts (particles, posterior samples; one for MAML) against the true function and the
  noisy support points, like PLATIPUS's and LEO's figures.
- :class:`Reliability` (``reliability.png`` + ``calibration.json``): the reliability diagram and
  the expected / maximum calibration error (ECE, MCE) of a classifier on the test tasks, pooled
  over every query prediction, as BMAML reports them.
- :func:`uncertainty_report`, :func:`bmaml_sinusoid_report`: the tables of ``make
  reproduce-uncertainty`` and ``make reproduce-bmaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from mamlrun.files import write_json
from mamlrun.objectives import ensemble_log_probs

FIGURE_TASK_SEED = 12345
TEST_STREAM_SEED = 777  # the tasks of the reliability diagram (fixed: every algorithm sees the same ones)


# -- sampled functions ------------------------------------------------------------------------------
class PosteriorSamples:
    """``posterior_samples.png`` / ``.json``: every adapted model on a sine and a line task (one run)."""

    def __init__(self, title: str, steps: int | None = None) -> None:
        self.title, self.steps = title, steps

    def __call__(self, run_dir: Path, learner, sampler) -> Path | None:
        if not hasattr(sampler, "figure_tasks"):
            return None
        device = next(learner.parameters()).device
        batch, _ = sampler.figure_tasks(torch.Generator(device=device).manual_seed(FIGURE_TASK_SEED))
        steps = learner.test_inner_steps if self.steps is None else self.steps
        samples = learner.predictions(batch, steps)[-1]  # [2 tasks, samples, points, 1]
        data = {
            "title": self.title,
            "steps": steps,
            "x": batch.x_query[0].flatten().tolist(),
            "tasks": [
                {
                    "family": family,
                    "truth": batch.y_query[t].flatten().tolist(),
                    "x_support": batch.x_support[t].flatten().tolist(),
                    "y_support": batch.y_support[t].flatten().tolist(),
                    "samples": samples[t, ..., 0].tolist(),
                }
                for t, family in enumerate(("sine", "line"))
            ],
        }
        write_json(run_dir / "posterior_samples.json", data)
        return plot_posterior_samples({self.title: data}, run_dir / "posterior_samples.png")


def plot_posterior_samples(runs: dict[str, dict], path: Path) -> Path:
    """One row per run, one column per task: the sampled functions, their mean, the truth, the support."""
    fig, axes = plt.subplots(len(runs), 2, figsize=(9, 3 * len(runs)), squeeze=False, sharex=True)
    for row, (title, data) in zip(axes, runs.items()):
        x = data["x"]
        for ax, task in zip(row, data["tasks"]):
            samples = torch.tensor(task["samples"])
            for curve in samples:
                ax.plot(x, curve, color="C0", alpha=max(0.08, 1.0 / len(samples)), lw=1)
            ax.plot(x, samples.mean(0), color="C0", lw=2, label=f"mean of {len(samples)} model(s)")
            ax.plot(x, task["truth"], "r--", lw=1.5, label="true function")
            ax.plot(task["x_support"], task["y_support"], "^", color="purple", label="support (noisy)")
            ax.set(title=f"{title}: a {task['family']}", xlabel="x")
        row[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- calibration --------------------------------------------------------------------------------
def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> dict:
    """Expected and maximum calibration error over equal-width confidence bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|``; ``MCE = max_b |acc_b - conf_b|`` over non-empty bins.

    References:
        Guo, Pleiss, Sun, Weinberger. "On Calibration of Modern Neural Networks." ICML 2017,
        section 2 (reliability diagrams, ECE, MCE); reported for BMAML by Kim, Yoon et al. 2018.
    """
    confidence, correct = confidence.flatten().double(), correct.flatten().double()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    filled = count > 0
    gap = torch.zeros(bins, dtype=torch.float64)
    gap[filled] = (acc_sum[filled] - conf_sum[filled]).abs() / count[filled]
    return {
        "ece": float((gap * count).sum() / count.sum()),
        "mce": float(gap[filled].max()) if filled.any() else 0.0,
        "accuracy": float(correct.mean()),
        "confidence": float(confidence.mean()),
        "bins": bins,
        "count": count.long().tolist(),
        "bin_accuracy": [float(a / c) if c else None for a, c in zip(acc_sum, count)],
        "bin_confidence": [float(a / c) if c else None for a, c in zip(conf_sum, count)],
    }


class Reliability:
    """``reliability.png`` + ``calibration.json``: a classifier's calibration on ``tasks`` test tasks."""

    def __init__(self, title: str, tasks: int = 600, bins: int = 10, batch_size: int = 100) -> None:
        self.title, self.tasks, self.bins, self.batch_size = title, int(tasks), int(bins), int(batch_size)

    def __call__(self, run_dir: Path, learner, sampler) -> Path | None:
        if learner.objective.metric != "acc":
            return None
        device = next(learner.parameters()).device
        gen = torch.Generator(device=device).manual_seed(TEST_STREAM_SEED)
        confidence, correct = [], []
        for start in range(0, self.tasks, self.batch_size):
            batch = sampler.sample(min(self.batch_size, self.tasks - start), "test", gen)
            probs = ensemble_log_probs(learner.predictions(batch, learner.test_inner_steps)[-1]).exp()
            top, label = probs.max(-1)
            confidence.append(top.cpu())
            correct.append((label == batch.y_query).cpu())
        pooled = calibration(torch.cat(confidence), torch.cat(correct), self.bins)
        result = {"title": self.title, "tasks": self.tasks, **pooled}
        write_json(run_dir / "calibration.json", result)
        return plot_reliability({self.title: result}, run_dir / "reliability.png")


def plot_reliability(runs: dict[str, dict], path: Path) -> Path:
    """Accuracy against confidence per bin (bars) beside the diagonal of perfect calibration."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.6), squeeze=False)
    for ax, (title, result) in zip(axes[0], runs.items()):
        bins = result["bins"]
        centres = [(b + 0.5) / bins for b in range(bins)]
        acc = [a if a is not None else 0.0 for a in result["bin_accuracy"]]
        ax.bar(centres, acc, width=1 / bins, edgecolor="black", color="C0", label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.set(
            title=f"{title}\nECE {100 * result['ece']:.2f} %, MCE {100 * result['mce']:.2f} %",
            xlabel="confidence",
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the tables of make reproduce-uncertainty and make reproduce-bmaml --------------------------------
def _runs(sweep_dir: Path, dataset: str) -> pd.DataFrame:
    from mamlrun.report import collect

    df = collect(sweep_dir)
    return df[df["dataset"] == dataset] if "dataset" in df else df.iloc[0:0]


def provenance(sweep_dir: Path, df: pd.DataFrame, command: str) -> str:
    """Markdown lines: the command, and every job's overrides, commit, start and hardware."""
    from mamlrun.results import hardware

    lines = ["", f"Provenance: `{command}` (sweep `{sweep_dir}`), on {hardware()}.", ""]
    for job in df["job"]:
        entries = json.loads((Path(sweep_dir) / job / "provenance.json").read_text())
        first = entries[0]
        dirty = " (uncommitted changes)" if first.get("git_dirty") else ""
        overrides = " ".join(first.get("overrides", []))
        lines.append(f"- `{job}`: `{overrides}`, commit {str(first.get('git_commit'))[:12]}{dirty}, {first['started']}")
    return "\n".join(lines) + "\n"


def tested_iteration(sweep_dir: Path, job: str) -> int:
    """The meta-iteration of the parameters a job tested (a training run's, or an evaluated checkpoint's)."""
    metrics = json.loads((Path(sweep_dir) / job / "metrics.json").read_text())
    if "test/checkpoint_iteration" in metrics:
        return int(metrics["test/checkpoint_iteration"])
    checkpoint = torch.load(metrics["test/checkpoint"], map_location="cpu", weights_only=True)
    return int(checkpoint["iteration"])


def uncertainty_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """Sines and lines: every algorithm's MSE, NLL and 95 % coverage, and their sampled functions."""
    from mamlrun.report import with_ci, write_table

    out_dir.mkdir(parents=True, exist_ok=True)
    df = _runs(sweep_dir, "sine_line")
    rows = []
    for algo, group in df.groupby("algorithm", sort=True):
        row = {"algorithm": algo, "seeds": len(group)}
        for metric in ("mse", "nll", "coverage"):
            row[metric] = group[f"test/{metric}_mean"].mean()
            row[f"{metric}_ci95"] = group[f"test/{metric}_ci95"].mean()
        row["tested_iteration"] = int(max(tested_iteration(sweep_dir, job) for job in group["job"]))
        row["wall_s"] = group["train/wall_s"].mean() if "train/wall_s" in group else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    shown = table[["algorithm", "seeds"]].copy()
    shown["MSE"] = [with_ci(m, c) for m, c in zip(table["mse"], table["mse_ci95"])]
    shown["NLL"] = [with_ci(m, c) for m, c in zip(table["nll"], table["nll_ci95"])]
    shown["95 % coverage"] = [with_ci(m, c) for m, c in zip(table["coverage"], table["coverage_ci95"])]
    shown["tested iteration"], shown["wall (s)"] = table["tested_iteration"], table["wall_s"].round(0)
    written = list(write_table(table, out_dir / "uncertainty", shown))
    with written[1].open("a") as md:
        md.write(provenance(sweep_dir, df, "make reproduce-uncertainty"))
    figures = {}
    for job in sorted(df["job"]):
        path = Path(sweep_dir) / job / "posterior_samples.json"
        if path.is_file():
            data = json.loads(path.read_text())
            figures[data["title"]] = data
    if figures:
        written.append(plot_posterior_samples(dict(sorted(figures.items())), out_dir / "posterior_samples.png"))
    return written


def bmaml_sinusoid_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """BMAML's regression: test MSE of EMAML and BMAML per K and number of meta-training functions."""
    from mamlrun.report import with_ci, write_table

    out_dir.mkdir(parents=True, exist_ok=True)
    df = _runs(sweep_dir, "bmaml_sinusoid")
    if "posterior" in df:  # BMAML with the paper's Bayesian posterior is a row of its own
        labels = [f"{a} ({p})" if p == "bayesian" else a for a, p in zip(df["algorithm"], df["posterior"])]
        df = df.assign(algorithm=labels)
    rows = []
    for (algo, shots, pool), group in df.groupby(["algorithm", "shots", "train_functions"], sort=True):
        rows.append(
            {
                "algorithm": algo,
                "K": int(shots),
                "train functions": int(pool),
                "seeds": len(group),
                "mse": group["test/mse_mean"].mean(),
                "mse_ci95": group["test/mse_ci95"].mean(),
                "iterations": int(group["train/meta_iterations"].max()),
                "wall_s": group["train/wall_s"].mean(),
            }
        )
    table = pd.DataFrame(rows)
    shown = table[["algorithm", "K", "train functions", "seeds"]].copy()
    shown["test MSE"] = [with_ci(m, c) for m, c in zip(table["mse"], table["mse_ci95"])]
    shown["iterations"], shown["wall (s)"] = table["iterations"], table["wall_s"].round(0)
    written = list(write_table(table, out_dir / "bmaml_sinusoid", shown))
    with written[1].open("a") as md:
        md.write(provenance(sweep_dir, df, "make reproduce-bmaml"))
    return written
