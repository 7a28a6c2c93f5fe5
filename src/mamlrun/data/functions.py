"""Noisy 1-D regression tasks whose few support points leave the function ambiguous.

Two families of the probabilistic MAML papers, as one sampler:

- ``sine_line`` (PLATIPUS, LEO): half the tasks a sine ``A sin(x - b)``, half a line ``a x + c``,
  with Gaussian noise of standard deviation 0.3 on every target, 5 support points: a handful
  of noisy points often fits both families.
- ``bmaml_sinusoid`` (BMAML): sines ``A sin(w x - b)`` with a random frequency, noise
  proportional to the amplitude, and a finite set of meta-training functions.
"""

from __future__ import annotations

import math

import torch

from mamlrun.data.tasks import TaskBatch
from mamlrun.errors import MamlrunError
from mamlrun.objectives import Regression

# The stream of a finite meta-training set of functions (``train_functions``), fixed per dataset.
FUNCTION_POOL_SEED = 20180601


class FunctionTasks:
    """Tasks ``y = f(x) + noise`` with ``f`` a sine or a line.

    A task is a sine ``A sin(w x - b)`` (``A`` in ``amplitude``, ``b`` in ``phase``, ``w`` in
    ``frequency``) with probability ``1 - line_fraction``, else a line ``a x + c`` (``a`` in
    ``slope``, ``c`` in ``intercept``); every range is sampled uniformly, as are the inputs in
    ``x_range``. Targets get Gaussian noise of standard deviation ``noise_std + noise_factor * A``
    (``A = 0`` for lines); the objective's predictive distribution assumes ``noise_std``.
    Validation and test query sets have ``eval_query_points`` points, noise-free when
    ``noisy_eval`` is false (BMAML's protocol: the error against the function itself).

    ``train_functions``: meta-train on that many functions only, drawn once from a fixed stream
    (BMAML's 100 or 1000 training tasks; fresh inputs every time); ``None``: a new function
    every task. Validation and test always draw new functions.

    References:
        Finn, Xu, Levine. "Probabilistic Model-Agnostic Meta-Learning." NeurIPS 2018, section 5
        (sines and lines, noise 0.3, 5 points); Rusu et al. "Meta-Learning with Latent Embedding
        Optimization." ICLR 2019, section 4.1. Kim, Yoon et al. "Bayesian Model-Agnostic
        Meta-Learning." NeurIPS 2018, section 4.1 and its code (A in [0.1, 5], b in [0, 2 pi],
        w in [0.5, 2], noise 0.01 A).
    """

    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        shots: int,
        query_shots: int,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        frequency: tuple[float, float] = (1.0, 1.0),
        slope: tuple[float, float] = (-3.0, 3.0),
        intercept: tuple[float, float] = (-3.0, 3.0),
        line_fraction: float = 0.5,
        noise_std: float = 0.3,
        noise_factor: float = 0.0,
        x_range: tuple[float, float] = (-5.0, 5.0),
        eval_query_points: int = 100,
        noisy_eval: bool = True,
        train_functions: int | None = None,
        name: str = "sine_line",
        device: str | torch.device = "cpu",
    ) -> None:
        if shots < 1 or query_shots < 1 or eval_query_points < 1:
            raise MamlrunError(f"{name}: shots, query_shots and eval_query_points must be at least 1")
        if not 0.0 <= line_fraction <= 1.0 or noise_std < 0 or noise_factor < 0:
            raise MamlrunError(f"{name}: line_fraction must be in [0, 1] and the noise non-negative")
        if train_functions is not None and int(train_functions) < 1:
            raise MamlrunError(f"{name}: train_functions must be at least 1 (or null: unlimited)")
        self.name, self.shots, self.query_shots, self.eval_query_points = name, shots, query_shots, eval_query_points
        self.ranges = {
            "amplitude": tuple(amplitude),
            "phase": tuple(phase),
            "frequency": tuple(frequency),
            "slope": tuple(slope),
            "intercept": tuple(intercept),
        }
        self.line_fraction = float(line_fraction)
        self.noise_std, self.noise_factor = float(noise_std), float(noise_factor)
        self.x_range, self.noisy_eval = tuple(x_range), bool(noisy_eval)
        self.train_functions = None if train_functions is None else int(train_functions)
        self.objective = Regression(noise_std=noise_std)
        self.device, self.dtype = torch.device(device), torch.float32
        self._pool: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> FunctionTasks:
        self.device, self.dtype, self._pool = torch.device(device), dtype, None
        return self

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        return torch.rand(shape, generator=gen, device=self.device, dtype=self.dtype) * (hi - lo) + lo

    def sample_functions(self, num_tasks: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every task's function: its family (``line``: 1.0 for lines) and parameters, each ``[tasks, 1, 1]``."""
        shape = (num_tasks, 1, 1)
        out = {k: self._uniform(shape, r, generator) for k, r in self.ranges.items()}
        out["line"] = (torch.rand(shape, generator=generator, device=self.device) < self.line_fraction).to(self.dtype)
        return out

    def evaluate_functions(self, f: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The noise-free values of the functions ``f`` at ``x`` ``[tasks, n, 1]``."""
        sine = f["amplitude"] * torch.sin(f["frequency"] * x - f["phase"])
        line = f["slope"] * x + f["intercept"]
        return torch.where(f["line"] > 0, line, sine)

    def noise(self, f: dict[str, torch.Tensor], shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        std = self.noise_std + self.noise_factor * f["amplitude"] * (1 - f["line"])
        return std * torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)

    def pool(self) -> dict[str, torch.Tensor]:
        """The finite set of meta-training functions (drawn once from :data:`FUNCTION_POOL_SEED`)."""
        if self._pool is None:
            gen = torch.Generator(device=self.device).manual_seed(FUNCTION_POOL_SEED)
            self._pool = self.sample_functions(self.train_functions, gen)
        return self._pool

    def sample(self, num_tasks: int, split: str, generator: torch.Generator) -> TaskBatch:
        if split == "train" and self.train_functions is not None:
            index = torch.randint(self.train_functions, (num_tasks,), generator=generator, device=self.device)
            f = {k: v[index] for k, v in self.pool().items()}
        else:
            f = self.sample_functions(num_tasks, generator)
        query = self.query_shots if split == "train" else self.eval_query_points
        xs = self._uniform((num_tasks, self.shots, 1), self.x_range, generator)
        xq = self._uniform((num_tasks, query, 1), self.x_range, generator)
        ys = self.evaluate_functions(f, xs) + self.noise(f, xs.shape, generator)
        yq = self.evaluate_functions(f, xq)
        if split == "train" or self.noisy_eval:
            yq = yq + self.noise(f, xq.shape, generator)
        return TaskBatch(xs, ys, xq, yq)

    def figure_tasks(self, generator: torch.Generator, points: int = 200) -> tuple[TaskBatch, dict[str, torch.Tensor]]:
        """One sine and one line task for pictures: noisy support points, the true function on a grid."""
        f = self.sample_functions(2, generator)
        f["line"] = torch.tensor([0.0, 1.0], device=self.device, dtype=self.dtype).view(2, 1, 1)
        xs = self._uniform((2, self.shots, 1), self.x_range, generator)
        grid = torch.linspace(*self.x_range, points, device=self.device, dtype=self.dtype)
        grid = grid.view(1, -1, 1).expand(2, -1, -1)
        ys = self.evaluate_functions(f, xs) + self.noise(f, xs.shape, generator)
        return TaskBatch(xs, ys, grid, self.evaluate_functions(f, grid)), f
