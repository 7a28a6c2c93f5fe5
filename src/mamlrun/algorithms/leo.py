"""LEO: latent embedding optimisation, adaptation in a low-dimensional space of generated classifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import batched_gradients, expand, inner_loop
from mamlrun.errors import MamlrunError
from mamlrun.models.batched import linear_head

if TYPE_CHECKING:
    from mamlrun.data.tasks import TaskBatch
    from mamlrun.learner import MetaLearner


class LEO(Algorithm):
    """The network's final linear layer is generated from a latent code that adapts by gradient descent.

    The network's body (everything below its final ``nn.Linear``) computes features and is
    meta-learned by the outer loop; the final layer's own parameters are not used. For a task:

    1. **Encode.** Every support example's features (for regression, with its target) are
       encoded (a linear map to ``latent_dim``), every ordered pair of codes goes through the
       relation network (3 layers of ``2 latent_dim``), and the outputs are averaged per class
       (regression: over the task) into the mean and standard deviation of a Gaussian over the
       latent code ``z``, one per class (one per task).
    2. **Decode.** A linear decoder maps ``z`` to the mean and standard deviation of the class's
       weight vector (regression: the output's weights and bias); the logits are the features
       times the weights.
    3. **Adapt in latent space**: ``inner_steps`` steps ``z <- z - alpha * grad_z L(support)``
       (``alpha``: a learned step per latent dimension, initialised at ``inner_lr``), decoding
       after every step; then **fine-tune** the decoded weights for ``finetune_steps`` steps
       ``w <- w - eta * grad_w L(support)`` (``eta`` learned per weight dimension).
    4. **Meta-loss**: the query loss of the adapted weights, plus ``kl_weight`` times
       ``KL(q(z | support) || N(0, I))`` (closed form, mean over codes), ``encoder_penalty`` times
       ``||stopgrad(z') - z||^2`` (mean), and ``orthogonality_penalty`` times the mean squared
       difference between the identity and the correlation matrix of the decoder's rows.

    During meta-training ``z`` and the weights are sampled (reparameterised); evaluation uses the
    means, or, with ``samples > 1``, that many sampled models per task scored as an ensemble.
    Evaluation reports the query statistics after every update: latent steps first, then
    fine-tuning steps (``step0`` .. ``step{test_inner_steps + finetune_steps}``).

    Deviations from the paper, which runs on fixed pretrained WRN-28-10 features: the body is
    meta-learned end to end; no dropout and no L2 term (use the optimizer's weight decay); the
    standard deviations are ``softplus`` of the networks' outputs; for regression the decoder
    generates the output layer from one code per task (the paper generates a whole MLP).

    Args:
        latent_dim: the size of the latent code.
        finetune_steps: fine-tuning steps on the decoded weights (training and evaluation).
        finetune_lr: the initial fine-tuning step ``eta``.
        kl_weight, encoder_penalty, orthogonality_penalty: the weights of the regularisers.
        samples: sampled models per task at evaluation (1: the means, as the paper).
        *args, **kwargs: as :class:`~mamlrun.algorithms.base.Algorithm` (``inner_lr``: the initial
            latent step ``alpha``; ``inner_steps``: latent steps).

    References:
        Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero, Hadsell. "Meta-Learning with Latent
        Embedding Optimization." ICLR 2019, section 2.3 (Algorithm 1, equations 3-7) and the
        defaults of its code (64 latents, 5 latent and 5 fine-tuning steps, alpha 1, eta 0.001).
    """

    rl_form = False
    strategy = "batched"  # the body's features come from the batched kernels

    def __init__(
        self,
        *args,
        latent_dim: int = 64,
        finetune_steps: int = 5,
        finetune_lr: float = 0.001,
        kl_weight: float = 0.001,
        encoder_penalty: float = 1e-9,
        orthogonality_penalty: float = 0.001,
        samples: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if int(latent_dim) < 1 or int(finetune_steps) < 0 or int(samples) < 1:
            raise MamlrunError("algorithm.latent_dim and algorithm.samples must be >= 1, finetune_steps >= 0")
        self.latent_dim, self.finetune_steps = int(latent_dim), int(finetune_steps)
        self.initial_finetune_lr = float(finetune_lr)
        self.kl_weight, self.encoder_penalty = float(kl_weight), float(encoder_penalty)
        self.orthogonality_penalty, self.samples = float(orthogonality_penalty), int(samples)
        self.predictive = self.samples > 1

    def setup(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        head = names[-1].rpartition(".")[0]
        self.body = linear_head(model, head)
        module = model.get_submodule(head) if head else model
        if self.body is None or not isinstance(module, nn.Linear):
            raise MamlrunError(f"algorithm=leo needs a network ending in a linear layer, not {type(model).__name__}")
        features, outputs = module.in_features, module.out_features
        self.classes = outputs > 1  # one code per class (classification), else one per task
        self.features, self.ways = features, outputs
        width = features if self.classes else features + 1  # regression: the output's weights and its bias
        nz = self.latent_dim
        p = next(model.parameters())
        self.encoder = nn.Linear(features + (0 if self.classes else outputs), nz, bias=False)
        self.relation = nn.Sequential(
            nn.Linear(2 * nz, 2 * nz, bias=False),
            nn.ReLU(),
            nn.Linear(2 * nz, 2 * nz, bias=False),
            nn.ReLU(),
            nn.Linear(2 * nz, 2 * nz, bias=False),
        )
        self.decoder = nn.Linear(nz, 2 * width, bias=False)
        like = {"device": p.device, "dtype": p.dtype}
        self.latent_lr = nn.Parameter(torch.full((nz,), self.inner_lr, **like))
        self.finetune_lr = nn.Parameter(torch.full((width,), self.initial_finetune_lr, **like))
        for part in (self.encoder, self.relation, self.decoder):
            part.to(**like)

    # -- the generator --------------------------------------------------------------------------
    def encode(self, h: torch.Tensor, y: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and standard deviation of every class's (task's) code: ``[tasks, codes, latent_dim]``.

        ``y``: class indices ``[tasks, n]``, or regression targets ``[tasks, n, outputs]``.
        """
        inputs = h if self.classes else torch.cat([h, y], dim=-1)
        e = self.encoder(inputs)  # [tasks, n, nz]
        n = e.shape[1]
        pairs = torch.cat([e.unsqueeze(2).expand(-1, -1, n, -1), e.unsqueeze(1).expand(-1, n, -1, -1)], dim=-1)
        r = self.relation(pairs).mean(2)  # [tasks, n, 2 nz]: every example against all the others
        if self.classes:
            onehot = F.one_hot(y, ways).to(r.dtype)  # [tasks, n, ways]
            r = onehot.transpose(1, 2) @ r / onehot.sum(1).unsqueeze(-1)
        else:
            r = r.mean(1, keepdim=True)
        mean, raw = r.chunk(2, dim=-1)
        return mean, F.softplus(raw) + 1e-6

    def decode(self, z: torch.Tensor, sample: bool) -> torch.Tensor:
        """Weights from codes: ``[tasks, codes, width]`` (sampled, or their means)."""
        mean, raw = self.decoder(z).chunk(2, dim=-1)
        return mean + (F.softplus(raw) + 1e-6) * torch.randn_like(mean) if sample else mean

    def logits(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Outputs of the generated layer on features ``h`` ``[tasks, n, features]``."""
        if self.classes:
            return h @ w.transpose(1, 2)
        return h @ w[..., : self.features].transpose(1, 2) + w[..., self.features :]

    # -- adaptation -----------------------------------------------------------------------------
    def adapt_task(self, learner: MetaLearner, batch: TaskBatch, steps: int, sample: bool, first_order: bool):
        """Query features, the codes (mean, std, start, adapted) and the weights after every update."""
        meta = expand(learner.meta_params(), batch.num_tasks)
        hs, hq = self.body(meta, batch.x_support), self.body(meta, batch.x_query)
        objective, ys = learner.objective, batch.y_support
        mean, std = self.encode(hs, ys, self.ways)
        z = mean + std * torch.randn_like(mean) if sample else mean

        def support_loss(w: torch.Tensor) -> torch.Tensor:
            return objective.task_losses(self.logits(w, hs), ys)

        latent = inner_loop(
            {"z": z},
            batched_gradients(lambda p, step: support_loss(self.decode(p["z"], sample))),
            steps,
            lambda k, n: self.latent_lr,
            None,
            first_order,
        )
        weights = [self.decode(p["z"], sample) for p in latent]
        tuned = inner_loop(
            {"w": weights[-1]},
            batched_gradients(lambda p, step: support_loss(p["w"])),
            self.finetune_steps,
            lambda k, n: self.finetune_lr,
            None,
            first_order,
        )
        return hq, (mean, std, z, latent[-1]["z"]), weights + [p["w"] for p in tuned[1:]]

    def meta_loss(self, learner: MetaLearner, batch: TaskBatch) -> tuple[torch.Tensor, ...]:
        """The query loss of the adapted weights plus the regularisers (see the class)."""
        hq, (mean, std, z, adapted), weights = self.adapt_task(
            learner, batch, self.train_inner_steps, True, self.use_first_order()
        )
        stats = learner.objective.task_stats(self.logits(weights[-1], hq), batch.y_query)
        kl = (0.5 * (std**2 + mean**2 - 1) - torch.log(std)).flatten(1).mean(1)
        drift = (adapted.detach() - z).pow(2).flatten(1).mean(1)
        rows = F.normalize(self.decoder.weight.t(), dim=1)  # the decoder's rows, one per latent dimension
        correlation = rows @ rows.t()
        eye = torch.eye(correlation.shape[0], dtype=correlation.dtype, device=correlation.device)
        orthogonality = (correlation - eye).pow(2).mean()
        extra = self.kl_weight * kl + self.encoder_penalty * drift + self.orthogonality_penalty * orthogonality
        return (stats[0] + extra, *stats[1:])

    def predictions(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[torch.Tensor]:
        """Outputs after every update (latent, then fine-tuning): each ``[tasks, samples, n, out]``."""
        runs = []
        for _ in range(self.samples):
            hq, _, weights = self.adapt_task(learner, batch, steps, self.samples > 1, first_order=True)
            runs.append([self.logits(w, hq) for w in weights])
        return [torch.stack(outputs, dim=1) for outputs in zip(*runs)]

    def evaluate(self, learner: MetaLearner, batch: TaskBatch, steps: int) -> list[tuple[torch.Tensor, ...]]:
        if self.scores_predictive(learner.objective):
            return super().evaluate(learner, batch, steps)
        hq, _, weights = self.adapt_task(learner, batch, steps, False, first_order=True)
        return [learner.objective.task_stats(self.logits(w, hq), batch.y_query) for w in weights]
