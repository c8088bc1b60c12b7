"""An exponential moving average of the weights, used for evaluation and for the final model (``ema:`` in a config).

After optimiser step ``s`` (1-based) the average is ``ema ← decay · ema + (1 − decay) · w`` for every parameter
(timm's ``ModelEmaV3``, OpenCLIP-style training scripts); until ``start_step`` it is a copy of the weights, so the
average forgets the random start. Buffers are copied, not averaged. The average has the parameters' own sharding
(FSDP's DTensors stay sharded), lives on their device, and is saved in every checkpoint, so a resumed run continues
it exactly. Evaluations during training and the exported ``final/`` model use the averaged weights
(``swapped_in``); the optimiser never sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from clipforge.config import ConfigError


@dataclass(frozen=True)
class EmaConfig:
    """The weight average (``clipforge.train.ema``).

    Attributes:
        decay: The average's decay per update, in (0, 1): 0.999 averages over about the last 1,000 updates.
        every: Update every this many optimiser steps (a cheaper average for big models).
        start_step: Until this step the average is a copy of the weights.
    """

    decay: float = 0.999
    every: int = 1
    start_step: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"ema.decay must lie in (0, 1), got {self.decay}")
        if self.every <= 0 or self.start_step < 0:
            raise ConfigError(f"ema.every must be positive and ema.start_step >= 0, got {self}")


class WeightEma:
    """The moving average of ``model``'s parameters.

    Args:
        model: The model being trained (after any sharding: the average takes each parameter's layout).
        config: Decay, update interval, start.
    """

    def __init__(self, model: nn.Module, config: EmaConfig):
        self.config = config
        self.average = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Folds the weights after optimiser step ``step`` (1-based) into the average."""
        if step % self.config.every:
            return
        copy = step <= self.config.start_step
        for name, p in model.named_parameters():
            if copy:
                self.average[name].copy_(p.detach())
            else:
                self.average[name].lerp_(p.detach(), 1.0 - self.config.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by parameter name (what a checkpoint holds; loaded in place)."""
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores an average saved by ``state_dict``.

        Raises:
            ValueError: the saved average names other parameters.
        """
        if state.keys() != self.average.keys():
            missing, unexpected = sorted(self.average.keys() - state.keys()), sorted(state.keys() - self.average.keys())
            raise ValueError(f"the checkpoint's ema holds other parameters: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                if value is not self.average[name]:
                    self.average[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Puts the averaged weights into ``model`` for good (the end of a run: the final model is the average)."""
        for name, p in model.named_parameters():
            p.copy_(self.average[name])

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights for the duration of the block (then its own again)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            own = {name: p.detach().clone() for name, p in params.items()}
            for name, p in params.items():
                p.copy_(self.average[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])
