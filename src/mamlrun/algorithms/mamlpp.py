"""MAML++: the five fixes of "How to train your MAML", each switchable for the paper's ablation."""

from __future__ import annotations

import torch
from torch import nn

from mamlrun.algorithms.base import Algorithm
from mamlrun.algorithms.inner import Params
from mamlrun.algorithms.metasgd import key
from mamlrun.models.layers import BatchNorm


class MAMLPlusPlus(Algorithm):
    """MAML with multi-step loss, derivative-order annealing, per-step batch norm and learned step sizes.

    - **MSL** (``multi_step_loss``): the meta-loss is the weighted sum of the query losses after
      every inner step. The weights start uniform (``1/K``); every epoch the non-final weights
      fall by ``1/(K * msl_epochs)`` down to ``0.03/K`` and the final one rises to match, so they
      always sum to 1. After ``msl_epochs`` epochs only the final step's loss counts.
    - **DA** (``first_order_epochs``): first-order meta-gradients for that many epochs, then second order.
    - **BNWB/BNRS** (``per_step_batch_norm``): every inner step ``k`` (and the query pass after
      ``K`` steps) has its own batch-norm weights and biases, meta-learned and not adapted in the
      inner loop. mamlrun's batch norm always normalises with the current batch's statistics
      (the transductive setting of MAML and of the MAML++ code at test time), so every step has
      its own statistics by construction; there are no running averages to keep per step.
    - **LSLR** (``learned_step_sizes``): a learned step size per parameter tensor (layer) and per
      step, initialised at ``inner_lr``.
    - **CA**: cosine annealing of the meta learning rate is the trainer's schedule
      (``schedule=cosine``), which the MAML++ experiment files select.

    An epoch is ``iterations_per_epoch`` meta-iterations (500 in the MAML++ code). With all
    switches off this is MAML.

    References:
        Antoniou, Edwards, Storkey. "How to train your MAML." ICLR 2019, section 4 and Table 1/2.
    """

    rl_form = False

    def __init__(
        self,
        *args,
        multi_step_loss: bool = True,
        msl_epochs: int = 10,
        first_order_epochs: int = 0,
        per_step_batch_norm: bool = True,
        learned_step_sizes: bool = True,
        iterations_per_epoch: int = 500,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.multi_step_loss, self.msl_epochs = bool(multi_step_loss), int(msl_epochs)
        self.first_order_epochs = int(first_order_epochs)
        self.per_step_batch_norm, self.learned_step_sizes = bool(per_step_batch_norm), bool(learned_step_sizes)
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.bn_names: list[str] = []

    @property
    def epoch(self) -> int:
        return self.iteration // self.iterations_per_epoch

    def setup(self, model: nn.Module) -> None:
        steps = max(self.inner_steps, 1)
        if self.per_step_batch_norm:
            bn = {
                f"{m}.{p}": t
                for m, module in model.named_modules()
                if isinstance(module, BatchNorm)
                for p, t in module.named_parameters()
            }
            self.bn_names = list(bn)
            # Sets for the forward passes after 0..K updates; the network's own ones go unused.
            self.bn_params = nn.ParameterDict(
                {key(n): nn.Parameter(t.detach().unsqueeze(0).repeat(steps + 1, *[1] * t.dim())) for n, t in bn.items()}
            )
        if self.learned_step_sizes:  # for the parameters that adapt
            self.step_sizes = nn.ParameterDict(
                {
                    key(n): nn.Parameter(torch.full((steps,), self.inner_lr, dtype=p.dtype, device=p.device))
                    for n, p in model.named_parameters()
                    if n not in self.bn_names
                }
            )

    def adapts(self, names: list[str]) -> list[str] | None:
        if not self.bn_names:
            return None
        return [n for n in names if n not in self.bn_names]

    def step_size(self, step: int, name: str) -> torch.Tensor | float:
        if not self.learned_step_sizes:
            return self.inner_lr
        rates = self.step_sizes[key(name)]
        return rates[min(step, rates.shape[0] - 1)]

    def step_params(self, params: Params, step: int) -> Params:
        if not self.bn_names:
            return params
        out = dict(params)
        for n in self.bn_names:
            sets = self.bn_params[key(n)]
            out[n] = sets[min(step, sets.shape[0] - 1)].expand(params[n].shape)
        return out

    def step_weights(self) -> torch.Tensor | None:
        if not self.multi_step_loss or self.epoch >= self.msl_epochs or self.inner_steps < 2:
            return None
        return msl_weights(self.inner_steps, self.epoch, self.msl_epochs)

    def use_first_order(self) -> bool:
        return self.first_order or self.epoch < self.first_order_epochs


def msl_weights(steps: int, epoch: int, msl_epochs: int) -> torch.Tensor:
    """The multi-step loss weights of the query losses after steps ``1..steps`` at ``epoch``.

    References:
        Antoniou et al. 2019, section 4 ("Multi-Step Loss Optimization"); the annealing of the
        MAML++ code (non-final weights decay to ``0.03 / steps``).
    """
    decay = epoch / (steps * msl_epochs)
    floor = 0.03 / steps
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    weights[:-1] = torch.clamp(weights[:-1] - decay, min=floor)
    weights[-1] = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights
